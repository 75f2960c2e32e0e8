"""Embedding store: learnable ID embeddings with their sparse optimizer state, addressed by gid.

Interface (``EmbeddingStore``), the same one a Ray parameter-server shard will implement:

- ``pull(gids) -> Tensor[n, dim]``: a detached copy of the rows;
- ``push(gids, grads)``: gradients for those rows; duplicates are summed, then one optimizer step
  (row-wise Adagrad or Adam) is applied to the touched rows only; untouched rows and their
  optimizer state do not change;
- ``state_dict()/load_state_dict()``: plain tensors;
- ``save(path, id_maps)/load(path, id_maps)``: Parquet files keyed by orig id (not gid), holding the
  rows and their optimizer state, so a checkpoint survives re-partitioning and never needs pickle.

The optimizers are the sparse ("lazy") variants: Adam keeps a per-row step count for its bias
correction, so a row's update depends only on the gradients that row has received.
"""
from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from distgnn.errors import UserError

OPTIMIZERS = ("adagrad", "adam")


class EmbeddingStore(ABC):
    num_rows: int
    dim: int

    @abstractmethod
    def pull(self, gids: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def push(self, gids: torch.Tensor, grads: torch.Tensor, unique: bool = False) -> None: ...

    @abstractmethod
    def state_dict(self) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...

    @abstractmethod
    def save(self, path: str | Path, id_maps: dict[str, tuple[np.ndarray, pa.Array]]) -> None: ...

    @abstractmethod
    def load(self, path: str | Path, id_maps: dict[str, tuple[np.ndarray, pa.Array]]) -> None: ...

    def flush(self) -> None:
        """Wait until every push so far is applied (a store with asynchronous pushes overrides it)."""


def _fixed_list(arr: np.ndarray) -> pa.Array:
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), arr.shape[1])


def _from_fixed_list(col: pa.ChunkedArray, dim: int) -> np.ndarray:
    arr = col.combine_chunks()
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)


