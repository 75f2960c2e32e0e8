"""Ingest: read interaction logs, validate, map original ids to dense indices, drop duplicates.

Output of this stage is the *raw* id space: users ``0..U-1`` and items ``0..I-1``, numbered in
sorted order of their original ids. The partition-aware ``gid`` is assigned later (dispatch),
once we know which partition owns each node.

Everything is columnar: pyarrow datasets scanned in record batches, hash-based id lookup in
pyarrow compute, int32/int64 numpy arrays afterwards. No per-row Python and no DataFrames.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from distgnn.errors import UserError

SCAN_BATCH_ROWS = 1 << 20
_IGNORED_PREFIXES = ("_", ".")  # Spark's _SUCCESS, .crc files, hidden files


@dataclass
class InputSpec:
    """Where interactions come from and which columns hold what."""

    path: str
    user_col: str = "user_id"
    item_col: str = "item_id"
    ts_col: str | None = None


@dataclass
class InputFiles:
    dataset: ds.Dataset
    files: list[dict]  # [{"path", "bytes"}]
    fmt: str


@dataclass
class Interactions:
    """Deduplicated training interactions in the raw (sorted-orig-id) index space."""

    user_raw: np.ndarray            # int64 [E]
    item_raw: np.ndarray            # int64 [E]
    ts: np.ndarray | None           # int64 [E] or None
    user_orig: pa.Array             # orig ids, sorted; position = raw index
    item_orig: pa.Array
    rows_read: int
    duplicates_dropped: int
    files: list[dict] = field(default_factory=list)

    @property
    def num_users(self) -> int:
        return len(self.user_orig)

    @property
    def num_items(self) -> int:
        return len(self.item_orig)

    @property
    def num_interactions(self) -> int:
        return len(self.user_raw)


@dataclass
class HeldOut:
    """Held-out interactions mapped into the same raw index space."""

    user_raw: np.ndarray
    item_raw: np.ndarray
    ts: np.ndarray | None
    rows_read: int
    dropped_unknown: int
    dropped_in_train: int
    dropped_duplicates: int
    files: list[dict] = field(default_factory=list)


def open_input(path: str) -> InputFiles:
    """A pyarrow dataset over a Parquet file, a directory of Parquet part files, or CSV."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"input path {path} does not exist; pass an existing Parquet/CSV file or directory")
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file()
                       and not any(part.startswith(_IGNORED_PREFIXES) for part in f.relative_to(p).parts))
        parquet = [f for f in files if f.suffix in (".parquet", ".pq") or f.name.endswith(".snappy.parquet")]
        csv = [f for f in files if f.name.endswith((".csv", ".csv.gz"))]
        if parquet:
            chosen, fmt = parquet, "parquet"
        elif csv:
            chosen, fmt = csv, "csv"
        else:
            raise UserError(f"input directory {path} contains no .parquet or .csv files")
    else:
        chosen = [p]
        fmt = "csv" if p.name.endswith((".csv", ".csv.gz")) else "parquet"
    sizes = [f.stat().st_size for f in chosen]
    if sum(sizes) == 0:
        raise UserError(f"input {path} is empty (0 bytes); pass a file with interactions")
    try:
        dataset = ds.dataset([str(f) for f in chosen], format=fmt)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"cannot read {path} as {fmt}: {_first_line(exc)}; "
                        f"check the file is complete (not truncated) and really {fmt}")
    return InputFiles(dataset, [{"path": str(f), "bytes": s} for f, s in zip(chosen, sizes)], fmt)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _check_columns(inp: InputFiles, spec: InputSpec) -> tuple[list[str], dict[str, pa.DataType]]:
    schema = inp.dataset.schema
    wanted = [("--user-col", spec.user_col), ("--item-col", spec.item_col)]
    if spec.ts_col:
        wanted.append(("--ts-col", spec.ts_col))
    types: dict[str, pa.DataType] = {}
    for flag, name in wanted:
        if name not in schema.names:
            raise UserError(f"column {name!r} not found in {spec.path} (columns: {', '.join(schema.names)}); "
                            f"name the right column with {flag}")
        typ = schema.field(name).type
        if flag == "--ts-col":
            if not (pa.types.is_integer(typ) or pa.types.is_timestamp(typ)):
                raise UserError(f"column {name!r} in {spec.path} has type {typ}; "
                                f"timestamps must be integers or timestamps")
        elif not (pa.types.is_integer(typ) or pa.types.is_string(typ) or pa.types.is_large_string(typ)):
            raise UserError(f"column {name!r} in {spec.path} has type {typ}; ids must be integers or "
                            f"strings (cast the column, or pick another with {flag})")
        types[name] = typ
    return [n for _, n in wanted], types


