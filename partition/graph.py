"""Ingest, graph side: stream the input into a deduplicated bipartite CSR on disk.

Memory is bounded by the number of distinct ids and by one bucket, never by the number of
interactions (docs/architecture.md D14):

1. **Distinct ids** (scan 1): an ``IdCollector`` per column (``partition/idmap.py``).
2. **Buckets** (scan 2): every row is mapped to raw indices and appended to one of ``B`` bucket
   files by user range (int32 user, int32 item [, int64 ts]).
3. **Per bucket**: deduplicate with one sort of ``user * I + item`` keys (earliest ts kept),
   carve the per-user validation split (``--valid-fraction``), and append the bucket's rows to
   the user-side CSR. Buckets are deleted as they are consumed, so scratch holds about one copy.
4. **Transpose**: the item-side CSR by a counting sort streamed over the user-side CSR.

Files in the scratch directory (each ``.npy``): ``user_indptr`` (int64, U+1), ``user_indices``
(int32 item raw index, sorted per row), ``item_indptr``, ``item_indices`` (int32 user raw
index, sorted per row), with ``--ts-col`` also ``user_ts``/``item_ts``; held-out splits as
``heldout-<split>-{user,item,ts}.npy``; the id maps as ``idmap-{user,item}.parquet``.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from distgnn.errors import UserError
from partition import ingest, kernels
from partition.idmap import IdCollector, IdMap
from partition.scratch import Scratch, charge_write, iter_row_chunks

SIDES = ("user", "item")
GRAPH_FILES = ("user_indptr.npy", "user_indices.npy", "item_indptr.npy", "item_indices.npy")


@dataclass
class HeldOutSplit:
    """Held-out interactions in the raw index space, with the drop counts of the manifest."""

    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray | None
    rows_read: int = 0
    dropped_unknown: int = 0
    dropped_in_train: int = 0
    dropped_duplicates: int = 0
    files: list[dict] = field(default_factory=list)
    source: str = "file"   # "file" (--test/--valid) or "carved" (--valid-fraction)

    def counts(self) -> dict[str, Any]:
        return {"rows": int(len(self.user)), "rows_read": self.rows_read, "source": self.source,
                "dropped_unknown": self.dropped_unknown, "dropped_in_train": self.dropped_in_train,
                "dropped_duplicates": self.dropped_duplicates}


@dataclass
class Graph:
    """The deduplicated training graph on disk (see module docstring) and its id maps."""

    scratch: Scratch
    num_users: int
    num_items: int
    num_edges: int
    has_ts: bool
    user_map: IdMap
    item_map: IdMap
    rows_read: int
    duplicates: int
    files: list[dict]

    @property
    def num_nodes(self) -> int:
        return self.num_users + self.num_items

    def indptr(self, side: str) -> np.ndarray:
        return self.scratch.load(f"{side}_indptr.npy")

    def degrees(self) -> np.ndarray:
        """Degree of every raw node (users, then items), int32 (a degree is below 2^31)."""
        out = np.empty(self.num_nodes, dtype=np.int32)
        out[:self.num_users] = np.diff(self.indptr("user"))
        out[self.num_users:] = np.diff(self.indptr("item"))
        return out

    def iter_rows(self, side: str, max_entries: int, with_ts: bool = False, indptr: np.ndarray | None = None
                  ) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray | None]]:
        """(row_start, indptr slice, indices, ts) per chunk of rows, read (not mapped) from disk,
        so resident memory stays at one chunk however large the graph."""
        indptr = self.indptr(side) if indptr is None else indptr
        ind_path = self.scratch.path(f"{side}_indices.npy")
        ts_path = self.scratch.path(f"{side}_ts.npy") if with_ts and self.has_ts else None
        for r0, r1 in iter_row_chunks(indptr, max_entries):
            a, b = int(indptr[r0]), int(indptr[r1])
            ts = read_npy_slice(ts_path, a, b) if ts_path is not None else None
            yield r0, indptr[r0:r1 + 1], read_npy_slice(ind_path, a, b), ts

    def nbr_offset(self, side: str) -> int:
        """Node id of a row's neighbour = index + offset: users' rows hold items (offset U)."""
        return self.num_users if side == "user" else 0

    def row_offset(self, side: str) -> int:
        return 0 if side == "user" else self.num_users


def read_npy_slice(path: Path, start: int, stop: int) -> np.ndarray:
    """Elements ``[start, stop)`` of a 1-D ``.npy`` file, read into private memory."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        shape, _, dtype = np.lib.format._read_array_header(f, version)
        header = f.tell()
        f.seek(header + start * dtype.itemsize)
        return np.fromfile(f, dtype=dtype, count=stop - start)


