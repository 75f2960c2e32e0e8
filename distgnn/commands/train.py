"""``distgnn train``: train a GAT recommender on a partition directory (local backend)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from distgnn.errors import UserError

DEFAULT_MAX_FAILURES = 2
# Config fields only the Ray backend reads: the local backend warns when they are set.
RAY_ONLY_FIELDS = ("embedding.shared_memory", "embedding.async_pushes", "embedding.ordered_pushes",
                   "train.local_negatives", "train.fault")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a multi-head GAT recommender on partitioned interactions",
        description="Train a GAT link-prediction recommender. The run directory (--out) receives "
                    "run.json (the run's marker), the resolved config.yaml, metrics/rank-*.jsonl and "
                    "a checkpoint per epoch.")
    p.add_argument("--config", required=True, help="YAML config (see configs/demo.yaml)")
    p.add_argument("--partitions", help="partition directory; overrides data.partitions")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="A.B=V",
                   help="override a config field by dotted path, e.g. --set train.batch_size=1024")
    p.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="local: one process (default); ray: Ray Train workers over the partitions, "
                        "GraphShard and parameter-server actors")
    p.add_argument("--num-workers", type=int, metavar="N",
                   help="ray: training workers, 1 to the number of partitions (default: that number); "
                        "worker r trains partitions r, r+N, ...")
    p.add_argument("--gpus-per-worker", type=float, default=0, metavar="G",
                   help="ray: GPUs per worker (default 0: CPU workers with gloo; >0 uses nccl)")
    p.add_argument("--address", metavar="ADDR",
                   help="ray: 'auto' or 'ray://HOST:PORT' for an existing cluster (default: start a "
                        "local Ray instance)")
    p.add_argument("--max-failures", type=int, default=None, metavar="F",
                   help="ray: worker failures to recover from (restart from the last checkpoint; "
                        f"default {DEFAULT_MAX_FAILURES})")
    p.add_argument("--node-memory", metavar="SIZE",
                   help="ray: memory per node (e.g. 64G) to check the job's memory estimate against, "
                        "instead of what Ray reports (memory + object store of the smallest node); "
                        "the estimate is printed before training")
    p.add_argument("--epochs", type=int, help="overrides train.epochs")
    p.add_argument("--max-steps", type=int, help="overrides train.max_steps (total steps)")
    p.add_argument("--out", help="run directory (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh even if --out already holds a run: replaced only if it is a "
                        "distgnn run (run.json) holding nothing else, after the config and partitions "
                        "are checked")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from distgnn.config import load_config

    overrides = list(args.overrides)
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    cfg = load_config(args.config, overrides, args.partitions)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite contradict each other; pass one of them")
    from distgnn import atomic, rundir

    # Is --out ours to (re)write? Decided before anything else; deletion waits for validation.
    replace = rundir.check_out(out, args.overwrite, args.resume)
    if args.backend == "ray":
        return _run_ray(args, cfg, out, replace)
    if args.num_workers is not None or args.address or args.gpus_per_worker or args.node_memory:
        raise UserError("--num-workers, --address, --gpus-per-worker and --node-memory need --backend ray")
    from distgnn.commands import set_threads
    set_threads(cfg.train.threads)
    from distgnn.trainer import Trainer, check_eval_split

    trainer = Trainer(cfg, out, backend=args.backend)  # reads and checks the partitions first
    check_eval_split(cfg, trainer.p.graph.manifest, trainer.p.graph.root)
    trainer.warnings += ray_only_warnings(cfg, args.max_failures)
    for message in trainer.warnings:
        print(f"distgnn train: warning: {message}", file=sys.stderr)
    if replace:
        atomic.discard(out)
    rundir.sweep(out)
    summary = trainer.train(resume=args.resume)
    print(json.dumps(summary))
    return 0


def ray_only_warnings(cfg, max_failures: int | None) -> list[str]:
    """One message per Ray-only setting given to the local backend (which ignores it)."""
    out = []
    for dotted in RAY_ONLY_FIELDS:
        section, name = dotted.split(".")
        value = getattr(getattr(cfg, section), name)
        if value != type(getattr(cfg, section)).model_fields[name].get_default(call_default_factory=True):
            shown = value.model_dump(exclude_defaults=True) if hasattr(value, "model_dump") else value
            out.append(f"{dotted}={shown!r} only applies to --backend ray; the local backend ignores it")
    if max_failures is not None:
        out.append(f"--max-failures {max_failures} only applies to --backend ray; the local backend "
                   f"does not restart (use --resume after a failure)")
    return out


def _run_ray(args: argparse.Namespace, cfg, out: Path, replace: bool) -> int:
    """Train on Ray, then evaluate the final checkpoint on the driver like the local backend."""
    from launch import job

    f = cfg.train.fault
    fault = f.model_dump() if f.worker is not None or f.ps_idle_epoch is not None else None
    max_failures = DEFAULT_MAX_FAILURES if args.max_failures is None else args.max_failures
    node_memory = parse_size("--node-memory", args.node_memory) if args.node_memory else None
    result = job.run(cfg, out, args.num_workers, args.gpus_per_worker, args.address,
                     max_failures=max_failures, fault=fault, resume=args.resume, overwrite=replace,
                     node_memory=node_memory)
    if result.get("processes"):  # for people (stderr); the JSON on stdout carries the record too
        print(job.format_processes(result["processes"]), file=sys.stderr)
    print(json.dumps({"run_dir": str(out), **result}))
    return 0


def parse_size(option: str, text: str) -> int:
    """'64G', '512M', '1.5GiB', '1000000' -> bytes (a UserError naming ``option`` otherwise)."""
    t = text.strip().upper().replace("IB", "").rstrip("B")
    mult = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    try:
        value = float(t[:-1]) * mult[t[-1]] if t and t[-1] in mult else float(t)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise UserError(f"{option} {text!r} is not a positive size; write e.g. 64G or 512M")
    return int(value)
