"""One side of ``distgnn bench partition``, run in a fresh process by the parent.

Usage: python -m distgnn.bench.partition_child {ours|dgl} TRAIN OUT NUM_PARTS
Prints one JSON line: seconds, edge_cut_fraction, node_imbalance, edge_imbalance, num_interactions.
"""
from __future__ import annotations

import contextlib
import io
import json
import sys
import time

import numpy as np


def run_ours(train: str, out: str, num_parts: int, metis_path: str = "auto") -> dict:
    from partition.pipeline import CreateOptions, create

    start = time.perf_counter()
    manifest = create(CreateOptions(train=train, out=out, num_parts=num_parts, method="metis",
                                    overwrite=True, progress=False, metis_path=metis_path))
    seconds = time.perf_counter() - start
    q = manifest["quality"]
    return {"seconds": seconds, "num_interactions": manifest["num_interactions"],
            "edge_cut_fraction": q["edge_cut_fraction"], "node_imbalance": q["node_imbalance"],
            "edge_imbalance": q["edge_imbalance"], "path": manifest["assignment"]["path"],
            "stages": {s["name"]: round(s["seconds"], 2) for s in manifest["stages"]}}


def run_dgl(train: str, out: str, num_parts: int) -> dict:
    """The plain DGL way: pyarrow + numpy relabel + heterograph + partition_graph."""
    import pyarrow.dataset as ds
    import torch
    import dgl

    start = time.perf_counter()
    table = ds.dataset(train, format="parquet").to_table(columns=["user_id", "item_id"])
    users, user_idx = np.unique(table.column("user_id").to_numpy(), return_inverse=True)
    items, item_idx = np.unique(table.column("item_id").to_numpy(), return_inverse=True)
    del table
    key = np.unique(user_idx.astype(np.int64) * len(items) + item_idx)  # drop duplicates
    u, i = torch.from_numpy(key // len(items)), torch.from_numpy(key % len(items))
    g = dgl.heterograph({("user", "clicks", "item"): (u, i), ("item", "clicked-by", "user"): (i, u)},
                        num_nodes_dict={"user": len(users), "item": len(items)})
    with contextlib.redirect_stdout(io.StringIO()):
        orig_nids, _ = dgl.distributed.partition_graph(
            g, "bench", num_parts, out, part_method="metis", balance_edges=True, return_mapping=True)
    seconds = time.perf_counter() - start

    # Quality, computed outside the timed region with the same definitions as ours.
    gpb, *_ = dgl.distributed.load_partition_book(f"{out}/bench.json", 0)
    part = {}
    for ntype in ("user", "item"):
        n = g.num_nodes(ntype)
        new_part = gpb.nid2partid(torch.arange(n), ntype).numpy()
        part[ntype] = np.empty(n, dtype=np.int64)
        part[ntype][orig_nids[ntype].numpy()] = new_part
    un, it = u.numpy(), i.numpy()
    user_part, item_part = part["user"][un], part["item"][it]
    nodes = np.bincount(part["user"], minlength=num_parts) + np.bincount(part["item"], minlength=num_parts)
    edges = np.bincount(user_part, minlength=num_parts) + np.bincount(item_part, minlength=num_parts)
    return {"seconds": seconds, "num_interactions": int(len(key)),
            "edge_cut_fraction": float(np.mean(user_part != item_part)),
            "node_imbalance": float(nodes.max() / nodes.mean()),
            "edge_imbalance": float(edges.max() / edges.mean())}


def main() -> None:
    impl, train, out, num_parts = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    metis_path = sys.argv[5] if len(sys.argv) > 5 else "auto"
    import distgnn  # noqa: F401  (sets DGLBACKEND)
    if impl == "dgl":
        import dgl  # noqa: F401  (imported before the in-process timer; the process time counts it)
    else:
        import partition.pipeline  # noqa: F401  (ours needs no torch/DGL: numpy, pyarrow, numba)

    from distgnn.errors import UserError

    try:
        result = run_dgl(train, out, num_parts) if impl == "dgl" else run_ours(train, out, num_parts, metis_path)
    except UserError as exc:  # the parent shows the last stderr line: make it this one
        print(str(exc), file=sys.stderr)
        sys.exit(2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
