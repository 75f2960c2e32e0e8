"""``distgnn bench overhead``: what distribution costs: the Ray backend with 1 worker vs local.

Both sides train the same config on the same one-partition directory through their real entry
points, one after the other in this run:

- **local**: ``Trainer.train`` in this process (in-process graph and embedding stores);
- **ray**: ``launch.job.run`` with one Ray Train worker: the GraphShard and parameter-server
  actors, the zero-copy mapped partition, its own rows in shared memory (D11), DDP set up by Ray Train.

Throughput is training edges/s from each run's metrics (``distgnn.metrics.read_metrics``), over the steps after the first
``log_every`` interval (warm-up: Ray worker start, first DGL calls). The two sides alternate for
``--rounds`` rounds, in the order local-Ray, Ray-local, local-Ray, ... (a load that drifts during
the run then falls on both sides alike), and the medians are compared: on a shared machine one
run's speed varies by several percent, more than the cost being measured. Start-up time is reported
separately (wall time minus training time), since it does not grow with the data.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from distgnn.bench import emit
from distgnn.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "overhead", help="training edges/s of the Ray backend (1 worker) vs the local backend",
        description="Partition the input into one part, train the same config for --steps steps with "
                    "the local backend and with the Ray backend on one worker, and print both "
                    "throughputs and their ratio (target: Ray >= 0.95x local, issue #12).",
        epilog="example: distgnn bench overhead --config configs/bench_gat.yaml "
               "--train ../shared/data/gowalla/train.parquet --steps 60")
    p.add_argument("--config", required=True, metavar="CFG", help="training config")
    p.add_argument("--train", required=True, metavar="PATH", help="training interactions")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="A.B=V",
                   help="config override, as in 'distgnn train'")
    p.add_argument("--steps", type=int, default=60, metavar="S", help="training steps per side (default 60)")
    p.add_argument("--log-every", type=int, default=10, metavar="K",
                   help="steps per throughput interval; the first interval is warm-up (default 10)")
    p.add_argument("--rounds", type=int, default=3, metavar="R",
                   help="alternate local and Ray runs this many times; medians are reported, since "
                        "run-to-run spread is several percent on a shared machine (default 3)")
    p.add_argument("--workdir", metavar="DIR", help="where the partition and runs go (default: temp dir)")
    p.add_argument("--json", action="store_true", help="print the results as a JSON object")
    p.set_defaults(handler=run)


def _steady_train_records(run_dir: Path) -> list[dict]:
    """The run's ``train`` records after the first (warm-up) one."""
    from distgnn.metrics import read_metrics

    return read_metrics(run_dir).of_type("train")[1:]


def steady_edges_per_s(run_dir: Path) -> tuple[float, int]:
    """(edges/s over the train records after the first, number of records used)."""
    train = _steady_train_records(run_dir)
    if not train:
        raise UserError(f"{run_dir}: too few steps to measure; raise --steps or lower --log-every")
    edges = sum(r["edges"] for r in train)
    seconds = sum(r["edges"] / r["edges_per_s"] for r in train)
    return edges / max(seconds, 1e-9), len(train)


def _stage_split(run_dir: Path) -> dict[str, float]:
    total: dict[str, float] = {}
    for r in _steady_train_records(run_dir):
        for k, v in r["stage_seconds"].items():
            total[k] = total.get(k, 0.0) + v
    return {k: round(v, 3) for k, v in total.items()}


