"""``verify``: check a partition directory against the format spec (docs/format.md).

Checks, in order of cost: the manifest; every file's presence, row count and sha256; every
file's schema; each partition's nodes (owned range, halo = non-owned edge sources) and edges
(destination owned, sorted); that the two directions of every interaction are present exactly
once each; the id maps; held-out targets never in the message graph. With ``train`` it also
re-reads the original input and checks the interaction set is exactly what was written.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from distgnn import format as fmt
from distgnn.errors import UserError


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


def verify(root: str | Path, train: str | None = None, user_col: str | None = None,
           item_col: str | None = None) -> list[str]:
    """Return a list of problems (empty when the directory is valid)."""
    root = Path(root)
    manifest = fmt.load_manifest(root)
    problems: list[str] = []

    # 1. Files: presence, rows, checksums, schemas.
    listed = manifest.get("files", {})
    for relpath in expected_files(manifest):
        if relpath not in listed:
            problems.append(f"{relpath}: required by the format but not listed in the manifest")
    for relpath, info in listed.items():
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

    # 2. Partitions: ownership, halo, edge order.
    book = fmt.PartitionBook.from_manifest(manifest)
    if book.gid_start[0] != 0 or np.any(book.gid_start[1:] != book.gid_end[:-1]):
        problems.append("manifest: partition gid ranges are not contiguous from 0")
    fwd_keys, rev_keys = [], []
    n = np.int64(book.num_nodes)
    for p, info in enumerate(manifest["parts"]):
        start, end = int(book.gid_start[p]), int(book.gid_end[p])
        src, dst = fmt.read_part_edges(root, p)
        gid, owned = fmt.read_part_nodes(root, p)
        nodes_ntype = fmt.read_column(root, fmt.nodes_path(p), "ntype")
        if len(src) and (dst.min() < start or dst.max() >= end):
            problems.append(f"part {p}: an edge's dst_gid is not owned by this partition")
        key = dst * n + src
        if np.any(key[1:] <= key[:-1]):
            problems.append(f"part {p}: edges are not sorted by (dst_gid, src_gid) or contain duplicates")
        halo = np.unique(src[(src < start) | (src >= end)])
        want_gid = np.concatenate([np.arange(start, end, dtype=np.int64), halo])
        if len(gid) != len(want_gid) or np.any(gid != want_gid) or owned.sum() != end - start \
                or not owned[: end - start].all():
            problems.append(f"part {p}: nodes.parquet is not [owned range, then the 1-hop halo]")
        elif np.any(nodes_ntype != book.ntype_of(gid)):
            problems.append(f"part {p}: nodes.parquet ntype disagrees with the manifest's gid ranges")
        src_is_user = book.ntype_of(src) == fmt.USER
        dst_is_user = book.ntype_of(dst) == fmt.USER
        if np.any(src_is_user == dst_is_user):
            problems.append(f"part {p}: an edge joins two nodes of the same type")
        if int(dst_is_user.sum()) != info["num_train_interactions"] or len(src) != info["num_edges"]:
            problems.append(f"part {p}: edge counts disagree with the manifest")
        fwd_keys.append(src[src_is_user] * n + dst[src_is_user])      # user -> item, as (user, item)
        rev_keys.append(dst[dst_is_user] * n + src[dst_is_user])      # item -> user, as (user, item)

    # 3. Every interaction exactly once in each direction.
    fwd = np.sort(np.concatenate(fwd_keys))
    rev = np.sort(np.concatenate(rev_keys))
    if len(fwd) != manifest["num_interactions"] or len(rev) != manifest["num_interactions"]:
        problems.append(f"edges: {len(fwd)} user->item and {len(rev)} item->user edges, manifest has "
                        f"{manifest['num_interactions']} interactions")
    elif np.any(fwd != rev):
        problems.append("edges: the user->item and item->user edge sets differ")

    # 4. Id maps: a bijection onto each node type's gids.
    for ntype, want in (("user", book.user_gids()), ("item", book.item_gids())):
        t = fmt.read_table(root, fmt.id_map_path(ntype))
        gids = t.column("gid").to_numpy()
        if len(gids) != len(want) or np.any(gids != want):
            problems.append(f"id_map/{ntype}.parquet: gids are not exactly the {ntype} gids in order")
        if pc.count_distinct(t.column("orig_id")).as_py() != t.num_rows:
            problems.append(f"id_map/{ntype}.parquet: orig_id values are not unique")

    # 5. Held-out targets: well-typed and never in the message graph.
    for split in manifest.get("heldout", {}):
        user_gid, item_gid = fmt.read_targets(root, split)
        if np.any(book.ntype_of(user_gid) != fmt.USER) or np.any(book.ntype_of(item_gid) != fmt.ITEM):
            problems.append(f"targets/{split}.parquet: a user_gid or item_gid has the wrong node type")
        key = user_gid * n + item_gid
        pos = np.minimum(np.searchsorted(fwd, key), max(len(fwd) - 1, 0))
        if len(fwd) and np.any(fwd[pos] == key):
            problems.append(f"targets/{split}.parquet: held-out interactions appear in the training graph")

    # 6. Optionally, against the original input.
    if train is not None and not problems:
        problems += _check_against_input(root, manifest, fwd, train, user_col, item_col)
    return problems


def _check_against_input(root: Path, manifest: dict, fwd_keys: np.ndarray, train: str,
                         user_col: str | None, item_col: str | None) -> list[str]:
    from partition import ingest

    params = manifest["params"]
    spec = ingest.InputSpec(train, user_col or params["user_col"], item_col or params["item_col"])
    _, users, items, _, _ = ingest.read_columns(spec)
    n = np.int64(manifest["parts"][-1]["gid_end"])
    gids = []
    for ntype, col in (("user", users), ("item", items)):
        t = fmt.read_table(root, fmt.id_map_path(ntype))
        orig = t.column("orig_id").combine_chunks()
        if orig.type != col.type:
            return [f"input {train}: {ntype} id type {col.type} differs from the id map's {orig.type}"]
        idx = ingest._index_in(col, orig)
        if np.any(idx < 0):
            return [f"input {train}: {int((idx < 0).sum())} {ntype} ids are missing from id_map/{ntype}.parquet"]
        gids.append(t.column("gid").to_numpy()[idx])
    key = np.unique(gids[0] * n + gids[1])
    if len(key) != len(fwd_keys) or np.any(key != fwd_keys):
        return [f"input {train}: its {len(key)} distinct interactions differ from the {len(fwd_keys)} "
                f"in the partitions"]
    return []


def verify_or_raise(root: str | Path) -> dict:
    """For trainers: load the manifest and refuse a directory that fails the cheap checks."""
    manifest = fmt.load_manifest(root)
    for relpath in expected_files(manifest):
        if not (Path(root) / relpath).is_file():
            raise UserError(f"{root}: {relpath} is missing; run 'distgnn partition verify {root}'")
    return manifest