def _scan(inp: InputFiles, spec: InputSpec, columns: list[str]) -> Iterable[pa.RecordBatch]:
    try:
        yield from inp.dataset.to_batches(columns=columns, batch_size=SCAN_BATCH_ROWS)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise UserError(f"cannot read {spec.path}: {_first_line(exc)}; the file is truncated, corrupt "
                        f"or has inconsistent column types across part files")


def _normalise_ids(arr: pa.Array, name: str, path: str) -> pa.Array:
    if arr.null_count:
        raise UserError(f"column {name!r} in {path} has {arr.null_count} null ids; drop or fill them first")
    if pa.types.is_integer(arr.type):
        if len(arr) and pc.min(arr).as_py() < 0:
            raise UserError(f"column {name!r} in {path} has negative ids (min {pc.min(arr).as_py()}); "
                            f"ids must be >= 0 (or strings)")
        return arr.cast(pa.int64())
    return arr.cast(pa.large_string())


def _normalise_ts(arr: pa.Array, name: str, path: str) -> np.ndarray:
    if arr.null_count:
        raise UserError(f"column {name!r} in {path} has {arr.null_count} null timestamps; fill or drop them")
    if pa.types.is_timestamp(arr.type):
        arr = arr.cast(pa.int64())
    return arr.cast(pa.int64()).to_numpy()


def read_columns(spec: InputSpec, progress=None) -> tuple[InputFiles, pa.ChunkedArray, pa.ChunkedArray,
                                                          np.ndarray | None, int]:
    """Scan the input once; return the validated user/item id columns (and ts)."""
    inp = open_input(spec.path)
    columns, _ = _check_columns(inp, spec)
    users, items, ts_parts = [], [], []
    rows = 0
    for batch in _scan(inp, spec, columns):
        users.append(_normalise_ids(batch.column(0), spec.user_col, spec.path))
        items.append(_normalise_ids(batch.column(1), spec.item_col, spec.path))
        if spec.ts_col:
            ts_parts.append(_normalise_ts(batch.column(2), spec.ts_col, spec.path))
        rows += batch.num_rows
        if progress is not None:
            progress.update(batch.num_rows)
    if rows == 0:
        raise UserError(f"input {spec.path} has no rows; pass a file with interactions")
    user_type = pa.int64() if pa.types.is_integer(users[0].type) else pa.large_string()
    item_type = pa.int64() if pa.types.is_integer(items[0].type) else pa.large_string()
    ts = np.concatenate(ts_parts) if spec.ts_col else None
    return (inp, pa.chunked_array(users, type=user_type), pa.chunked_array(items, type=item_type), ts, rows)


def _sorted_unique(col: pa.ChunkedArray) -> pa.Array:
    uniq = pc.unique(col)
    return uniq.take(pc.sort_indices(uniq))


def _index_in(col: pa.ChunkedArray, value_set: pa.Array) -> np.ndarray:
    """Position of each value in ``value_set``; -1 where absent."""
    idx = pc.index_in(col, value_set=value_set)
    return pc.fill_null(idx, -1).to_numpy().astype(np.int64)


