"""orig_id -> raw index maps, built while streaming the input, in memory bounded by distinct ids.

The *raw* index of a node is its rank among the sorted distinct orig ids of its type (users and
items separately), as before out-of-core ingest (docs/architecture.md D2). Three strategies, chosen
per column by what the ids look like (measured in docs/architecture.md D14):

* ``dense``: non-negative integer ids below a cap (``max_id * 5 bytes`` within the memory budget).
  A presence byte per possible id while scanning, then a lookup table ``lut[orig_id] -> raw``.
  Lookup is one gather: about 10 ns per id, the fastest by far, and what auto-increment ids and
  ``distgnn gen`` produce.
* ``sparse``: any other int64 ids (hashes, ids above 2^31, ...). Distinct values are collected
  per batch and compacted by sorting; lookups go through one pandas hash index built once.
* ``string``: string ids. Distinct values are collected with Arrow's hash ``unique``; lookups hash
  the strings through the same pandas index.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


class IdCollector:
    """Collects the distinct ids of one column over many batches (see module docstring)."""

    def __init__(self, dense_cap: int):
        self.dense_cap = int(dense_cap)
        self.kind: str | None = None          # "int" or "string", fixed by the first batch
        self.presence: np.ndarray | None = np.zeros(0, dtype=np.uint8)
        self.parts: list = []                  # sparse ints (np arrays) or strings (pa arrays)
        self.pending = 0
        self.compacted = 0

    def add(self, arr: pa.Array) -> None:
        kind = "int" if pa.types.is_integer(arr.type) else "string"
        if self.kind is None:
            self.kind = kind
            if kind == "string":
                self.presence = None
        elif kind != self.kind:
            raise TypeError(f"mixed id types ({self.kind} and {kind})")
        if len(arr) == 0:
            return
        if kind == "string":
            self._add_part(pc.unique(arr))
            return
        values = arr.to_numpy()
        if self.presence is not None:
            mx = int(values.max())
            if mx < self.dense_cap:
                if mx >= len(self.presence):
                    grown = np.zeros(min(self.dense_cap, max(mx + 1, 2 * len(self.presence))), np.uint8)
                    grown[: len(self.presence)] = self.presence
                    self.presence = grown
                self.presence[values] = 1
                return
            # switch to sparse: carry what was seen so far
            self.parts = [np.flatnonzero(self.presence).astype(np.int64)]
            self.compacted = len(self.parts[0])
            self.presence = None
        self._add_part(np.unique(values))

    def _add_part(self, uniq) -> None:
        self.parts.append(uniq)
        self.pending += len(uniq)
        if self.pending > max(2 * self.compacted, 1 << 22):
            merged = self._merge()
            self.parts = [merged]
            self.compacted = len(merged)
            self.pending = 0

    def _merge(self):
        if self.kind == "string":
            return pc.unique(pa.chunked_array(self.parts, type=pa.large_string()))
        return np.unique(np.concatenate(self.parts))

    def finish(self) -> "IdMap":
        if self.kind is None:
            return IdMap("dense", np.zeros(0, np.int64), lut=np.zeros(0, np.int32))
        if self.presence is not None:
            orig = np.flatnonzero(self.presence).astype(np.int64)
            lut = np.full(len(self.presence), -1, dtype=np.int32)
            lut[orig] = np.arange(len(orig), dtype=np.int32)
            self.presence = None
            return IdMap("dense", orig, lut=lut)
        merged = self._merge()
        self.parts = []
        if self.kind == "string":
            merged = merged.take(pc.sort_indices(merged))
            return IdMap("string", merged)
        return IdMap("sparse", np.sort(merged))


@dataclass
class IdMap:
    """Sorted distinct orig ids of one node type, and the lookup orig_id -> raw index."""

    kind: str                          # dense | sparse | string
    orig: np.ndarray | pa.Array        # sorted distinct orig ids; position = raw index
    lut: np.ndarray | None = None      # dense: raw index per possible id (-1: absent)
    _index: pd.Index | None = None

    def __len__(self) -> int:
        return len(self.orig)

    @property
    def arrow_type(self) -> pa.DataType:
        return pa.large_string() if self.kind == "string" else pa.int64()

    def orig_array(self) -> pa.Array:
        return self.orig if self.kind == "string" else pa.array(self.orig, type=pa.int64())

    def lookup(self, arr: pa.Array) -> np.ndarray:
        """Raw index (int64) of each id; -1 for ids not in the map."""
        is_int = pa.types.is_integer(arr.type)
        if is_int != (self.kind != "string"):
            raise TypeError("id type differs from the map's")
        if self.kind == "dense":
            values = arr.to_numpy()
            if len(self.lut) and len(values) and int(values.max()) < len(self.lut) and int(values.min()) >= 0:
                return self.lut[values].astype(np.int64)
            out = np.full(len(values), -1, dtype=np.int64)
            ok = (values >= 0) & (values < len(self.lut))
            out[ok] = self.lut[values[ok]]
            return out
        if self._index is None:
            # pandas builds the hash table once, on the first lookup, and keeps it
            values = self.orig if self.kind == "sparse" else self.orig.to_numpy(zero_copy_only=False)
            self._index = pd.Index(values)
        values = arr.to_numpy() if self.kind == "sparse" else arr.to_numpy(zero_copy_only=False)
        return self._index.get_indexer(values).astype(np.int64)

    def save(self, path) -> None:
        """Sorted orig ids as Parquet (one column ``orig_id``), for a resumed run."""
        import pyarrow.parquet as pq
        pq.write_table(pa.table({"orig_id": self.orig_array()}), path)

    @classmethod
    def load(cls, path, kind: str) -> "IdMap":
        import pyarrow.parquet as pq
        col = pq.read_table(path).column("orig_id").combine_chunks()
        if kind == "string":
            return cls("string", col)
        orig = col.to_numpy()
        if kind == "dense":
            lut = np.full(int(orig[-1]) + 1 if len(orig) else 0, -1, dtype=np.int32)
            lut[orig] = np.arange(len(orig), dtype=np.int32)
            return cls("dense", orig, lut=lut)
        return cls("sparse", orig)