def run(args: argparse.Namespace) -> int:
    from distgnn.config import load_config
    from distgnn.trainer import Trainer
    from launch import job
    from partition.pipeline import CreateOptions, create

    if args.rounds < 1:
        raise UserError("--rounds must be at least 1")
    if args.steps < 2 * args.log_every:
        raise UserError(f"--steps {args.steps} must be at least 2 x --log-every ({args.log_every}): the "
                        f"first interval is warm-up")
    overrides = [*args.overrides, f"train.max_steps={args.steps}", f"train.log_every={args.log_every}",
                 "train.eval_every=0", "train.progress=false", "train.epochs=1000"]
    report: dict[str, Any] = {"command": "distgnn " + shlex.join(sys.argv[1:]), "train": args.train,
                              "steps": args.steps, "rounds": args.rounds}
    with tempfile.TemporaryDirectory(prefix="distgnn-overhead-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        parts = work / "parts-1"  # always this run's --train: a reused --workdir may hold another input
        create(CreateOptions(train=args.train, out=str(parts), num_parts=1, method="random",
                             overwrite=True, progress=not args.json))
        runs: dict[str, list[dict]] = {"local": [], "ray": []}
        for rnd in range(args.rounds):
            # local-Ray, then Ray-local: a load that drifts through the run (other jobs starting
            # or ending on a shared machine) falls on both sides alike, not on the second one
            for side in ("local", "ray") if rnd % 2 == 0 else ("ray", "local"):
                cfg = load_config(args.config, overrides, partitions=str(parts))
                run_dir = work / f"run-{side}-{rnd}-{time.strftime('%H%M%S')}"
                print(f"[overhead] round {rnd + 1}/{args.rounds} {side}: {args.steps} steps ...",
                      file=sys.stderr, flush=True)
                start = time.perf_counter()
                if side == "local":
                    Trainer(cfg, run_dir).train()
                else:
                    job.run(cfg, run_dir, num_workers=1, gpus_per_worker=0, address=None, max_failures=0)
                wall = time.perf_counter() - start
                eps, intervals = steady_edges_per_s(run_dir)
                runs[side].append({"edges_per_s": round(eps, 1), "intervals": intervals,
                                   "wall_s": round(wall, 1), "stage_seconds": _stage_split(run_dir)})
        for side, results in runs.items():
            ordered = sorted(results, key=lambda r: r["edges_per_s"])
            report[side] = {**ordered[len(ordered) // 2],
                            "rounds_edges_per_s": [r["edges_per_s"] for r in results]}
        cfg = load_config(args.config, overrides, partitions=str(parts))
    report.update(batch_size=cfg.train.batch_size, fanouts=cfg.train.fanouts,
                  num_negatives=cfg.train.num_negatives, dim=cfg.model.dim, threads=cfg.train.threads,
                  async_pushes=cfg.embedding.async_pushes,
                  ray_over_local=round(report["ray"]["edges_per_s"] / report["local"]["edges_per_s"], 3))
    return emit(report, args.json, format_table)


def format_table(r: dict[str, Any]) -> str:
    lines = [f"input: {r['train']} (1 partition), batch {r['batch_size']}, fanouts {r['fanouts']}, "
             f"{r['num_negatives']} negatives, dim {r['dim']}, {r['threads']} threads, "
             f"async pushes {r['async_pushes']}; {r['steps']} steps per run, first interval excluded; "
             f"median of {r['rounds']} alternating rounds (stages: the median run's)\n",
             "| | local backend | Ray backend, 1 worker | Ray / local |", "|---|---|---|---|",
             f"| training edges/s | {r['local']['edges_per_s']:,.0f} | {r['ray']['edges_per_s']:,.0f} | "
             f"{r['ray_over_local']:.3f} |",
             "| edges/s of each round | " + ", ".join(f"{x:,.0f}" for x in r["local"]["rounds_edges_per_s"])
             + " | " + ", ".join(f"{x:,.0f}" for x in r["ray"]["rounds_edges_per_s"]) + " | |",
             f"| wall time incl. start-up (s) | {r['local']['wall_s']:.1f} | {r['ray']['wall_s']:.1f} | |"]
    stages = sorted(set(r["local"]["stage_seconds"]) | set(r["ray"]["stage_seconds"]))
    for s in stages:
        lo, ra = r["local"]["stage_seconds"].get(s), r["ray"]["stage_seconds"].get(s)
        lines.append(f"| stage {s} (s) | {'' if lo is None else lo} | {'' if ra is None else ra} | |")
    return "\n".join(lines)
