"""The on-disk partition format, version 1, in code.

``docs/format.md`` is the prose specification; this module is the only code that knows file names,
column names and dtypes, and ``tests/test_format_spec.py`` checks the two agree. Writers
(``partition.dispatch``) and readers (graph store, evaluation, export) both go through here, so a
format change is one edit plus a version bump.

``read_id_map_slice`` reads one partition's run of rows of an id map (the row groups that hold it,
nothing else): checkpoint shards use it to learn their rows' orig ids without loading an id map
that may hold billions of ids.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distgnn.errors import UserError

FORMAT_NAME = "distgnn-partitions"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"

NTYPES = ("user", "item")
USER, ITEM = 0, 1

# Parquet schemas. `None` for the orig_id type: it is int64 or string, as in the input.
ID_MAP_COLUMNS = {"orig_id": None, "gid": pa.int64()}
NODES_COLUMNS = {"gid": pa.int64(), "ntype": pa.int8(), "owned": pa.bool_()}
EDGES_COLUMNS = {"src_gid": pa.int64(), "dst_gid": pa.int64()}
TARGETS_COLUMNS = {"user_gid": pa.int64(), "item_gid": pa.int64()}
TS_COLUMN = ("ts", pa.int64())  # optional in edges and targets
HELDOUT_SPLITS = ("valid", "test")


def part_dir(part_id: int) -> str:
    return f"part-{part_id:05d}"


def id_map_path(ntype: str) -> str:
    return f"id_map/{ntype}.parquet"


def nodes_path(part_id: int) -> str:
    return f"{part_dir(part_id)}/nodes.parquet"


def edges_path(part_id: int) -> str:
    return f"{part_dir(part_id)}/edges.parquet"


def targets_path(split: str) -> str:
    return f"targets/{split}.parquet"


def schema_for(columns: dict[str, pa.DataType | None], with_ts: bool = False,
               orig_type: pa.DataType | None = None) -> pa.Schema:
    fields = [pa.field(name, typ if typ is not None else orig_type, nullable=False)
              for name, typ in columns.items()]
    if with_ts:
        fields.append(pa.field(TS_COLUMN[0], TS_COLUMN[1], nullable=False))
    return pa.schema(fields)


def sha256_file(path: Path, bufsize: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class PartitionBook:
    """gid -> (partition, node type) in O(num_parts) memory, from the manifest's gid ranges.

    Because every partition owns one contiguous gid range (users first, then items), looking up
    the owner of a batch of gids is one ``searchsorted`` over ``num_parts`` boundaries.
    """

    gid_start: np.ndarray       # [P] int64
    item_gid_start: np.ndarray  # [P] int64
    gid_end: np.ndarray         # [P] int64

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> "PartitionBook":
        parts = manifest["parts"]
        return cls(
            gid_start=np.array([p["gid_start"] for p in parts], dtype=np.int64),
            item_gid_start=np.array([p["item_gid_start"] for p in parts], dtype=np.int64),
            gid_end=np.array([p["gid_end"] for p in parts], dtype=np.int64),
        )

    @property
    def num_parts(self) -> int:
        return len(self.gid_start)

    @property
    def num_nodes(self) -> int:
        return int(self.gid_end[-1]) if len(self.gid_end) else 0

    def part_of(self, gid: np.ndarray) -> np.ndarray:
        """Owning partition of each gid."""
        return (np.searchsorted(self.gid_end, gid, side="right")).astype(np.int64)

    def ntype_of(self, gid: np.ndarray) -> np.ndarray:
        """0 (user) or 1 (item) for each gid."""
        part = self.part_of(gid)
        return (gid >= self.item_gid_start[part]).astype(np.int8)

    def id_map_rows(self, part_id: int, ntype: str) -> tuple[int, int]:
        """(first row, number of rows) of partition ``part_id``'s nodes of ``ntype`` in the
        gid-sorted ``id_map/<ntype>.parquet``: its users are rows ``sum(num_users of parts < p)``
        onwards (likewise its items), because gids ascend with the partition."""
        if not 0 <= part_id < self.num_parts:
            raise ValueError(f"partition {part_id} is not in a book of {self.num_parts} parts")
        if ntype == NTYPES[USER]:
            counts = self.item_gid_start - self.gid_start
        elif ntype == NTYPES[ITEM]:
            counts = self.gid_end - self.item_gid_start
        else:
            raise ValueError(f"unknown node type {ntype!r}")
        return int(counts[:part_id].sum()), int(counts[part_id])

    def ntype_gid_start(self, part_id: int, ntype: str) -> int:
        """The first gid of partition ``part_id``'s nodes of ``ntype``."""
        return int((self.gid_start if ntype == NTYPES[USER] else self.item_gid_start)[part_id])

    def user_gids(self) -> np.ndarray:
        return np.concatenate([np.arange(s, e, dtype=np.int64)
                               for s, e in zip(self.gid_start, self.item_gid_start)])

    def item_gids(self) -> np.ndarray:
        return np.concatenate([np.arange(s, e, dtype=np.int64)
                               for s, e in zip(self.item_gid_start, self.gid_end)])