def _dedup(user_raw: np.ndarray, item_raw: np.ndarray, ts: np.ndarray | None,
           num_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Collapse repeated (user, item) pairs into one, keeping the earliest ts; sorted by pair."""
    key = user_raw * np.int64(num_items) + item_raw
    if ts is None:
        key = np.unique(key)
        return key // num_items, key % num_items, None
    order = np.lexsort((ts, key))
    key_sorted = key[order]
    first = np.ones(len(key_sorted), dtype=bool)
    first[1:] = key_sorted[1:] != key_sorted[:-1]
    keep = order[first]
    key = key_sorted[first]
    return key // num_items, key % num_items, ts[keep]


def ingest_train(spec: InputSpec, progress=None) -> Interactions:
    """Read, validate, relabel to raw indices and deduplicate the training interactions."""
    inp, users, items, ts, rows = read_columns(spec, progress)
    user_orig = _sorted_unique(users)
    item_orig = _sorted_unique(items)
    user_raw = _index_in(users, user_orig)
    item_raw = _index_in(items, item_orig)
    del users, items
    user_raw, item_raw, ts = _dedup(user_raw, item_raw, ts, len(item_orig))
    return Interactions(user_raw, item_raw, ts, user_orig, item_orig, rows,
                        rows - len(user_raw), inp.files)


def ingest_heldout(spec: InputSpec, train: Interactions) -> HeldOut:
    """Map held-out interactions into the training id space; drop what cannot be scored."""
    inp, users, items, ts, rows = read_columns(spec)
    for name, col, orig in ((spec.user_col, users, train.user_orig), (spec.item_col, items, train.item_orig)):
        if (pa.types.is_integer(col.type)) != pa.types.is_integer(orig.type):
            raise UserError(f"column {name!r} in {spec.path} has type {col.type} but the training ids are "
                            f"{orig.type}; held-out ids must use the same type as training ids")
    user_raw = _index_in(users, train.user_orig)
    item_raw = _index_in(items, train.item_orig)
    known = (user_raw >= 0) & (item_raw >= 0)
    dropped_unknown = int((~known).sum())
    user_raw, item_raw = user_raw[known], item_raw[known]
    ts = ts[known] if ts is not None else None
    n_known = len(user_raw)
    user_raw, item_raw, ts = _dedup(user_raw, item_raw, ts, train.num_items)
    dropped_duplicates = n_known - len(user_raw)
    key = user_raw * np.int64(train.num_items) + item_raw
    train_key = train.user_raw * np.int64(train.num_items) + train.item_raw  # sorted by _dedup
    pos = np.searchsorted(train_key, key)
    in_train = (pos < len(train_key)) & (train_key[np.minimum(pos, len(train_key) - 1)] == key)
    keep = ~in_train
    return HeldOut(user_raw[keep], item_raw[keep], ts[keep] if ts is not None else None, rows,
                   dropped_unknown, int(in_train.sum()), dropped_duplicates, inp.files)


def count_rows(path: str) -> tuple[int, int, str]:
    """(rows, bytes, format) from file metadata only, for ``estimate``."""
    inp = open_input(path)
    total_bytes = sum(f["bytes"] for f in inp.files)
    if inp.fmt == "parquet":
        try:
            rows = sum(frag.count_rows() for frag in inp.dataset.get_fragments())
        except (pa.ArrowInvalid, OSError) as exc:
            raise UserError(f"cannot read {path}: {_first_line(exc)}; the file is truncated or corrupt")
        return rows, total_bytes, "parquet"
    # CSV has no metadata: estimate from a sample of the first file's lines.
    first = Path(inp.files[0]["path"])
    with open(first, "rb") as f:
        sample = f.read(1 << 20)
    lines = max(sample.count(b"\n"), 1)
    return int(total_bytes / len(sample) * lines), total_bytes, "csv"
