"""``distgnn bench ps``: pull+push rows/s through the parameter-server client vs an in-process table.

Both sides run the same loop on the same id stream: pull a minibatch of rows, push a gradient of
the same shape (dedup + sum + row-wise optimizer step). The reference is ``LocalEmbeddingStore``
in this process; ours is ``RayEmbeddingStore`` over one ``PSShard`` actor per partition of a
contiguous gid range, on a local Ray instance: every shard by call, then (as a trainer sees it in
a job) shard 0 co-located and mapped through shared memory, the others by call.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from typing import Any

from distgnn.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ps", help="parameter-server pull+push rows/s vs an in-process embedding table",
        description="Pull and push minibatches of embedding rows through the Ray parameter-server "
                    "client and through an in-process LocalEmbeddingStore, on the same id stream, "
                    "and print rows/s for each and the ratio.",
        epilog="example: distgnn bench ps --rows 1000000 --dim 64 --shards 2 --batch 4096")
    p.add_argument("--rows", type=int, default=1_000_000, help="table rows (default 1M)")
    p.add_argument("--dim", type=int, default=64, help="row width (default 64)")
    p.add_argument("--shards", type=int, default=2, help="parameter-server shards (default 2)")
    p.add_argument("--batch", type=int, default=4096, help="ids per pull/push (default 4096)")
    p.add_argument("--optimizer", choices=["adam", "adagrad"], default="adam")
    p.add_argument("--seconds", type=float, default=10.0, help="time per side (default 10)")
    p.add_argument("--async-pushes", type=int, default=0, metavar="K",
                   help="also measure asynchronous pushes with at most K in flight")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=run)


def _loop(store, ids, dim: int, seconds: float) -> dict[str, float]:
    import torch

    rows = steps = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        gids = ids[steps % len(ids)]
        x = store.pull(gids)
        store.push(gids, torch.ones_like(x) * 1e-3)
        rows += len(gids)
        steps += 1
    if hasattr(store, "flush"):
        store.flush()
    elapsed = time.perf_counter() - start
    return {"rows_per_s": 2 * rows / elapsed, "steps": steps, "seconds": elapsed}


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import ray
    import torch

    from distgnn import format as fmt
    from distgnn.embedding_store import LocalEmbeddingStore
    from distgnn.ray_runtime.cluster import connect, shutdown
    from distgnn.ray_runtime.ps import RayEmbeddingStore, create_ps_shards

    if min(args.rows, args.dim, args.shards, args.batch) < 1 or args.shards > args.rows:
        raise UserError("--rows, --dim, --shards and --batch must be >= 1, and --shards <= --rows")
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    # A skewed id stream (popular rows recur), like the input nodes of GNN minibatches.
    ids = [torch.from_numpy(np.minimum(rng.zipf(1.2, args.batch) - 1, args.rows - 1).astype(np.int64)
                            + rng.integers(0, args.rows, 1)[0]) % args.rows for _ in range(64)]
    bounds = np.linspace(0, args.rows, args.shards + 1).astype(np.int64)
    book = fmt.PartitionBook(bounds[:-1], bounds[1:], bounds[1:])  # rows only; types do not matter here

    local = LocalEmbeddingStore(args.rows, args.dim, args.optimizer)
    results: dict[str, Any] = {"in_process": _loop(local, ids, args.dim, args.seconds)}
    del local
    connect(None, num_cpus=2, log_to_driver=False)
    try:
        shards = create_ps_shards(book, args.dim, args.optimizer)
        store = RayEmbeddingStore(shards, book, args.dim, args.optimizer, local_parts=[0])
        results["ray_ps"] = _loop(store, ids, args.dim, args.seconds)
        results["ray_ps"]["counters"] = store.counters()
        if args.async_pushes:
            store = RayEmbeddingStore(shards, book, args.dim, args.optimizer, local_parts=[0],
                                      max_pending_pushes=args.async_pushes)
            results["ray_ps_async"] = _loop(store, ids, args.dim, args.seconds)
        for s in shards:
            ray.kill(s)
        # The trainer's view in a job: its own partition's shard (0) co-located and mapped through
        # shared memory, the other shards by call.
        shm_root = "/dev/shm" if os.path.isdir("/dev/shm") else None
        with tempfile.TemporaryDirectory(prefix="distgnn-bench-ps-", dir=shm_root) as shm_dir:
            shards = create_ps_shards(book, args.dim, args.optimizer, shm_dir=shm_dir)
            store = RayEmbeddingStore(shards, book, args.dim, args.optimizer, local_parts=[0])
            if store.attach_local():
                results["ray_ps_shm"] = _loop(store, ids, args.dim, args.seconds)
                results["ray_ps_shm"]["counters"] = store.counters()
            for s in shards:
                ray.kill(s)
    finally:
        shutdown()
    base = results["in_process"]["rows_per_s"]
    report = {"command": "distgnn " + shlex.join(sys.argv[1:]), "rows": args.rows, "dim": args.dim,
              "shards": args.shards, "batch": args.batch, "optimizer": args.optimizer, **results,
              "ratios": {k: v["rows_per_s"] / base for k, v in results.items()}}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.rows:,} rows x {args.dim}, {args.optimizer}, batches of {args.batch} ids, "
          f"{args.shards} shards, {args.seconds:.0f} s per side\n")
    print("| store | rows/s (pull + push) | vs in-process |\n|---|---|---|")
    names = {"in_process": "LocalEmbeddingStore (in-process)", "ray_ps": "RayEmbeddingStore (sync pushes)",
             "ray_ps_async": f"RayEmbeddingStore ({args.async_pushes} async pushes in flight)",
             "ray_ps_shm": "RayEmbeddingStore, shard 0 co-located (shared memory), others by call"}
    for key, res in results.items():
        print(f"| {names[key]} | {res['rows_per_s']:,.0f} | {report['ratios'][key]:.2f}x |")
    return 0