def load_manifest(root: str | Path) -> dict[str, Any]:
    """Read and sanity-check ``manifest.json``; a clear UserError if this is not a partition dir."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"partition directory {root} does not exist; create it with "
                        f"'distgnn partition create ... --out {root}'")
    path = root / MANIFEST
    if not path.is_file():
        raise UserError(f"{root} has no {MANIFEST}: it is not a complete partition directory "
                        f"(an interrupted 'distgnn partition create'?); re-run create")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); re-run 'distgnn partition create'")
    if manifest.get("format") != FORMAT_NAME:
        raise UserError(f"{path}: format is {manifest.get('format')!r}, expected {FORMAT_NAME!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: format_version {manifest.get('format_version')} is not supported "
                        f"by this distgnn (reads version {FORMAT_VERSION}); re-partition the input")
    return manifest


# files whose sha256 this process has checked: (path, size, mtime_ns)
_VERIFIED: set[tuple[str, int, int]] = set()


def check_sha256_once(path: Path, listed: Callable[[], dict | None], manifest: Path, fix: str) -> None:
    """The one first-open integrity check (partition files here, checkpoint files in
    ``distgnn.checkpoint``): the first time this process opens ``path`` (as it is now: size and
    mtime), compare its sha256 with ``listed()``, the file's manifest record (``None``: nothing to
    check against). A mismatch is one ``UserError`` naming the file, the manifest and ``fix``.
    Hashing runs at ~1 GB/s, small next to reading and decoding the file, and each process opens
    each file once."""
    try:
        st = path.stat()
    except OSError:
        return  # the reader reports the missing file
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _VERIFIED:
        return
    rec = listed()
    if rec is None or rec.get("sha256") is None:
        return
    if (rec.get("bytes") is not None and st.st_size != rec["bytes"]) or sha256_file(path) != rec["sha256"]:
        raise UserError(f"{path} does not match the sha256 in {manifest} (changed, truncated or "
                        f"corrupted); {fix}")
    _VERIFIED.add(key)


def verify_once(root: str | Path, relpath: str) -> None:
    """A partition file's first-open check against ``manifest.json`` (``check_sha256_once``). Sizes
    alone (``check_files``) miss a flipped byte. A directory without a manifest (being created) or
    a file the manifest does not list is not checked here; ``partition verify`` checks everything."""
    def listed() -> dict | None:
        try:
            return json.loads((Path(root) / MANIFEST).read_text()).get("files", {}).get(relpath)
        except (OSError, ValueError):
            return None

    check_sha256_once(Path(root) / relpath, listed, Path(root) / MANIFEST,
                      "restore it or re-run 'distgnn partition create'")


def read_table(root: str | Path, relpath: str, columns: list[str] | None = None) -> pa.Table:
    """Read one Parquet file of a partition directory (its sha256 checked on first open), turning
    IO/format errors into UserError."""
    path = Path(root) / relpath
    verify_once(root, relpath)
    try:
        return pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"cannot read {path}: {exc}; run 'distgnn partition verify {root}'")


def row_groups_for(metadata: pq.FileMetaData, start_row: int, num_rows: int) -> tuple[list[int], int]:
    """The row groups of a Parquet file holding rows ``[start_row, start_row + num_rows)``, and the
    file row at which the first of them begins (so the caller slices from ``start_row - first``)."""
    groups, first, row = [], start_row, 0
    end = start_row + num_rows
    for g in range(metadata.num_row_groups):
        n = metadata.row_group(g).num_rows
        if row < end and row + n > start_row and num_rows > 0:
            if not groups:
                first = row
            groups.append(g)
        row += n
    return groups, first


def read_id_map_slice(root: str | Path, ntype: str, start_row: int, num_rows: int) -> pa.Table:
    """Rows ``[start_row, start_row + num_rows)`` of ``id_map/<ntype>.parquet`` (columns
    ``orig_id``, ``gid``), reading only the row groups that hold them: memory is bounded by the
    slice (plus at most two partly used row groups), not by the id map. A partition's own nodes
    are such a slice (``PartitionBook.id_map_rows``)."""
    path = Path(root) / id_map_path(ntype)
    verify_once(root, id_map_path(ntype))
    try:
        pf = pq.ParquetFile(path)
        groups, first = row_groups_for(pf.metadata, start_row, num_rows)
        if not groups:
            table = pf.schema_arrow.empty_table()
        else:
            table = pf.read_row_groups(groups, columns=list(ID_MAP_COLUMNS))
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"cannot read {path}: {exc}; run 'distgnn partition verify {root}'")
    if start_row < 0 or first + table.num_rows < start_row + num_rows:
        raise UserError(f"{path} has no rows {start_row}..{start_row + num_rows - 1} (it has "
                        f"{pf.metadata.num_rows}); the partition directory is damaged, run "
                        f"'distgnn partition verify {root}'")
    return table.slice(start_row - first, num_rows)


def read_column(root: str | Path, relpath: str, column: str) -> np.ndarray:
    return read_table(root, relpath, [column]).column(column).to_numpy()


def read_part_edges(root: str | Path, part_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(src_gid, dst_gid) of one partition, sorted by dst_gid."""
    t = read_table(root, edges_path(part_id), ["src_gid", "dst_gid"])
    return t.column("src_gid").to_numpy(), t.column("dst_gid").to_numpy()