class _BucketFiles:
    """Append-only per-bucket binary files of (user int32, item int32 [, ts int64])."""

    def __init__(self, scratch: Scratch, prefix: str, num_buckets: int, has_ts: bool):
        self.scratch = scratch
        self.names = [f"{prefix}-{b:04d}" for b in range(num_buckets)]
        self.has_ts = has_ts
        self.handles = {}
        self.rows = np.zeros(num_buckets, dtype=np.int64)

    def _handle(self, b: int, col: str):
        key = (b, col)
        if key not in self.handles:
            self.handles[key] = open(self.scratch.path(f"{self.names[b]}.{col}"), "ab", buffering=1 << 20)
        return self.handles[key]

    def append(self, b: int, user: np.ndarray, item: np.ndarray, ts: np.ndarray | None) -> None:
        charge_write(user.nbytes + item.nbytes + (ts.nbytes if ts is not None else 0), self.names[b])
        self._handle(b, "u").write(user.astype(np.int32, copy=False).data)
        self._handle(b, "i").write(item.astype(np.int32, copy=False).data)
        if self.has_ts:
            self._handle(b, "t").write(ts.astype(np.int64, copy=False).data)
        self.rows[b] += len(user)

    def close(self) -> None:
        for h in self.handles.values():
            h.close()
        self.handles = {}

    def take(self, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Read bucket ``b`` and delete its files."""
        out = []
        for col, dtype in (("u", np.int32), ("i", np.int32), ("t", np.int64)):
            p = self.scratch.path(f"{self.names[b]}.{col}")
            if col == "t" and not self.has_ts:
                out.append(None)
                continue
            out.append(np.fromfile(p, dtype=dtype) if p.exists() else np.zeros(0, dtype))
            p.unlink(missing_ok=True)
        return out[0], out[1], out[2]


def _dedup_sorted(user: np.ndarray, item: np.ndarray, ts: np.ndarray | None, num_items: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Distinct (user, item) pairs sorted by (user, item); with ts, the earliest ts is kept."""
    key = user.astype(np.int64) * np.int64(num_items) + item
    if ts is None:
        key = np.unique(key)
        return key // num_items, key % num_items, None
    order = np.lexsort((ts, key))
    key = key[order]
    first = np.ones(len(key), dtype=bool)
    first[1:] = key[1:] != key[:-1]
    return key[first] // num_items, key[first] % num_items, ts[order[first]]


@dataclass
class IngestOptions:
    spec: ingest.InputSpec
    memory_budget: int                 # bytes this stage may use for its largest arrays
    valid_fraction: float = 0.0
    valid_by: str = "random"
    seed: int = 0
    progress: bool = True


def build_graph(opts: IngestOptions, scratch: Scratch) -> tuple[Graph, HeldOutSplit | None]:
    """Scan the training input twice and write the deduplicated CSR (see module docstring)."""
    spec = opts.spec
    hide = None if opts.progress else True
    inp = ingest.open_input(spec.path)
    total_rows = ingest.count_rows(spec.path)[0]
    dense_cap = max(1 << 20, opts.memory_budget // 2)   # presence + lut: 5 bytes per possible id

    collectors = {"user": IdCollector(dense_cap), "item": IdCollector(dense_cap)}
    rows = 0
    with tqdm(total=total_rows, desc="ingest 1/4 ids", unit="rows", unit_scale=True, disable=hide,
              file=sys.stderr) as bar:
        for users, items, _ in ingest.scan_columns(spec, inp):
            for name, col, arr in (("user", spec.user_col, users), ("item", spec.item_col, items)):
                try:
                    collectors[name].add(arr)
                except TypeError:
                    raise UserError(f"column {col!r} in {spec.path} mixes integer and string ids across "
                                    f"part files; cast it to one type in every file") from None
            rows += len(users)
            bar.update(len(users))
    user_map, item_map = collectors["user"].finish(), collectors["item"].finish()
    del collectors
    num_users, num_items = len(user_map), len(item_map)
    if max(num_users, num_items) >= 2**31 - 1:
        raise UserError(f"{num_users:,} users / {num_items:,} items: more than 2^31 of one node type "
                        f"is not supported")

    # Buckets by user raw range, each small enough to sort in the budget (~40 bytes per row).
    rows_per_bucket = max(1 << 16, opts.memory_budget // 48)
    num_buckets = max(1, min(4096, -(-rows // rows_per_bucket)))
    users_per_bucket = max(1, -(-num_users // num_buckets))
    buckets = _BucketFiles(scratch, "bucket", num_buckets, spec.ts_col is not None)
    with tqdm(total=rows, desc="ingest 2/4 buckets", unit="rows", unit_scale=True, disable=hide,
              file=sys.stderr) as bar:
        for users, items, ts in ingest.scan_columns(spec, inp):
            u = user_map.lookup(users)
            i = item_map.lookup(items)
            if num_buckets == 1:
                buckets.append(0, u, i, ts)
            else:
                b = (u // users_per_bucket).astype(np.int16)
                order = np.argsort(b, kind="stable")
                bounds = np.searchsorted(b[order], np.arange(num_buckets + 1))
                for k in np.flatnonzero(np.diff(bounds)):
                    sel = order[bounds[k]:bounds[k + 1]]
                    buckets.append(int(k), u[sel], i[sel], ts[sel] if ts is not None else None)
            bar.update(len(users))
    buckets.close()

    has_ts = spec.ts_col is not None
    user_deg = np.zeros(num_users, dtype=np.int64)
    item_deg = np.zeros(num_items, dtype=np.int64)
    ind_path = scratch.path("user_indices.npy")
    ts_path = scratch.path("user_ts.npy")
    kept = 0
    valid_parts: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
    ind_f = open(ind_path.with_suffix(".raw"), "wb", buffering=1 << 22)
    ts_f = open(ts_path.with_suffix(".raw"), "wb", buffering=1 << 22) if has_ts else None
    try:
        for b in tqdm(range(num_buckets), desc="ingest 3/4 dedup", unit="bucket", disable=hide,
                      file=sys.stderr):
            u, i, t = buckets.take(b)
            if len(u) == 0:
                continue
            u0 = b * users_per_bucket
            nb = min(users_per_bucket, num_users - u0)
            local_ptr = np.zeros(nb + 1, dtype=np.int64)
            i_out = np.empty(len(u), dtype=np.int64)
            t_out = np.empty(len(u) if t is not None else 0, dtype=np.int64)
            m = kernels.dedup_rows(u - np.int32(u0), i, t if t is not None else np.zeros(0, np.int64),
                                   t is not None, nb, local_ptr, i_out, t_out)
            del u
            i = i_out[:m]
            t = t_out[:m] if t is not None else None
            u = np.repeat(np.arange(u0, u0 + nb, dtype=np.int64), np.diff(local_ptr))
            if opts.valid_fraction > 0:
                mask = np.zeros(len(u), dtype=np.bool_)
                kernels.choose_holdout(u0, local_ptr, i, t if t is not None else np.zeros(0, np.int64),
                                       opts.valid_by == "latest", float(opts.valid_fraction),
                                       np.uint64(opts.seed), mask)
                valid_parts.append((u[mask].astype(np.int32), i[mask].astype(np.int32),
                                    t[mask] if t is not None else None))
                keep = ~mask
                u, i, t = u[keep], i[keep], (t[keep] if t is not None else None)
            user_deg[u0:u0 + nb] += np.bincount(u - u0, minlength=nb)
            item_deg += np.bincount(i, minlength=num_items)
            charge_write(4 * len(i) + (8 * len(i) if has_ts else 0), str(ind_path))
            ind_f.write(i.astype(np.int32).data)
            if has_ts:
                ts_f.write(t.astype(np.int64).data)
            kept += len(u)
    finally:
        ind_f.close()
        if ts_f is not None:
            ts_f.close()
    duplicates = rows - kept - sum(len(p[0]) for p in valid_parts)
    _raw_to_npy(ind_path.with_suffix(".raw"), ind_path, np.int32, kept)
    if has_ts:
        _raw_to_npy(ts_path.with_suffix(".raw"), ts_path, np.int64, kept)
    user_indptr = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(user_deg, out=user_indptr[1:])
    scratch.save("user_indptr.npy", user_indptr)
    item_indptr = np.zeros(num_items + 1, dtype=np.int64)
    np.cumsum(item_deg, out=item_indptr[1:])
    scratch.save("item_indptr.npy", item_indptr)
    del user_deg, item_deg

    graph = Graph(scratch, num_users, num_items, kept, has_ts, user_map, item_map, rows, duplicates,
                  inp.files)
    _transpose(graph, user_indptr, item_indptr, 2 * opts.memory_budget, hide)

    carved = None
    if opts.valid_fraction > 0:
        cu = np.concatenate([p[0] for p in valid_parts]).astype(np.int64) if valid_parts else np.zeros(0, np.int64)
        ci = np.concatenate([p[1] for p in valid_parts]).astype(np.int64) if valid_parts else np.zeros(0, np.int64)
        ct = np.concatenate([p[2] for p in valid_parts]) if has_ts and valid_parts else None
        carved = HeldOutSplit(cu, ci, ct, rows_read=len(cu), source="carved")
    user_map.save(scratch.path("idmap-user.parquet"))
    item_map.save(scratch.path("idmap-item.parquet"))
    return graph, carved


def _npy_header(f, dtype, length: int) -> None:
    np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                             "fortran_order": False, "shape": (length,)})


def _raw_to_npy(raw: Path, npy: Path, dtype, length: int) -> None:
    """Prefix a raw binary file with a ``.npy`` header (rewrites the file once, streamed)."""
    with open(npy, "wb") as out:
        _npy_header(out, dtype, length)
        with open(raw, "rb") as f:
            while chunk := f.read(1 << 26):
                out.write(chunk)
    raw.unlink()


def _transpose(graph: Graph, user_indptr: np.ndarray, item_indptr: np.ndarray, budget: int, hide) -> None:
    """Item-side CSR by counting sort, one item range at a time.

    Each pass streams the user-side CSR and scatters only the entries whose item falls in the
    pass's range into a private buffer, which is then appended to ``item_indices.npy`` in one
    sequential write. Scattering straight into a memory-mapped file instead made the kernel write
    dirty pages back over and over (175 GB written for a 4 GB file at 1B interactions).
    """
    scratch = graph.scratch
    E = graph.num_edges
    per_entry = 4 + (8 if graph.has_ts else 0)
    span = max(1 << 16, budget // per_entry)           # entries per pass
    bounds = [0]
    while bounds[-1] < graph.num_items:
        target = int(item_indptr[bounds[-1]]) + span
        nxt = int(np.searchsorted(item_indptr, target, side="right")) - 1
        bounds.append(min(graph.num_items, max(nxt, bounds[-1] + 1)))
    cursor = item_indptr[:-1].copy()
    chunk = max(1 << 16, budget // 16)
    ind_raw = scratch.path("item_indices.npy")
    ts_raw = scratch.path("item_ts.npy")
    empty_ts = np.zeros(0, dtype=np.int64)
    with open(ind_raw, "wb") as f_ind, (open(ts_raw, "wb") if graph.has_ts else open(os.devnull, "wb")) as f_ts, \
            tqdm(total=E * (len(bounds) - 1), desc="ingest 4/4 transpose", unit="edges", unit_scale=True,
                 disable=hide, file=sys.stderr) as bar:
        # the length is known: write the .npy headers first, then the passes' buffers in order
        _npy_header(f_ind, np.int32, E)
        if graph.has_ts:
            _npy_header(f_ts, np.int64, E)
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            base = int(item_indptr[lo])
            n = int(item_indptr[hi]) - base
            out = np.empty(n, dtype=np.int32)
            out_ts = np.empty(n if graph.has_ts else 0, dtype=np.int64)
            for r0, ptr, ind, ts in graph.iter_rows("user", chunk, with_ts=True, indptr=user_indptr):
                kernels.scatter_transpose_range(r0, ptr, ind, ts if ts is not None else empty_ts, graph.has_ts,
                                                lo, hi, cursor, base, out, out_ts)
                bar.update(len(ind))
            charge_write(out.nbytes + out_ts.nbytes, str(ind_raw))
            f_ind.write(out.data)
            if graph.has_ts:
                f_ts.write(out_ts.data)
            del out, out_ts


def map_heldout(spec: ingest.InputSpec, graph: Graph) -> HeldOutSplit:
    """Map a held-out file into the raw space; drop unknown, duplicate and in-train rows."""
    users_l, items_l, ts_l, rows = [], [], [], 0
    inp = ingest.open_input(spec.path)
    for users, items, ts in ingest.scan_columns(spec, inp):
        for name, col, m in ((spec.user_col, users, graph.user_map), (spec.item_col, items, graph.item_map)):
            if pa.types.is_integer(col.type) != (m.kind != "string"):
                raise UserError(f"column {name!r} in {spec.path} has type {col.type} but the training "
                                f"ids are {m.arrow_type}; held-out ids must use the same type as training ids")
        u = graph.user_map.lookup(users)
        i = graph.item_map.lookup(items)
        known = (u >= 0) & (i >= 0)
        users_l.append(u[known])
        items_l.append(i[known])
        if ts is not None:
            ts_l.append(ts[known])
        rows += len(u)
    u = np.concatenate(users_l)
    i = np.concatenate(items_l)
    ts = np.concatenate(ts_l) if ts_l else None
    dropped_unknown = rows - len(u)
    n_known = len(u)
    u, i, ts = _dedup_sorted(u, i, ts, max(graph.num_items, 1))
    dropped_dup = n_known - len(u)
    in_train = kernels.in_csr(graph.indptr("user"), graph.scratch.load("user_indices.npy", mmap=True),
                              u.astype(np.int64), i.astype(np.int32))
    keep = ~in_train
    return HeldOutSplit(u[keep], i[keep], ts[keep] if ts is not None else None, rows, dropped_unknown,
                        int(in_train.sum()), dropped_dup, inp.files)


def save_heldout(scratch: Scratch, split: str, h: HeldOutSplit) -> list[str]:
    names = [f"heldout-{split}-user.npy", f"heldout-{split}-item.npy"]
    scratch.save(names[0], h.user.astype(np.int64))
    scratch.save(names[1], h.item.astype(np.int64))
    if h.ts is not None:
        names.append(f"heldout-{split}-ts.npy")
        scratch.save(names[2], h.ts)
    return names


def load_heldout(scratch: Scratch, split: str, info: dict) -> HeldOutSplit:
    ts_path = scratch.path(f"heldout-{split}-ts.npy")
    h = HeldOutSplit(scratch.load(f"heldout-{split}-user.npy"), scratch.load(f"heldout-{split}-item.npy"),
                     np.load(ts_path) if ts_path.exists() else None)
    for k in ("rows_read", "dropped_unknown", "dropped_in_train", "dropped_duplicates", "source"):
        setattr(h, k, info[k])
    h.files = info.get("files", [])
    return h
