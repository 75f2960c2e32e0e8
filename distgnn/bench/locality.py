"""``distgnn bench locality``: cross-partition traffic per epoch, METIS against random.

For each method the input is partitioned, one GraphShard and one parameter-server shard per
partition are started on a local Ray instance, and then, for every partition, the trainer's real
data path runs over that partition's training interactions for one epoch: minibatch + negatives ->
L-hop sampling through ``RayGraphStore`` (local part from the mapped arrays, other parts by remote
request) -> pull of the input embeddings through ``RayEmbeddingStore``. No model runs: the counts
are what a training epoch sends, and they do not depend on the hardware.
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

METHODS = ("metis", "random")
REPORTED = [
    ("sampling: remote requests", "remote_requests"),
    ("sampling: remote seeds", "remote_seeds"),
    ("sampling: remote edges returned", "remote_edges"),
    ("sampling: local edges", "local_edges"),
    ("PS pull: remote rows", "pull_rows_remote"),
    ("PS pull: local rows", "pull_rows_local"),
    ("PS pull: remote MiB", "pull_mib_remote"),
]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "locality", help="remote sampling requests and PS bytes per epoch, METIS vs random",
        description="Partition the input with METIS and with random assignment, run one epoch of the "
                    "trainer's sampling and embedding-pull path per partition on a local Ray instance, "
                    "and print the cross-partition traffic side by side. Counts are per epoch (all "
                    "partitions' trainers together) and hardware-independent.",
        epilog="example: distgnn bench locality --config configs/gowalla_gat.yaml "
               "--train ../shared/data/gowalla/train.parquet --num-parts 4")
    p.add_argument("--config", required=True, metavar="CFG", help="training config (fanouts, batch, dim)")
    p.add_argument("--train", required=True, metavar="PATH", help="training interactions to partition")
    p.add_argument("--num-parts", type=int, required=True, metavar="P")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="A.B=V",
                   help="override a config field, e.g. --set train.local_negatives=1.0")
    p.add_argument("--max-steps", type=int, default=None, metavar="S",
                   help="minibatches per partition (default: a whole epoch); counts are scaled to an epoch")
    p.add_argument("--workdir", metavar="DIR", help="where partitions go (default: a temp dir, removed)")
    p.add_argument("--json", action="store_true", help="print the results as a JSON object")
    p.set_defaults(handler=run)


def _epoch_traffic(root: Path, cfg, num_parts: int, max_steps: int | None, progress: bool) -> dict[str, Any]:
    import numpy as np
    import ray
    import torch
    from tqdm import tqdm

    from distgnn import format as fmt
    from distgnn.ray_runtime.graph_shard import RayGraphStore, create_graph_shards
    from distgnn.ray_runtime.ps import RayEmbeddingStore, create_ps_shards
    from distgnn.sampler import EdgeMinibatchSampler, step_seed
    from distgnn.trainer import negative_sampler

    book = fmt.PartitionBook.from_manifest(fmt.load_manifest(root))
    graph_shards = create_graph_shards(root, num_parts)
    ps_shards = create_ps_shards(book, cfg.model.dim, cfg.embedding.optimizer, seed=cfg.train.seed)
    totals: dict[str, float] = {}
    steps_done = steps_epoch = 0
    try:
        for part in range(num_parts):
            graph = RayGraphStore(root, graph_shards, local_parts=[part])
            store = RayEmbeddingStore(ps_shards, book, cfg.model.dim, cfg.embedding.optimizer, local_parts=[part])
            negatives = negative_sampler(cfg, graph)
            sampler = EdgeMinibatchSampler(graph, cfg.train.fanouts, cfg.train.batch_size, negatives,
                                           cfg.train.seed, cfg.train.shared_negatives)
            steps = sampler.steps_per_epoch()
            todo = min(steps, max_steps) if max_steps else steps
            graph.sampler.reset_counters()
            store.reset_counters()
            for step, idx in tqdm(sampler.batches(0), total=todo, desc=f"{root.name} part {part}",
                                  disable=None if progress else True, file=sys.stderr, leave=False):
                if step >= todo:
                    break
                gen = torch.Generator().manual_seed(step_seed(cfg.train.seed, 0, step))
                mb = sampler.sample(idx, gen)
                store.pull(mb.input_gids)
            scale = steps / max(todo, 1)  # extrapolate a truncated run to a whole epoch
            for key, value in {**graph.sampler.counters(), **store.counters()}.items():
                totals[key] = totals.get(key, 0.0) + value * scale
            steps_done += todo
            steps_epoch += steps
    finally:
        for actor in graph_shards + ps_shards:
            ray.kill(actor)
    totals["pull_mib_remote"] = totals.get("pull_bytes_remote", 0.0) / 2**20
    totals["steps_run"] = steps_done
    totals["steps_per_epoch"] = steps_epoch
    return {k: float(np.round(v, 3)) for k, v in totals.items()}


def run(args: argparse.Namespace) -> int:
    from distgnn.config import load_config
    from distgnn.ray_runtime.cluster import connect, shutdown
    from partition.pipeline import CreateOptions, create

    if args.num_parts < 2:
        raise UserError("--num-parts must be >= 2: with one partition nothing is remote")
    if args.max_steps is not None and args.max_steps < 1:
        raise UserError("--max-steps must be >= 1")
    cfg = load_config(args.config, args.overrides, partitions="unused")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="distgnn-locality-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        quality = {}
        for method in METHODS:
            out = work / f"{method}-{args.num_parts}"
            m = create(CreateOptions(train=args.train, out=str(out), num_parts=args.num_parts,
                                     method=method, overwrite=True, progress=False))
            quality[method] = m["quality"]["edge_cut_fraction"]
        connect(None, num_cpus=2, log_to_driver=False)
        try:
            for method in METHODS:
                start = time.perf_counter()
                results[method] = _epoch_traffic(work / f"{method}-{args.num_parts}", cfg,
                                                 args.num_parts, args.max_steps, not args.json)
                results[method]["edge_cut_fraction"] = quality[method]
                results[method]["seconds"] = round(time.perf_counter() - start, 1)
        finally:
            shutdown()
    ratios = {key: results["metis"].get(key, 0.0) / results["random"][key]
              for _, key in REPORTED if results["random"].get(key)}
    report = {"command": "distgnn " + shlex.join(sys.argv[1:]), "train": args.train,
              "num_parts": args.num_parts, "fanouts": cfg.train.fanouts, "batch_size": cfg.train.batch_size,
              "num_negatives": cfg.train.num_negatives, "local_negatives": cfg.train.local_negatives,
              "dim": cfg.model.dim, **results,
              "metis_over_random": ratios}
    return emit(report, args.json, format_table)


def format_table(report: dict[str, Any]) -> str:
    lines = [f"input: {report['train']}, {report['num_parts']} parts, fanouts {report['fanouts']}, "
             f"batch {report['batch_size']}, {report['num_negatives']} negatives "
             f"({report['local_negatives']:.0%} partition-local), dim {report['dim']}; "
             f"per epoch ({report['metis']['steps_per_epoch']:.0f} minibatches)\n",
             "| per epoch | METIS | random | METIS / random |", "|---|---|---|---|",
             f"| edge-cut fraction | {report['metis']['edge_cut_fraction']:.4f} | "
             f"{report['random']['edge_cut_fraction']:.4f} | |"]
    for label, key in REPORTED:
        m, r = report["metis"].get(key, 0.0), report["random"].get(key, 0.0)
        ratio = report["metis_over_random"].get(key)
        lines.append(f"| {label} | {m:,.1f} | {r:,.1f} | {'' if ratio is None else f'{ratio:.3f}'} |")
    return "\n".join(lines)