class LocalEmbeddingStore(EmbeddingStore):
    """All rows in one process: weights and optimizer state as dense [num_rows, dim] tensors."""

    def __init__(self, num_rows: int, dim: int, optimizer: str = "adam", lr: float = 0.01,
                 init_std: float = 0.1, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, seed: int = 0, device: str | torch.device = "cpu"):
        if optimizer not in OPTIMIZERS:
            raise UserError(f"embedding optimizer {optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        self.num_rows, self.dim = int(num_rows), int(dim)
        self.optimizer, self.lr, self.betas, self.eps = optimizer, float(lr), tuple(betas), float(eps)
        self.device = torch.device(device)
        gen = torch.Generator().manual_seed(seed)
        self.weight = (torch.randn(self.num_rows, self.dim, generator=gen) * init_std).to(self.device)
        if optimizer == "adam":
            self.exp_avg = torch.zeros_like(self.weight)
            self.exp_avg_sq = torch.zeros_like(self.weight)
            self.step = torch.zeros(self.num_rows, dtype=torch.int64, device=self.device)
        else:
            self.sum_sq = torch.zeros_like(self.weight)

    # --- shared memory (the Ray backend's co-located fast path) ------------------------------
    def move_to_files(self, prefix: str) -> dict[str, tuple[str, list[int], str]]:
        """Back every state tensor by a shared file mapping ``prefix.<name>`` (in /dev/shm), so
        another process on the node can ``attach`` the same rows; returns that spec."""
        spec = {}
        for name in self._state_names():
            cur = getattr(self, name)
            path = f"{prefix}.{name}"
            mapped = _map_file(path, list(cur.shape), cur.dtype)
            mapped.copy_(cur)
            setattr(self, name, mapped)
            spec[name] = (path, list(cur.shape), str(cur.dtype).removeprefix("torch."))
        return spec

    @classmethod
    def attach(cls, spec: dict[str, tuple[str, list[int], str]], optimizer: str, lr: float,
               betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> "LocalEmbeddingStore":
        """A store over rows another process placed in shared files (``move_to_files``): pulls
        read them and pushes update them in place, with no copy and no call."""
        self = cls.__new__(cls)
        self.optimizer, self.lr, self.betas, self.eps = optimizer, float(lr), tuple(betas), float(eps)
        self.device = torch.device("cpu")
        for name in self._state_names():
            path, shape, dtype = spec[name]
            setattr(self, name, _map_file(path, shape, getattr(torch, dtype)))
        self.num_rows, self.dim = self.weight.shape
        return self

    # --- pull / push ----------------------------------------------------------------------
    def pull(self, gids: torch.Tensor) -> torch.Tensor:
        return self.weight.index_select(0, gids.to(self.device))

    def push(self, gids: torch.Tensor, grads: torch.Tensor, unique: bool = False) -> None:
        """Sum the gradients per row (unless the caller guarantees ``unique``), then step."""
        gids = gids.to(self.device)
        grads = grads.to(self.device, torch.float32)
        if not unique:
            gids, inverse = torch.unique(gids, return_inverse=True)
            summed = torch.zeros(len(gids), self.dim, device=self.device, dtype=grads.dtype)
            summed.index_add_(0, inverse, grads)
            grads = summed
        if self.optimizer == "adam":
            self._adam(gids, grads)
        else:
            self._adagrad(gids, grads)

    def _adam(self, rows: torch.Tensor, g: torch.Tensor) -> None:
        b1, b2 = self.betas
        step = self.step.index_select(0, rows) + 1
        self.step.index_copy_(0, rows, step)
        m = self.exp_avg.index_select(0, rows).mul_(b1).add_(g, alpha=1 - b1)
        v = self.exp_avg_sq.index_select(0, rows).mul_(b2).addcmul_(g, g, value=1 - b2)
        self.exp_avg.index_copy_(0, rows, m)
        self.exp_avg_sq.index_copy_(0, rows, v)
        t = step.to(g.dtype).unsqueeze(1)
        # 1 - beta**t per row as -expm1(t log beta): torch's pow with a scalar base and a tensor
        # exponent is not vectorised on CPU (6x slower than exp; it was most of a push)
        bias1 = -torch.expm1(t * _log(b1))
        bias2 = -torch.expm1(t * _log(b2))
        update = (m / bias1).div_((v / bias2).sqrt_().add_(self.eps))
        # rows are unique here: gather-update-scatter (index_add_ is serial on CPU)
        self.weight.index_copy_(0, rows, self.weight.index_select(0, rows).add_(update, alpha=-self.lr))

    def _adagrad(self, rows: torch.Tensor, g: torch.Tensor) -> None:
        s = self.sum_sq.index_select(0, rows).addcmul_(g, g)
        self.sum_sq.index_copy_(0, rows, s)
        update = g / s.sqrt().add_(self.eps)
        self.weight.index_copy_(0, rows, self.weight.index_select(0, rows).add_(update, alpha=-self.lr))

    # --- state ----------------------------------------------------------------------------
    def _state_names(self) -> list[str]:
        return ["weight", "exp_avg", "exp_avg_sq", "step"] if self.optimizer == "adam" else ["weight", "sum_sq"]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).clone() for name in self._state_names()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        names = self._state_names()
        if sorted(state) != sorted(names):
            raise UserError(f"embedding state has {sorted(state)}, expected {sorted(names)} "
                            f"(optimizer {self.optimizer}); the checkpoint is from another config")
        for name in names:
            cur = getattr(self, name)
            if state[name].shape != cur.shape:
                raise UserError(f"embedding state {name} has shape {tuple(state[name].shape)}, expected "
                                f"{tuple(cur.shape)}; the checkpoint is from another config or data")
            cur.copy_(state[name].to(cur.device))

    # --- save / load in orig-id space -----------------------------------------------------
    def save(self, path: str | Path, id_maps: dict[str, tuple[np.ndarray, pa.Array]]) -> None:
        """One Parquet file per node type: orig_id, then one column per state tensor."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {"optimizer": self.optimizer, "dim": self.dim}
        for ntype, (gids, orig) in id_maps.items():
            rows = torch.from_numpy(np.array(gids, dtype=np.int64)).to(self.device)
            cols = {"orig_id": orig}
            for name in self._state_names():
                t = getattr(self, name).index_select(0, rows).cpu().numpy()
                cols[name] = pa.array(t) if t.ndim == 1 else _fixed_list(t)
            table = pa.table(cols).replace_schema_metadata({"distgnn": json.dumps(meta)})
            pq.write_table(table, path / f"{ntype}.parquet")

    def load(self, path: str | Path, id_maps: dict[str, tuple[np.ndarray, pa.Array]]) -> None:
        for ntype, (gids, orig) in id_maps.items():
            pos, cols = read_rows(Path(path), ntype, orig, self.optimizer, self.dim, self._state_names())
            rows = torch.from_numpy(np.array(gids, dtype=np.int64)).to(self.device)
            take = torch.from_numpy(pos)
            for name, vals in cols.items():
                getattr(self, name).index_copy_(0, rows, torch.from_numpy(vals)[take].to(self.device))


def _log(beta: float) -> float:
    """log(beta), with log(0) = -inf (then 1 - 0**t = 1 for t >= 1, as expm1(-inf) = -1)."""
    return math.log(beta) if beta > 0 else -math.inf


def _map_file(path: str, shape: list[int], dtype: torch.dtype) -> torch.Tensor:
    numel = int(np.prod(shape)) if shape else 1
    return torch.from_file(path, shared=True, size=numel, dtype=dtype).view(*shape)


def read_rows(path: Path, ntype: str, orig: pa.Array, optimizer: str, dim: int,
              names: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Read ``path/<ntype>.parquet`` written by any embedding store's ``save``.

    Returns ``pos`` (for each node of ``orig``, its row in the file) and the state columns by name,
    after checking the file matches the optimizer, the dimension and the partition's ids. Both the
    local and the Ray store load through here, so a checkpoint moves between backends and between
    numbers of shards.
    """
    import pandas as pd

    f = path / f"{ntype}.parquet"
    try:
        table = pq.read_table(f)
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"cannot read checkpoint embeddings {f}: {exc}")
    meta = json.loads((table.schema.metadata or {}).get(b"distgnn", b"{}"))
    if meta.get("optimizer") != optimizer or meta.get("dim") != dim:
        raise UserError(f"{f} holds {meta.get('optimizer')} embeddings of dim {meta.get('dim')}, "
                        f"but the config asks for {optimizer} with dim {dim}; "
                        f"use a matching config or train a new run")
    ck_orig = table.column("orig_id").combine_chunks()
    if ck_orig.type != orig.type:
        raise UserError(f"{f}: orig ids are {ck_orig.type} but the partitions use {orig.type}; "
                        f"the checkpoint belongs to other data")
    pos = pd.Index(ck_orig.to_numpy(zero_copy_only=False)).get_indexer(orig.to_numpy(zero_copy_only=False))
    if (pos < 0).any():
        raise UserError(f"{f}: {int((pos < 0).sum())} {ntype}s of the partition directory have "
                        f"no row in the checkpoint; it belongs to other data")
    cols = {n: (table.column(n).to_numpy().astype(np.int64) if n == "step"
                else _from_fixed_list(table.column(n), dim).copy()) for n in names}
    return pos, cols
