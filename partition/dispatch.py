"""Dispatch: turn a node -> partition assignment into gids and per-partition Parquet shards.

Relabeling orders nodes by (partition, node type, raw index), so each partition owns one
contiguous gid range with its users first, then its items: the partition book is O(num_parts).
Each interaction becomes two directed edges, each stored with the partition that owns its
destination, sorted by destination: sampling in-neighbours of owned nodes is then purely local.
File names and schemas come from ``distgnn.format`` (the spec is ``docs/format.md``).
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distgnn import format as fmt
from partition.ingest import HeldOut, Interactions


@dataclass
class Relabeled:
    """The gid space: ``gid_of_raw[raw_node]`` plus per-partition ranges."""

    gid_of_raw: np.ndarray      # int64 [U + I]; raw node = user index, or U + item index
    gid_start: np.ndarray       # int64 [P]
    item_gid_start: np.ndarray  # int64 [P]
    gid_end: np.ndarray         # int64 [P]
    users_per_part: np.ndarray
    items_per_part: np.ndarray

    @property
    def book(self) -> fmt.PartitionBook:
        return fmt.PartitionBook(self.gid_start, self.item_gid_start, self.gid_end)


def relabel(part_of_raw: np.ndarray, num_users: int, num_parts: int) -> Relabeled:
    """Contiguous gid ranges per partition: order nodes by (part, ntype, raw index)."""
    order = np.argsort(part_of_raw, kind="stable")  # raw order is already (ntype, index)
    gid_of_raw = np.empty(len(part_of_raw), dtype=np.int64)
    gid_of_raw[order] = np.arange(len(part_of_raw), dtype=np.int64)
    users = np.bincount(part_of_raw[:num_users], minlength=num_parts).astype(np.int64)
    items = np.bincount(part_of_raw[num_users:], minlength=num_parts).astype(np.int64)
    sizes = users + items
    gid_end = np.cumsum(sizes)
    gid_start = gid_end - sizes
    return Relabeled(gid_of_raw, gid_start, gid_start + users, gid_end, users, items)


def directed_edges(inter: Interactions, rl: Relabeled) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Both directions of every interaction as (src_gid, dst_gid[, ts]), sorted by (dst, src)."""
    user_gid = rl.gid_of_raw[inter.user_raw]
    item_gid = rl.gid_of_raw[np.int64(inter.num_users) + inter.item_raw]
    num_nodes = np.int64(len(rl.gid_of_raw))
    src = np.concatenate([user_gid, item_gid])
    dst = np.concatenate([item_gid, user_gid])
    del user_gid, item_gid
    key = dst * num_nodes + src
    del src, dst
    if inter.ts is None:
        key.sort()
        ts = None
    else:
        order = np.argsort(key)
        key = key[order]
        ts = np.concatenate([inter.ts, inter.ts])[order]
        del order
    return key % num_nodes, key // num_nodes, ts


def _write(root: Path, relpath: str, table: pa.Table, files: dict[str, dict]) -> None:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    files[relpath] = {"rows": table.num_rows, "bytes": path.stat().st_size}


def write_id_maps(root: Path, inter: Interactions, rl: Relabeled, files: dict[str, dict]) -> None:
    for ntype, orig, gids in (("user", inter.user_orig, rl.gid_of_raw[:inter.num_users]),
                              ("item", inter.item_orig, rl.gid_of_raw[inter.num_users:])):
        order = np.argsort(gids)
        schema = fmt.schema_for(fmt.ID_MAP_COLUMNS, orig_type=orig.type)
        table = pa.Table.from_arrays([orig.take(pa.array(order)), pa.array(gids[order])], schema=schema)
        _write(root, fmt.id_map_path(ntype), table, files)


def write_part(root: Path, part_id: int, rl: Relabeled, src: np.ndarray, dst: np.ndarray,
               ts: np.ndarray | None, files: dict[str, dict]) -> dict:
    """Write one partition's nodes and edges (src/dst already restricted to this part)."""
    start, item_start, end = (int(rl.gid_start[part_id]), int(rl.item_gid_start[part_id]),
                              int(rl.gid_end[part_id]))
    outside = (src < start) | (src >= end)
    halo = np.unique(src[outside])
    owned_gid = np.arange(start, end, dtype=np.int64)
    gid = np.concatenate([owned_gid, halo])
    ntype = np.concatenate([(owned_gid >= item_start).astype(np.int8), rl.book.ntype_of(halo)])
    owned = np.zeros(len(gid), dtype=bool)
    owned[: len(owned_gid)] = True
    nodes = pa.Table.from_arrays([pa.array(gid), pa.array(ntype), pa.array(owned)],
                                 schema=fmt.schema_for(fmt.NODES_COLUMNS))
    _write(root, fmt.nodes_path(part_id), nodes, files)
    arrays = [pa.array(src), pa.array(dst)] + ([pa.array(ts)] if ts is not None else [])
    edges = pa.Table.from_arrays(arrays, schema=fmt.schema_for(fmt.EDGES_COLUMNS, with_ts=ts is not None))
    _write(root, fmt.edges_path(part_id), edges, files)
    num_train = int((dst < item_start).sum())  # item -> user edges: interactions of owned users
    return {"part_id": part_id, "gid_start": start, "item_gid_start": item_start, "gid_end": end,
            "num_users": item_start - start, "num_items": end - item_start, "num_halo": int(len(halo)),
            "num_edges": int(len(src)), "num_train_interactions": num_train}


def write_targets(root: Path, split: str, held: HeldOut, num_users: int, rl: Relabeled,
                  files: dict[str, dict]) -> None:
    user_gid = rl.gid_of_raw[held.user_raw]
    item_gid = rl.gid_of_raw[np.int64(num_users) + held.item_raw]
    order = np.lexsort((item_gid, user_gid))
    arrays = [pa.array(user_gid[order]), pa.array(item_gid[order])]
    if held.ts is not None:
        arrays.append(pa.array(held.ts[order]))
    schema = fmt.schema_for(fmt.TARGETS_COLUMNS, with_ts=held.ts is not None)
    _write(root, fmt.targets_path(split), pa.Table.from_arrays(arrays, schema=schema), files)


def add_checksums(root: Path, files: dict[str, dict]) -> None:
    for relpath, info in files.items():
        info["sha256"] = fmt.sha256_file(root / relpath)


class AtomicDir:
    """Build a directory under a hidden temporary name; rename it into place on success.

    An interrupted or failed run leaves no directory that looks complete: readers require
    ``manifest.json``, which is written last, inside the temporary directory, before the rename.
    """

    def __init__(self, out: Path, overwrite: bool):
        self.out = out
        self.overwrite = overwrite
        self.tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"

    def __enter__(self) -> Path:
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = None
        if self.out.exists():
            old = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
            os.rename(self.out, old)
        os.rename(self.tmp, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
