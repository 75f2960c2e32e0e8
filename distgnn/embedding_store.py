"""Embedding store: learnable ID embeddings with their sparse optimizer state, addressed by gid.

Interface (``EmbeddingStore``), the same one a Ray parameter-server shard will implement:

- ``pull(gids) -> Tensor[n, dim]``: a detached copy of the rows;
- ``push(gids, grads)``: gradients for those rows; duplicates are summed, then one optimizer step
  (row-wise Adagrad or Adam) is applied to the touched rows only; untouched rows and their
  optimizer state do not change;
- ``state_dict()/load_state_dict()``: plain tensors;
- ``save(ckpt_dir, partitions_root)/load(ckpt_dir, partitions_root)``: the embedding files of a
  checkpoint (``distgnn.checkpoint``, format v2): one Parquet file per partition and node type,
  holding the rows, their orig ids and their optimizer state. Every store writes and reads them
  through ``checkpoint.write_partition_files`` / ``checkpoint.load_partition_rows``, so a checkpoint
  moves between backends, survives re-partitioning (re-keyed by orig id) and never needs pickle.

The optimizers are the sparse ("lazy") variants: Adam keeps a per-row step count for its bias
correction, so a row's update depends only on the gradients that row has received.
"""
from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch

from distgnn import checkpoint as ckpt
from distgnn import format as fmt
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
    def save(self, ckpt_dir: str | Path, partitions_root: str | Path) -> dict[str, dict]:
        """Write ``ckpt_dir/embeddings/{user,item}-PPPPP.parquet`` for every partition of
        ``partitions_root``; return their ``files`` records for the checkpoint manifest."""

    @abstractmethod
    def load(self, ckpt_dir: str | Path, partitions_root: str | Path) -> None:
        """Every row (and its optimizer state) from checkpoint ``ckpt_dir`` (format v1 or v2, any
        partitioning of the same nodes) for the partitions of ``partitions_root``."""

    def flush(self) -> None:
        """Wait until every push so far is applied (a store with asynchronous pushes overrides it)."""


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
            setattr(self, name, _map_file(path, shape, getattr(torch, dtype), create=False))
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
        return ckpt.state_names(self.optimizer)

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

    # --- save / load: checkpoint files per partition -------------------------------------------
    def _book(self, partitions_root: str | Path) -> fmt.PartitionBook:
        book = fmt.PartitionBook.from_manifest(fmt.load_manifest(partitions_root))
        if book.num_nodes != self.num_rows:
            raise UserError(f"{partitions_root} has {book.num_nodes} nodes but the embedding store "
                            f"{self.num_rows} rows; use the partition directory the run trains on")
        return book

    def save(self, ckpt_dir: str | Path, partitions_root: str | Path) -> dict[str, dict]:
        """The files a PS shard per partition would write (byte for byte): partition ``p``'s rows
        are the slice ``[gid_start, gid_end)`` of every state tensor."""
        book = self._book(partitions_root)
        files: dict[str, dict] = {}
        for p in range(book.num_parts):
            a, b = int(book.gid_start[p]), int(book.gid_end[p])
            state = {n: getattr(self, n)[a:b].cpu().numpy() for n in self._state_names()}
            files.update(ckpt.write_partition_files(ckpt_dir, partitions_root, p, state, self.optimizer,
                                                    self.dim))
        return files

    def load(self, ckpt_dir: str | Path, partitions_root: str | Path) -> None:
        """Partition by partition (``checkpoint.load_partition_rows``), so at most one partition's
        rows are held besides the store."""
        book = self._book(partitions_root)
        names = self._state_names()
        for p in range(book.num_parts):
            rows = ckpt.load_partition_rows(ckpt_dir, partitions_root, p, names,
                                            optimizer=self.optimizer, dim=self.dim)
            a, b = int(book.gid_start[p]), int(book.gid_end[p])
            for n in names:
                getattr(self, n)[a:b].copy_(torch.from_numpy(rows[n]).to(self.device))


def _log(beta: float) -> float:
    """log(beta), with log(0) = -inf (then 1 - 0**t = 1 for t >= 1, as expm1(-inf) = -1)."""
    return math.log(beta) if beta > 0 else -math.inf


def _map_file(path: str, shape: list[int], dtype: torch.dtype, create: bool = True) -> torch.Tensor:
    """A tensor over the file ``path``, shared with every process mapping it. ``create=False``
    (attaching to another process's rows): the file must exist with exactly that size, since
    ``torch.from_file`` would silently create a missing file, or grow a short one, as zeros."""
    numel = int(np.prod(shape)) if shape else 1
    if not create:
        want = numel * torch.empty(0, dtype=dtype).element_size()
        size = os.path.getsize(path)  # FileNotFoundError if it is gone
        if size != want:
            raise ValueError(f"{path} has {size} bytes, expected {want}")
    return torch.from_file(path, shared=True, size=numel, dtype=dtype).view(*shape)
