"""``distgnn train``: train a GAT recommender on a partition directory (local backend)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from distgnn.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a multi-head GAT recommender on partitioned interactions",
        description="Train a GAT link-prediction recommender. The run directory (--out) receives the "
                    "resolved config.yaml, metrics.jsonl and a checkpoint per epoch.")
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
    p.add_argument("--max-failures", type=int, default=2, metavar="F",
                   help="ray: worker failures to recover from (restart from the last checkpoint)")
    p.add_argument("--epochs", type=int, help="overrides train.epochs")
    p.add_argument("--max-steps", type=int, help="overrides train.max_steps (total steps)")
    p.add_argument("--out", help="run directory (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh even if --out already holds a run (its contents are replaced)")
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
    if args.backend == "ray":
        return _run_ray(args, cfg, out)
    if args.num_workers is not None or args.address or args.gpus_per_worker:
        raise UserError("--num-workers, --address and --gpus-per-worker need --backend ray")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; choose a directory")
    from distgnn.commands import set_threads
    set_threads(cfg.train.threads)
    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite contradict each other; pass one of them")
    from distgnn.trainer import Trainer

    trainer = Trainer(cfg, out, backend=args.backend)  # reads and checks the partitions first
    if args.overwrite and out.is_dir():
        import shutil
        for name in ("checkpoints", "metrics.jsonl", "config.yaml"):
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    summary = trainer.train(resume=args.resume)
    print(json.dumps(summary))
    return 0


def _run_ray(args: argparse.Namespace, cfg, out: Path) -> int:
    """Train on Ray, then evaluate the final checkpoint on the driver like the local backend."""
    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite contradict each other; pass one of them")
    if args.overwrite and out.is_dir():
        import shutil
        shutil.rmtree(out)
    from launch import job

    fault = cfg.train.fault.model_dump() if cfg.train.fault.worker is not None else None
    result = job.run(cfg, out, args.num_workers, args.gpus_per_worker, args.address,
                     max_failures=args.max_failures, fault=fault, resume=args.resume)
    print(json.dumps({"run_dir": str(out), **result}))
    return 0
