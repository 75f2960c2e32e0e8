"""``create``: ingest -> assign -> relabel -> dispatch -> manifest, with per-stage time and memory.

This is the Python API behind ``distgnn partition create``; tests and benchmarks call it directly.
"""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from distgnn import __version__
from distgnn import format as fmt
from distgnn.errors import UserError
from distgnn.stages import StageTimer
from partition import assign, dispatch, ingest


@dataclass
class CreateOptions:
    train: str
    out: str
    num_parts: int
    method: str = "metis"
    test: str | None = None
    valid: str | None = None
    user_col: str = "user_id"
    item_col: str = "item_id"
    ts_col: str | None = None
    seed: int = 0
    overwrite: bool = False
    progress: bool = True


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Fail before any work if the output directory cannot be (re)placed."""
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} exists and is a file; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"output directory {out} is not empty; pass --overwrite to replace it "
                        f"or choose another --out")


def _fingerprint(files: list[dict]) -> str:
    """Cheap identity of the input: paths and sizes (not a content hash: inputs can be TBs)."""
    h = hashlib.sha256()
    for f in files:
        h.update(f"{Path(f['path']).resolve()}\0{f['bytes']}\n".encode())
    return h.hexdigest()[:16]


def quality(inter: ingest.Interactions, part_of_raw: np.ndarray, parts: list[dict]) -> dict[str, float]:
    user_part = part_of_raw[inter.user_raw]
    item_part = part_of_raw[inter.num_users + inter.item_raw]
    num_nodes = inter.num_users + inter.num_items

    def imbalance(key: str) -> float:
        counts = np.array([p[key] for p in parts], dtype=np.float64)
        return float(counts.max() / counts.mean()) if counts.mean() > 0 else 1.0

    owned = np.array([p["num_users"] + p["num_items"] for p in parts], dtype=np.float64)
    return {
        "edge_cut_fraction": float(np.mean(user_part != item_part)),
        "halo_node_fraction": float(sum(p["num_halo"] for p in parts) / num_nodes),
        "node_imbalance": float(owned.max() / owned.mean()),
        "user_imbalance": imbalance("num_users"),
        "item_imbalance": imbalance("num_items"),
        "edge_imbalance": imbalance("num_edges"),
    }


def create(opts: CreateOptions) -> dict[str, Any]:
    """Partition the interactions in ``opts.train``; return the manifest that was written."""
    out = Path(opts.out)
    check_output_dir(out, opts.overwrite)
    if opts.num_parts < 1:
        raise UserError(f"--num-parts must be >= 1 (got {opts.num_parts})")
    assigner = assign.get_assigner(opts.method)
    timer = StageTimer()
    spec = ingest.InputSpec(opts.train, opts.user_col, opts.item_col, opts.ts_col)
    hide = None if opts.progress else True  # None: tqdm shows bars only on a terminal

    with timer.stage("ingest"):
        total_rows = ingest.count_rows(opts.train)[0]
        with tqdm(total=total_rows, desc="ingest", unit="rows", unit_scale=True, disable=hide,
                  file=sys.stderr) as bar:
            inter = ingest.ingest_train(spec, progress=bar)
        pa.default_memory_pool().release_unused()  # Arrow's pool keeps freed scan buffers otherwise
    num_nodes = inter.num_users + inter.num_items
    if opts.num_parts > num_nodes:
        raise UserError(f"--num-parts {opts.num_parts} is larger than the number of nodes ({num_nodes}); "
                        f"use at most {num_nodes} parts")

    heldout: dict[str, ingest.HeldOut] = {}
    with timer.stage("heldout"):
        for split, path in (("valid", opts.valid), ("test", opts.test)):
            if path:
                heldout[split] = ingest.ingest_heldout(
                    ingest.InputSpec(path, opts.user_col, opts.item_col, opts.ts_col), inter)

    if opts.progress:
        print(f"assign: {opts.method} into {opts.num_parts} parts ({num_nodes:,} nodes, "
              f"{inter.num_interactions:,} interactions)...", file=sys.stderr, flush=True)
    with timer.stage("assign"):
        part_of_raw = assigner(inter.user_raw, inter.item_raw, inter.num_users, inter.num_items,
                               opts.num_parts, opts.seed)

    with timer.stage("relabel"):
        rl = dispatch.relabel(part_of_raw, inter.num_users, opts.num_parts)
        src, dst, ts = dispatch.directed_edges(inter, rl)
        bounds = np.searchsorted(dst, np.concatenate([rl.gid_start, rl.gid_end[-1:]]))

    files: dict[str, dict] = {}
    with dispatch.AtomicDir(out, opts.overwrite) as tmp:
        with timer.stage("dispatch"):
            dispatch.write_id_maps(tmp, inter, rl, files)
            parts = []
            for p in tqdm(range(opts.num_parts), desc="dispatch", unit="part", disable=hide,
                          file=sys.stderr):
                lo, hi = bounds[p], bounds[p + 1]
                parts.append(dispatch.write_part(tmp, p, rl, src[lo:hi], dst[lo:hi],
                                                 ts[lo:hi] if ts is not None else None, files))
            for split, held in heldout.items():
                dispatch.write_targets(tmp, split, held, inter.num_users, rl, files)
        with timer.stage("checksum"):
            dispatch.add_checksums(tmp, files)

        inputs = {"train": {"files": inter.files, "rows": inter.rows_read,
                            "fingerprint": _fingerprint(inter.files)}}
        for split, held in heldout.items():
            inputs[split] = {"files": held.files, "rows": held.rows_read,
                             "fingerprint": _fingerprint(held.files)}
        manifest = {
            "format": fmt.FORMAT_NAME,
            "format_version": fmt.FORMAT_VERSION,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "created_by": f"distgnn {__version__}",
            "params": {"method": opts.method, "num_parts": opts.num_parts, "seed": opts.seed,
                       "user_col": opts.user_col, "item_col": opts.item_col, "ts_col": opts.ts_col,
                       "train": opts.train, "test": opts.test, "valid": opts.valid},
            "input": inputs,
            "num_nodes": {"user": inter.num_users, "item": inter.num_items},
            "num_interactions": inter.num_interactions,
            "dropped": {"duplicates": inter.duplicates_dropped},
            "heldout": {split: {"rows": int(len(h.user_raw)), "rows_read": h.rows_read,
                                "dropped_unknown": h.dropped_unknown, "dropped_in_train": h.dropped_in_train,
                                "dropped_duplicates": h.dropped_duplicates}
                        for split, h in heldout.items()},
            "id_dtype": {"user": "int64" if inter.user_orig.type == "int64" else "string",
                         "item": "int64" if inter.item_orig.type == "int64" else "string"},
            "has_ts": inter.ts is not None,
            "num_parts": opts.num_parts,
            "parts": parts,
            "quality": quality(inter, part_of_raw, parts),
            "stages": timer.as_dicts(),
            "files": files,
        }
        (tmp / fmt.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
