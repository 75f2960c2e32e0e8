"""``verify``: check a partition directory against the format spec (docs/format.md), streamed.

Checks, in order of cost: the manifest; every file's presence, row count, sha256 and schema;
each partition's edges (destination owned, strictly sorted by (dst, src), no same-type edge,
counts), nodes (owned range, then exactly the 1-hop halo, node types); that the two directions of
every interaction are present exactly once each; the id maps; held-out targets never in the
message graph. With ``train`` it re-reads the original input and checks that the set of distinct
interactions is exactly what was written.

Memory is bounded (a billion interactions verify on a 24 GB machine): edge files are read row
group by row group; the halo check uses one byte per node; "both directions" compares an
order-independent 128-bit multiset hash of the ``user -> item`` and ``item -> user`` edge sets
(each direction is duplicate-free by the strict sort, so equal counts and hashes mean equal sets
up to a 2^-64 collision chance); the input check is exact, per partition, through key files in
a scratch directory beside the partition directory.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from distgnn import format as fmt

BATCH_ROWS = 1 << 22
_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xC2B2AE3D27D4EB4F)


def expected_files(manifest: dict) -> list[str]:
    files = [fmt.id_map_path(t) for t in fmt.NTYPES]
    for p in range(manifest["num_parts"]):
        files += [fmt.nodes_path(p), fmt.edges_path(p)]
    files += [fmt.targets_path(s) for s in fmt.HELDOUT_SPLITS if s in manifest.get("heldout", {})]
    return files


def expected_schema(relpath: str, manifest: dict, orig_type: pa.DataType | None = None) -> pa.Schema:
    if relpath.startswith("id_map/"):
        return fmt.schema_for(fmt.ID_MAP_COLUMNS, orig_type=orig_type)
    if relpath.endswith("nodes.parquet"):
        return fmt.schema_for(fmt.NODES_COLUMNS)
    if relpath.endswith("edges.parquet"):
        return fmt.schema_for(fmt.EDGES_COLUMNS, with_ts=manifest["has_ts"])
    return fmt.schema_for(fmt.TARGETS_COLUMNS, with_ts=manifest["has_ts"])


def _orig_type(manifest: dict, ntype: str) -> pa.DataType:
    return pa.int64() if manifest["id_dtype"][ntype] == "int64" else pa.large_string()


def _pair_hash(user: np.ndarray, item: np.ndarray) -> tuple[int, int]:
    """Two independent 64-bit sums of a per-pair hash: an order-independent multiset hash."""
    with np.errstate(over="ignore"):
        x = user.astype(np.uint64) * _M1 + item.astype(np.uint64)
        x ^= x >> np.uint64(31)
        x *= _M2
        x ^= x >> np.uint64(29)
        y = (item.astype(np.uint64) * _M2) ^ (user.astype(np.uint64) + _M1)
        y *= _M1
        y ^= y >> np.uint64(32)
        return int(x.sum(dtype=np.uint64)), int(y.sum(dtype=np.uint64))


def _iter_edges(root: Path, part_id: int):
    pf = pq.ParquetFile(root / fmt.edges_path(part_id))
    for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=["src_gid", "dst_gid"]):
        yield batch.column(0).to_numpy(), batch.column(1).to_numpy()


def verify(root: str | Path, train: str | None = None, user_col: str | None = None,
           item_col: str | None = None, progress: bool = False) -> list[str]:
    """Return a list of problems (empty when the directory is valid)."""
    root = Path(root)
    manifest = fmt.load_manifest(root)
    problems: list[str] = []
    hide = None if progress else True

    # 1. Files: presence, rows, checksums, schemas.
    listed = manifest.get("files", {})
    for relpath in expected_files(manifest):
        if relpath not in listed:
            problems.append(f"{relpath}: required by the format but not listed in the manifest")
    for relpath, info in tqdm(listed.items(), desc="verify: checksums", unit="file", disable=hide,
                              file=sys.stderr):
        path = root / relpath
        if not path.is_file():
            problems.append(f"{relpath}: listed in the manifest but missing")
            continue
        if fmt.sha256_file(path) != info.get("sha256"):
            problems.append(f"{relpath}: sha256 mismatch (file changed or corrupt)")
            continue
        try:
            meta = pq.read_metadata(path)
            schema = pq.read_schema(path)
        except (OSError, pa.ArrowException) as exc:
            problems.append(f"{relpath}: unreadable Parquet ({exc})")
            continue
        if meta.num_rows != info.get("rows"):
            problems.append(f"{relpath}: {meta.num_rows} rows, manifest says {info.get('rows')}")
        ntype = relpath[len("id_map/"):-len(".parquet")] if relpath.startswith("id_map/") else None
        want = expected_schema(relpath, manifest, _orig_type(manifest, ntype) if ntype else None)
        if not schema.remove_metadata().equals(want, check_metadata=False):
            problems.append(f"{relpath}: schema {schema.to_string(show_schema_metadata=False)!r} "
                            f"does not match the spec {want.to_string()!r}")
    if problems:
        return problems  # content checks below assume readable, well-formed files

    # 2. Partitions: ownership, order, halo, node types; hashes of both directions.
    book = fmt.PartitionBook.from_manifest(manifest)
    if book.gid_start[0] != 0 or np.any(book.gid_start[1:] != book.gid_end[:-1]):
        problems.append("manifest: partition gid ranges are not contiguous from 0")
    n = np.int64(book.num_nodes)
    fwd = [0, 0, 0]   # count, hash1, hash2 of user -> item edges as (user, item)
    rev = [0, 0, 0]   # the same for item -> user edges
    mask64 = (1 << 64) - 1
    seen = np.zeros(book.num_nodes, dtype=np.uint8)
    total = sum(p["num_edges"] for p in manifest["parts"])
    with tqdm(total=total, desc="verify: edges", unit="edges", unit_scale=True, disable=hide,
              file=sys.stderr) as bar:
        for p, info in enumerate(manifest["parts"]):
            start, end = int(book.gid_start[p]), int(book.gid_end[p])
            last_key = -1
            rows = train_rows = 0
            seen[:] = 0
            bad_owner = bad_order = bad_type = False
            for src, dst in _iter_edges(root, p):
                if len(src) == 0:
                    continue
                if dst.min() < start or dst.max() >= end:
                    bad_owner = True
                key = dst * n + src
                if key[0] <= last_key or np.any(key[1:] <= key[:-1]):
                    bad_order = True
                last_key = int(key[-1])
                seen[src] = 1
                src_user = book.ntype_of(src) == fmt.USER
                dst_user = book.ntype_of(dst) == fmt.USER
                if np.any(src_user == dst_user):
                    bad_type = True
                for acc, sel, u, i in ((fwd, src_user, src, dst), (rev, dst_user, dst, src)):
                    h1, h2 = _pair_hash(u[sel], i[sel])
                    acc[0] += int(sel.sum())
                    acc[1] = (acc[1] + h1) & mask64
                    acc[2] = (acc[2] + h2) & mask64
                rows += len(src)
                train_rows += int(dst_user.sum())
                bar.update(len(src))
            if bad_owner:
                problems.append(f"part {p}: an edge's dst_gid is not owned by this partition")
            if bad_order:
                problems.append(f"part {p}: edges are not sorted by (dst_gid, src_gid) or contain duplicates")
            if bad_type:
                problems.append(f"part {p}: an edge joins two nodes of the same type")
            if train_rows != info["num_train_interactions"] or rows != info["num_edges"]:
                problems.append(f"part {p}: edge counts disagree with the manifest")
            seen[start:end] = 0
            halo = np.flatnonzero(seen).astype(np.int64)
            gid, owned = fmt.read_part_nodes(root, p)
            want_gid = np.concatenate([np.arange(start, end, dtype=np.int64), halo])
            if len(gid) != len(want_gid) or np.any(gid != want_gid) or owned.sum() != end - start \
                    or not owned[: end - start].all():
                problems.append(f"part {p}: nodes.parquet is not [owned range, then the 1-hop halo]")
            elif np.any(fmt.read_column(root, fmt.nodes_path(p), "ntype") != book.ntype_of(gid)):
                problems.append(f"part {p}: nodes.parquet ntype disagrees with the manifest's gid ranges")
    del seen

    # 3. Every interaction exactly once in each direction.
    if fwd[0] != manifest["num_interactions"] or rev[0] != manifest["num_interactions"]:
        problems.append(f"edges: {fwd[0]} user->item and {rev[0]} item->user edges, manifest has "
                        f"{manifest['num_interactions']} interactions")
    elif fwd != rev:
        problems.append("edges: the user->item and item->user edge sets differ")

    # 4. Id maps: a bijection onto each node type's gids.
    for ntype, starts, ends in (("user", book.gid_start, book.item_gid_start),
                                ("item", book.item_gid_start, book.gid_end)):
        t = fmt.read_table(root, fmt.id_map_path(ntype))
        gids = t.column("gid").to_numpy()
        want_len = int((ends - starts).sum())
        ok = len(gids) == want_len
        if ok:
            pos = 0
            for s, e in zip(starts, ends):
                if np.any(gids[pos:pos + e - s] != np.arange(s, e)):
                    ok = False
                    break
                pos += e - s
        if not ok:
            problems.append(f"id_map/{ntype}.parquet: gids are not exactly the {ntype} gids in order")
        if pc.count_distinct(t.column("orig_id")).as_py() != t.num_rows:
            problems.append(f"id_map/{ntype}.parquet: orig_id values are not unique")
        del t, gids

    # 5. Held-out targets: well-typed and never in the message graph.
    for split in manifest.get("heldout", {}):
        user_gid, item_gid = fmt.read_targets(root, split)
        if np.any(book.ntype_of(user_gid) != fmt.USER) or np.any(book.ntype_of(item_gid) != fmt.ITEM):
            problems.append(f"targets/{split}.parquet: a user_gid or item_gid has the wrong node type")
            continue
        key = np.sort(user_gid * n + item_gid)
        for p in range(book.num_parts):
            hit = False
            for src, dst in _iter_edges(root, p):
                is_rev = book.ntype_of(dst) == fmt.USER
                k = dst[is_rev] * n + src[is_rev]
                pos = np.minimum(np.searchsorted(key, k), max(len(key) - 1, 0))
                if len(key) and np.any(key[pos] == k):
                    hit = True
                    break
            if hit:
                problems.append(f"targets/{split}.parquet: held-out interactions appear in the training graph")
                break

    # 6. Optionally, against the original input.
    if train is not None and not problems:
        problems += _check_against_input(root, manifest, book, train, user_col, item_col, hide)
    return problems


def _gid_lookup(root: Path, ntype: str):
    """orig_id -> gid for one node type: a lookup table for small non-negative ints, else a hash index."""
    import pandas as pd

    t = fmt.read_table(root, fmt.id_map_path(ntype))
    orig = t.column("orig_id").combine_chunks()
    gid = t.column("gid").to_numpy()
    if pa.types.is_integer(orig.type):
        o = orig.to_numpy()
        if len(o) and o.max() < 8 * len(o) + (1 << 20):
            lut = np.full(int(o.max()) + 1, -1, dtype=np.int64)
            lut[o] = gid

            def look(arr: pa.Array) -> np.ndarray:
                v = arr.to_numpy()
                ok = v < len(lut)
                out = np.full(len(v), -1, dtype=np.int64)
                out[ok] = lut[v[ok]]
                return out
            return orig.type, look
        index = pd.Index(o)
    else:
        index = pd.Index(orig.to_numpy(zero_copy_only=False))

    def look_index(arr: pa.Array) -> np.ndarray:
        pos = index.get_indexer(arr.to_numpy(zero_copy_only=False))
        return np.where(pos >= 0, gid[pos], -1)
    return orig.type, look_index


def _check_against_input(root: Path, manifest: dict, book: fmt.PartitionBook, train: str,
                         user_col: str | None, item_col: str | None, hide) -> list[str]:
    """Exact: the input's distinct (user, item) pairs equal the stored item -> user edges,
    compared partition by partition through per-partition key files."""
    from partition import ingest

    params = manifest["params"]
    spec = ingest.InputSpec(train, user_col or params["user_col"], item_col or params["item_col"])
    (utype, ulook), (itype, ilook) = _gid_lookup(root, "user"), _gid_lookup(root, "item")
    n = np.int64(book.num_nodes)
    scratch = root.resolve().parent / f".{root.name}.verify-{os.getpid()}"
    scratch.mkdir()
    handles = [open(scratch / f"keys-{p:05d}", "wb", buffering=1 << 20) for p in range(book.num_parts)]
    try:
        for users, items, _ in tqdm(ingest.scan_columns(spec), desc="verify: input", unit="batch",
                                    disable=hide, file=sys.stderr):
            for ntype, col, typ in (("user", users, utype), ("item", items, itype)):
                if pa.types.is_integer(col.type) != pa.types.is_integer(typ):
                    return [f"input {train}: {ntype} id type {col.type} differs from the id map's {typ}"]
            ug, ig = ulook(users), ilook(items)
            for ntype, g in (("user", ug), ("item", ig)):
                if np.any(g < 0):
                    return [f"input {train}: {int((g < 0).sum())} {ntype} ids are missing from "
                            f"id_map/{ntype}.parquet"]
            part = book.part_of(ug)
            key = ug * n + ig
            order = np.argsort(part, kind="stable")
            bounds = np.searchsorted(part[order], np.arange(book.num_parts + 1))
            for p in np.flatnonzero(np.diff(bounds)):
                handles[p].write(key[order[bounds[p]:bounds[p + 1]]].data)
        for h in handles:
            h.close()
        # a validation split carved from the input (--valid-fraction) left the graph: count it back
        carved = manifest.get("heldout", {}).get("valid", {}).get("source") == "carved"
        vkeys = np.zeros(0, np.int64)
        if carved:
            vu, vi = fmt.read_targets(root, "valid")
            vkeys = np.sort(vu * n + vi)
        for p in range(book.num_parts):
            want = np.unique(np.fromfile(scratch / f"keys-{p:05d}", dtype=np.int64))
            (scratch / f"keys-{p:05d}").unlink()
            got = []
            for src, dst in _iter_edges(root, p):
                is_rev = dst < book.item_gid_start[p]
                got.append(dst[is_rev] * n + src[is_rev])
            got = np.concatenate(got) if got else np.zeros(0, np.int64)
            if len(vkeys):
                lo, hi = np.searchsorted(vkeys, [book.gid_start[p] * n, book.item_gid_start[p] * n])
                got = np.sort(np.concatenate([got, vkeys[lo:hi]]))
            if len(got) != len(want) or np.any(got != want):
                return [f"input {train}: partition {p} holds {len(got)} interactions of its users"
                    f"{' (with their carved validation split)' if carved else ''}, the input has "
                    f"{len(want)} distinct ones for them, or they differ"]
    finally:
        for h in handles:
            h.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return []