def read_part_nodes(root: str | Path, part_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(gid, owned) of one partition in lid order."""
    t = read_table(root, nodes_path(part_id), ["gid", "owned"])
    return t.column("gid").to_numpy(), t.column("owned").to_numpy(zero_copy_only=False)


def graph_files(manifest: dict[str, Any]) -> list[str]:
    """The files training reads: id maps, and every partition's nodes and edges.

    Held-out targets are not among them: training opens only the validation split, through
    ``read_targets``, and never ``targets/test.parquet``."""
    files = [id_map_path(t) for t in NTYPES]
    for p in range(len(manifest["parts"])):
        files += [nodes_path(p), edges_path(p)]
    return files


def check_files(root: str | Path, manifest: dict[str, Any], relpaths: list[str]) -> None:
    """Cheap verification of the files a reader is about to use: each exists with the size the
    manifest records. (The full sha256 check is 'distgnn partition verify'.) Checking only what
    is read keeps a reader independent of files it never opens, e.g. training of the test split."""
    root = Path(root)
    listed = manifest.get("files", {})
    for rel in relpaths:
        path = root / rel
        if not path.is_file():
            raise UserError(f"{root}: {rel} is listed in the manifest but missing; the partition "
                            f"directory is damaged, re-run 'distgnn partition create'")
        size = listed.get(rel, {}).get("bytes")
        if size is not None and path.stat().st_size != size:
            raise UserError(f"{root}: {rel} has {path.stat().st_size} bytes, the manifest says "
                            f"{size}; run 'distgnn partition verify {root}' or re-partition")


def read_targets(root: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(user_gid, item_gid) of a held-out split; a clear error if its file is gone."""
    path = Path(root) / targets_path(split)
    if not path.is_file():
        raise UserError(f"{root}: {targets_path(split)} is missing, but reading the '{split}' split "
                        f"needs it; put the file back (or re-run 'distgnn partition create')")
    t = read_table(root, targets_path(split), ["user_gid", "item_gid"])
    return t.column("user_gid").to_numpy(), t.column("item_gid").to_numpy()

