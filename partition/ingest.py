"""Ingest, reading side: open Parquet/CSV inputs, validate them, and stream id batches.

The graph-building side (id maps, deduplication, the out-of-core CSR) is ``partition/graph.py``.
Everything is columnar: pyarrow datasets scanned in record batches, no per-row Python and no
DataFrames. Validation happens before work (schema) or in the single scan (nulls, negative ids,
corrupt files), each problem one line naming the fix.
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


def scan_columns(spec: InputSpec, inp: InputFiles | None = None
                 ) -> Iterable[tuple[pa.Array, pa.Array, np.ndarray | None]]:
    """Stream validated (user ids, item ids, ts) batches: ids as int64 or large_string arrays."""
    inp = inp or open_input(spec.path)
    columns, _ = _check_columns(inp, spec)
    rows = 0
    for batch in _scan(inp, spec, columns):
        users = _normalise_ids(batch.column(0), spec.user_col, spec.path)
        items = _normalise_ids(batch.column(1), spec.item_col, spec.path)
        ts = _normalise_ts(batch.column(2), spec.ts_col, spec.path) if spec.ts_col else None
        rows += batch.num_rows
        yield users, items, ts
    if rows == 0:
        raise UserError(f"input {spec.path} has no rows; pass a file with interactions")


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


def estimate_nodes(path: str, rows: int) -> tuple[int, str]:
    """Users + items, from Parquet column statistics where ids are integers (max id + 1 bounds
    the distinct count of dense ids); otherwise rows / 12, the ratio of typical interaction logs."""
    inp = open_input(path)
    if inp.fmt == "parquet":
        try:
            total = 0
            for col in ("user_id", "item_id"):
                mx = -1
                for frag in inp.dataset.get_fragments():
                    md = frag.metadata
                    idx = md.schema.to_arrow_schema().get_field_index(col)
                    if idx < 0:
                        raise ValueError
                    for g in range(md.num_row_groups):
                        st = md.row_group(g).column(idx).statistics
                        if st is None or not st.has_min_max or not isinstance(st.max, int):
                            raise ValueError
                        mx = max(mx, st.max)
                total += min(mx + 1, rows)
            return int(total), "from the id columns' Parquet statistics"
        except (ValueError, KeyError, pa.ArrowException, OSError):
            pass
    return max(1, rows // 12), "guessed as rows / 12"
