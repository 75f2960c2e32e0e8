"""The sharded parameter server: ``PSShard`` actors and the ``RayEmbeddingStore`` client.

One ``PSShard`` per partition holds the embedding rows of that partition's gid range
``[gid_start, gid_end)`` (its users, then its items) plus their optimizer state, in actor memory
(a ``LocalEmbeddingStore`` over local rows ``gid - gid_start``). Mutable tables never go to the
object store. An actor runs one method at a time, so each push (dedup, sum, optimizer step) is
atomic: concurrent pushes from several workers are serialised, none is lost.

``RayEmbeddingStore`` implements the ``EmbeddingStore`` interface, so the trainer does not change:

- ``pull``/``push`` deduplicate ids (and sum duplicate gradients) on the client, split the sorted
  unique ids by owner (contiguous gid ranges: one ``searchsorted`` per partition), send every
  shard's request before waiting on any, and merge the answers back in the caller's order;
- every wait has a deadline (``timeout_s``) and names the shard that missed it;
- ``max_pending_pushes > 0`` makes pushes asynchronous with bounded staleness: at most that many
  pushes are in flight. Ray runs one caller's calls to an actor in submission order, so a worker
  always reads its own writes; only other workers' updates can be that many pushes late;
- traffic counters: rows and bytes pulled/pushed, split into local (the shards of
  ``local_parts``, the partitions this worker trains on, co-located with it) and remote, and how many local rows
  went through shared memory (``*_rows_mapped``);
- co-located fast path (``attach_local``): a shard created with ``shm_dir`` keeps its rows and
  optimizer state in files on the node's tmpfs; the trainer of that partition maps them and pulls
  and pushes its own partition's rows as memory accesses, not calls, as DGL's trainers read their
  local KVStore partition through shared memory. Pushes from both paths take the shard's
  ``RowLock`` (``flock``), so they stay atomic with each other (tested: concurrent pushes add
  up); pulls do not lock (a row being updated may be read half-updated, as in Hogwild);
- checkpoints (format v2, ``distgnn.checkpoint``): ``save`` asks every shard in parallel to write
  its own two files (``PSShard.save_shard``: its users and items, orig ids from its own slice of
  the id maps) into the checkpoint's temporary directory, and ``load`` asks every shard to read its
  own rows (``PSShard.load_shard`` -> ``checkpoint.load_partition_rows``: just its two files when
  the checkpoint has the same partitions, else a re-keying by orig id bounded by the shard's own
  rows). No row goes through the client, and the files are those ``LocalEmbeddingStore`` writes,
  so a checkpoint moves between the local and the Ray backend and between numbers of shards.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import ray
import torch

from distgnn import checkpoint as ckpt
from distgnn import format as fmt
from distgnn.embedding_store import EmbeddingStore, LocalEmbeddingStore, OPTIMIZERS
from distgnn.errors import UserError
from distgnn.ray_runtime.cluster import DEFAULT_CALL_TIMEOUT_S, get_with_deadline, wait_ready

ID_BYTES = 8
VALUE_BYTES = 4


def state_names(optimizer: str) -> list[str]:
    return ckpt.state_names(optimizer)


def shard_seed(seed: int, part_id: int) -> int:
    """Each shard initialises its rows from its own generator (no global table is ever built)."""
    return (int(seed) * 1_000_003 + 7919 * (int(part_id) + 1)) % (2 ** 63 - 1)


def _tensor(arr: np.ndarray) -> torch.Tensor:
    """Zero-copy tensor over a (possibly read-only, object-store backed) numpy array; callers
    only read from it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)


class RowLock:
    """An exclusive lock on a shard's rows shared by the shard actor and its co-located trainer
    (``flock`` on a file next to the shared rows): pushes, loads and resets are atomic between
    the two processes. Without a file (rows not shared) it is a no-op: an actor runs one method at
    a time anyway."""

    def __init__(self, path: str | None):
        self.path = path
        self._fd: int | None = None

    def __enter__(self) -> "RowLock":
        if self.path is not None:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def __getstate__(self):
        return {"path": self.path, "_fd": None}


class _PSShard:
    """Embedding rows ``[gid_start, gid_end)`` with their optimizer state (see module doc)."""

    def __init__(self, part_id: int, gid_start: int, gid_end: int, dim: int, optimizer: str = "adam",
                 lr: float = 0.01, init_std: float = 0.1, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, seed: int = 0, num_threads: int = 1,
                 crash_after_pushes: int | None = None, shm_dir: str | None = None):
        import ray as _ray

        torch.set_num_threads(max(1, int(num_threads)))
        self.part_id, self.gid_start, self.gid_end = int(part_id), int(gid_start), int(gid_end)
        self._init_args = dict(num_rows=self.gid_end - self.gid_start, dim=dim, optimizer=optimizer, lr=lr,
                               init_std=init_std, betas=betas, eps=eps, seed=shard_seed(seed, part_id))
        self.store = LocalEmbeddingStore(**self._init_args)
        self.shm = self._share(shm_dir)
        self.lock = RowLock(self.shm["lock"] if self.shm else None)
        # A shard Ray restarted after a crash starts from its initial rows (the trainers then reload
        # the last checkpoint); injected faults fire once, not again in the restarted actor.
        with warnings.catch_warnings():  # Ray's own property reads a deprecated attribute
            warnings.simplefilter("ignore")
            self.restarted = bool(_ray.get_runtime_context().was_current_actor_reconstructed)
        self.crash_after_pushes = None if self.restarted else crash_after_pushes
        self.stats = {"pull_calls": 0, "pull_rows": 0, "push_calls": 0, "push_rows": 0,
                      "busy_s": 0.0}

    def _share(self, shm_dir: str | None) -> dict | None:
        """Move the rows and optimizer state to files in ``shm_dir`` (a tmpfs such as /dev/shm), so
        the trainer on this node reads and updates them in place (``RayEmbeddingStore``), if the
        tmpfs has room; else the shard keeps them private and every access is a call."""
        import ray as _ray

        if not shm_dir:
            return None
        from distgnn import atomic

        for d in atomic.sweep_shm(os.path.dirname(shm_dir)):  # killed jobs' leftovers on this node
            print(f"PSShard {self.part_id}: removed stale shared memory {d}", file=sys.stderr)
        need = sum(t.numel() * t.element_size() for t in self.store.state_dict().values())
        try:
            os.makedirs(shm_dir, exist_ok=True)
            if shutil.disk_usage(shm_dir).free < 1.5 * need:
                print(f"PSShard {self.part_id}: {shm_dir} has no room for {need / 2**20:.0f} MiB; "
                      f"the co-located trainer will use calls", file=sys.stderr)
                return None
        except OSError:
            return None
        prefix = os.path.join(shm_dir, f"ps{self.part_id}-{os.getpid()}")
        spec = self.store.move_to_files(prefix)
        return {"prefix": prefix, "spec": spec, "lock": prefix + ".lock",
                "node_id": _ray.get_runtime_context().get_node_id(), "gid_start": self.gid_start}

    def shm_spec(self) -> dict | None:
        """Where the shared rows are, and the optimizer settings to update them with."""
        if self.shm is None:
            return None
        return {**self.shm, "lr": self.store.lr, "betas": list(self.store.betas), "eps": self.store.eps}

    def close(self) -> None:
        """Remove this shard's shared files (the driver calls it before killing the shard)."""
        if self.shm:
            for path, _, _ in self.shm["spec"].values():
                with contextlib.suppress(OSError):
                    os.remove(path)
            with contextlib.suppress(OSError):
                os.remove(self.shm["lock"])

    def _local(self, gids: np.ndarray) -> torch.Tensor:
        gids = np.asarray(gids, dtype=np.int64)
        if len(gids) and (gids.min() < self.gid_start or gids.max() >= self.gid_end):
            bad = gids[(gids < self.gid_start) | (gids >= self.gid_end)][:5]
            raise ValueError(f"PSShard {self.part_id} owns gids [{self.gid_start}, {self.gid_end}), "
                             f"got {bad.tolist()}")
        return _tensor(gids - self.gid_start)

    def pull(self, gids: np.ndarray) -> np.ndarray:
        t = time.perf_counter()
        rows = self.store.pull(self._local(gids)).numpy()
        self.stats["pull_calls"] += 1
        self.stats["pull_rows"] += len(rows)
        self.stats["busy_s"] += time.perf_counter() - t
        return rows

    def push(self, gids: np.ndarray, grads: np.ndarray, unique: bool = False) -> int:
        t = time.perf_counter()
        with self.lock:
            self.store.push(self._local(gids), _tensor(np.asarray(grads, dtype=np.float32)), unique=unique)
        self.stats["push_calls"] += 1
        self.stats["push_rows"] += len(gids)
        self.stats["busy_s"] += time.perf_counter() - t
        if self.crash_after_pushes is not None and self.stats["push_calls"] >= self.crash_after_pushes:
            os._exit(17)  # fault injection for restart tests
        return len(gids)

    def set_lr(self, lr: float) -> None:
        self.store.lr = float(lr)

    def reset(self) -> None:
        """Back to the initial rows and optimizer state (a restart before the first checkpoint);
        written in place, since a co-located trainer may have the rows mapped."""
        with self.lock:
            self.store.load_state_dict(LocalEmbeddingStore(**self._init_args).state_dict())

    def _check_partitions(self, partitions_root: str) -> None:
        """This shard must be partition ``part_id`` of ``partitions_root`` (same gid range)."""
        book = fmt.PartitionBook.from_manifest(fmt.load_manifest(partitions_root))
        if (self.part_id >= book.num_parts or int(book.gid_start[self.part_id]) != self.gid_start
                or int(book.gid_end[self.part_id]) != self.gid_end):
            raise UserError(f"PSShard {self.part_id} holds gids [{self.gid_start}, {self.gid_end}), which "
                            f"is not partition {self.part_id} of {partitions_root}; use the partition "
                            f"directory the shards were created for")

    def save_shard(self, ckpt_dir: str, partitions_root: str) -> dict[str, dict]:
        """Write this shard's checkpoint files, ``embeddings/{user,item}-PPPPP.parquet`` (each
        atomically, fsynced), into the checkpoint's temporary directory ``ckpt_dir``; returns
        their ``{relpath: {"rows", "bytes", "sha256"}}``. Orig ids come from this partition's own
        slice of the id maps: the shard never reads more than its own rows."""
        self._check_partitions(partitions_root)
        with self.lock:  # a consistent snapshot against co-located pushes
            state = {n: getattr(self.store, n).numpy() for n in self.store._state_names()}
            return ckpt.write_partition_files(ckpt_dir, partitions_root, self.part_id, state,
                                              self.store.optimizer, self.store.dim)

    def load_shard(self, ckpt_path: str, partitions_root: str) -> int:
        """This shard's rows and optimizer state from checkpoint ``ckpt_path`` (v1 or v2, any
        partitioning; ``checkpoint.load_partition_rows``), written in place (a co-located trainer
        may have them mapped); returns the number of rows."""
        self._check_partitions(partitions_root)
        names = self.store._state_names()
        rows = ckpt.load_partition_rows(ckpt_path, partitions_root, self.part_id, names,
                                        optimizer=self.store.optimizer, dim=self.store.dim)
        with self.lock:
            for n in names:
                getattr(self.store, n).copy_(_tensor(rows[n]))
        return self.gid_end - self.gid_start

    def state_dict(self) -> dict[str, np.ndarray]:
        return {n: v.numpy() for n, v in self.store.state_dict().items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        with self.lock:
            self.store.load_state_dict({n: _tensor(np.asarray(v)) for n, v in state.items()})

    def counters(self) -> dict[str, Any]:
        """Work served, and this process's memory (``distgnn.stages.process_memory``: pid, peak
        RSS) and node, for the job's per-process memory report."""
        import ray as _ray

        from distgnn.stages import process_memory

        return dict(self.stats, part_id=self.part_id, node_id=_ray.get_runtime_context().get_node_id(),
                    **process_memory())

    def info(self) -> dict[str, Any]:
        import ray as _ray

        return {"part_id": self.part_id, "gid_start": self.gid_start, "gid_end": self.gid_end,
                "dim": self.store.dim, "optimizer": self.store.optimizer, "lr": self.store.lr,
                "restarted": self.restarted, "shared_memory": self.shm is not None,
                "node_id": _ray.get_runtime_context().get_node_id(), "pid": os.getpid()}


# A crashed shard is restarted once by Ray (calls in flight fail; the trainers' restart reloads the
# last checkpoint into every shard); calls are never retried, since a retried push would apply twice.
PSShard = ray.remote(num_cpus=0, max_restarts=1, max_task_retries=0)(_PSShard)


def create_ps_shards(book: fmt.PartitionBook, dim: int, optimizer: str = "adam", lr: float = 0.01,
                     init_std: float = 0.1, betas: tuple[float, float] = (0.9, 0.999),
                     eps: float = 1e-8, seed: int = 0,
                     scheduling_strategies: Sequence[Any] | None = None, num_cpus: float = 0,
                     timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
                     crash: tuple[int, int] | None = None, shm_dir: str | None = None) -> list:
    """One ``PSShard`` per partition of ``book``; returns their handles once all are constructed.

    ``scheduling_strategies[p]`` places shard ``p`` (e.g. ``cluster.bundle_strategy(pg, p)`` to share
    a placement-group bundle with the partition's ``GraphShard``). ``crash=(part, n)``: shard
    ``part`` exits after its ``n``-th push (fault injection)."""
    if optimizer not in OPTIMIZERS:
        raise UserError(f"embedding optimizer {optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
    shards = []
    for p in range(book.num_parts):
        opts: dict[str, Any] = {"num_cpus": num_cpus}
        if scheduling_strategies is not None and scheduling_strategies[p] is not None:
            opts["scheduling_strategy"] = scheduling_strategies[p]
        shards.append(PSShard.options(**opts).remote(
            p, int(book.gid_start[p]), int(book.gid_end[p]), dim, optimizer=optimizer, lr=lr,
            init_std=init_std, betas=betas, eps=eps, seed=seed,
            crash_after_pushes=crash[1] if crash is not None and crash[0] == p else None,
            shm_dir=shm_dir))
    wait_ready(shards, timeout_s, f"starting {len(shards)} parameter-server shards")
    return shards


class RayEmbeddingStore(EmbeddingStore):
    """``EmbeddingStore`` client over one ``PSShard`` per partition (see module doc)."""

    def __init__(self, shards: Sequence, book: fmt.PartitionBook, dim: int, optimizer: str = "adam",
                 local_parts: Sequence[int] = (), timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
                 max_pending_pushes: int = 0, lr: float | None = None):
        if len(shards) != book.num_parts:
            raise ValueError(f"{len(shards)} shards for a partition book of {book.num_parts} parts")
        if optimizer not in OPTIMIZERS:
            raise UserError(f"embedding optimizer {optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        self.shards = list(shards)
        self.book = book
        self.num_rows, self.dim = book.num_nodes, int(dim)
        self.optimizer = optimizer
        self.local_parts = tuple(int(p) for p in local_parts)
        self.timeout_s = float(timeout_s)
        self.max_pending_pushes = int(max_pending_pushes)
        self._pending: list[tuple[list, list[str]]] = []
        self._lr = lr  # the value the shards were created with (None: unknown)
        # part -> (its rows mapped from the shard's shared memory, the shard's row lock, gid_start)
        self._views: dict[int, tuple[LocalEmbeddingStore, RowLock, int]] = {}
        self.reset_counters()

    def attach_local(self) -> bool:
        """Map the rows of each of ``local_parts`` whose shard shares them on this node: then pulls
        and pushes of the trainer's own partitions' rows are memory accesses (under the shard's
        row lock), not calls. True if every local partition was mapped."""
        import ray as _ray

        if not self.local_parts:
            return False
        specs = self._wait([self.shards[p].shm_spec.remote() for p in self.local_parts],
                           [f"PSShard {p}" for p in self.local_parts], "shm_spec")
        node = _ray.get_runtime_context().get_node_id()
        for p, spec in zip(self.local_parts, specs):
            if spec and spec["node_id"] == node:
                view = LocalEmbeddingStore.attach(spec["spec"], self.optimizer, spec["lr"],
                                                  tuple(spec["betas"]), spec["eps"])
                self._views[p] = (view, RowLock(spec["lock"]), int(spec["gid_start"]))
        return len(self._views) == len(self.local_parts)

    # --- learning rate (the trainer sets it every epoch: lr_decay) ----------------------------
    @property
    def lr(self) -> float | None:
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        """Every worker sets the same per-epoch value; shards are only called when it changes."""
        if self._lr is not None and float(value) == self._lr:
            return
        self.flush()
        self._wait([s.set_lr.remote(float(value)) for s in self.shards],
                   [f"PSShard {p}" for p in range(len(self.shards))], "set_lr")
        self._lr = float(value)
        for view, _, _ in self._views.values():
            view.lr = self._lr

    def reset(self) -> None:
        """Every shard back to its initial rows and optimizer state."""
        self.flush()
        self._wait([s.reset.remote() for s in self.shards],
                   [f"PSShard {p}" for p in range(len(self.shards))], "reset")

    # Shipped to Ray Train workers: handles and the book travel, in-flight state does not.
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_pending"] = []
        state["_counters"] = None
        state["_views"] = {}  # mapped again on the receiving node (attach_local)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.reset_counters()

    # --- counters -------------------------------------------------------------------------
    def reset_counters(self) -> None:
        keys = [f"{op}_{what}_{where}" for op in ("pull", "push") for what in ("rows", "bytes")
                for where in ("local", "remote")]
        self._counters = dict.fromkeys(keys, 0)
        self._counters.update(pull_calls=0, push_calls=0, requests_remote=0, wait_s=0.0,
                              pull_rows_mapped=0, push_rows_mapped=0)

    def counters(self) -> dict[str, float]:
        return dict(self._counters)

    def _count(self, op: str, part: int, rows: int) -> None:
        where = "local" if part in self.local_parts else "remote"
        self._counters[f"{op}_rows_{where}"] += rows
        self._counters[f"{op}_bytes_{where}"] += rows * (ID_BYTES + self.dim * VALUE_BYTES)
        if where == "remote":
            self._counters["requests_remote"] += 1

    # --- routing --------------------------------------------------------------------------
    def _split(self, uniq: np.ndarray) -> list[tuple[int, int, int]]:
        """(part, lo, hi) for the non-empty runs of sorted unique gids owned by each partition."""
        if len(uniq) and (uniq[0] < 0 or uniq[-1] >= self.num_rows):
            raise ValueError(f"gids must be in [0, {self.num_rows}), got {uniq[0]}..{uniq[-1]}")
        lo = np.searchsorted(uniq, self.book.gid_start, side="left")
        hi = np.searchsorted(uniq, self.book.gid_end, side="left")
        runs = [(p, int(a), int(b)) for p, (a, b) in enumerate(zip(lo, hi)) if b > a]
        if sum(b - a for _, a, b in runs) != len(uniq):
            raise ValueError("some gids fall in no partition's range; the partition book is not contiguous")
        return runs

    def _wait(self, refs: list, names: list[str], what: str):
        t = time.perf_counter()
        try:
            return get_with_deadline(refs, self.timeout_s, what, names)
        finally:
            self._counters["wait_s"] += time.perf_counter() - t

    # --- pull / push ----------------------------------------------------------------------
    def pull(self, gids: torch.Tensor) -> torch.Tensor:
        g = gids.detach().cpu().numpy().astype(np.int64, copy=False).reshape(-1)
        uniq, inverse = np.unique(g, return_inverse=True)
        runs = self._split(uniq)
        mapped = [r for r in runs if r[0] in self._views]
        remote = [r for r in runs if r[0] not in self._views]
        refs = [self.shards[p].pull.remote(uniq[lo:hi]) for p, lo, hi in remote]  # all sent first
        out = np.empty((len(uniq), self.dim), dtype=np.float32)
        for (p, lo, hi) in runs:
            self._count("pull", p, hi - lo)
        for (p, lo, hi) in mapped:  # meanwhile, the own partitions' rows from shared memory
            view, _, start = self._views[p]
            out[lo:hi] = view.pull(torch.from_numpy(uniq[lo:hi] - start)).numpy()
            self._counters["pull_rows_mapped"] += hi - lo
        results = self._wait(refs, [f"PSShard {p}" for p, _, _ in remote], f"pull of {len(uniq)} rows")
        for (p, lo, hi), rows in zip(remote, results):
            out[lo:hi] = rows
        self._counters["pull_calls"] += 1
        return torch.from_numpy(out)[torch.from_numpy(inverse)]

    def push(self, gids: torch.Tensor, grads: torch.Tensor, unique: bool = False) -> None:
        gids = gids.detach().cpu().reshape(-1).to(torch.int64)
        grads = grads.detach().cpu().to(torch.float32)
        if not unique:
            gids, inverse = torch.unique(gids, return_inverse=True)
            summed = torch.zeros(len(gids), self.dim, dtype=torch.float32)
            summed.index_add_(0, inverse, grads)
            grads = summed
        else:
            order = torch.argsort(gids)
            gids, grads = gids[order], grads[order]
        g, v = gids.numpy(), grads.numpy()
        runs = self._split(g)
        mapped = [r for r in runs if r[0] in self._views]
        remote = [r for r in runs if r[0] not in self._views]
        refs = [self.shards[p].push.remote(g[lo:hi], v[lo:hi], True) for p, lo, hi in remote]
        for (p, lo, hi) in runs:
            self._count("push", p, hi - lo)
        for (p, lo, hi) in mapped:  # own partitions' rows, in place, atomic with the shard's pushes
            view, lock, start = self._views[p]
            with lock:
                view.push(torch.from_numpy(g[lo:hi] - start), grads[lo:hi], unique=True)
            self._counters["push_rows_mapped"] += hi - lo
        self._counters["push_calls"] += 1
        self._pending.append((refs, [f"PSShard {p}" for p, _, _ in remote]))
        while len(self._pending) > self.max_pending_pushes:
            r, names = self._pending.pop(0)
            self._wait(r, names, f"push of {len(g)} rows")

    def flush(self) -> None:
        """Wait for every in-flight asynchronous push."""
        while self._pending:
            r, names = self._pending.pop(0)
            self._wait(r, names, "push")

    # --- state ----------------------------------------------------------------------------
    def _state_names(self) -> list[str]:
        return state_names(self.optimizer)

    def state_dict(self) -> dict[str, torch.Tensor]:
        self.flush()
        parts = self._wait([s.state_dict.remote() for s in self.shards],
                           [f"PSShard {p}" for p in range(len(self.shards))], "state_dict")
        return {n: torch.from_numpy(np.concatenate([st[n] for st in parts])) for n in self._state_names()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        names = self._state_names()
        if sorted(state) != sorted(names):
            raise UserError(f"embedding state has {sorted(state)}, expected {sorted(names)} "
                            f"(optimizer {self.optimizer}); the checkpoint is from another config")
        for n in names:
            want = (self.num_rows, self.dim) if n != "step" else (self.num_rows,)
            if tuple(state[n].shape) != want:
                raise UserError(f"embedding state {n} has shape {tuple(state[n].shape)}, expected "
                                f"{want}; the checkpoint is from another config or data")
        self.flush()
        refs = []
        for p, s in enumerate(self.shards):
            a, b = int(self.book.gid_start[p]), int(self.book.gid_end[p])
            refs.append(s.load_state_dict.remote({n: state[n][a:b].cpu().numpy() for n in names}))
        self._wait(refs, [f"PSShard {p}" for p in range(len(refs))], "load_state_dict")

    # --- checkpoints: every shard writes and reads its own files -------------------------------
    def save(self, ckpt_dir: str | Path, partitions_root: str | Path) -> dict[str, dict]:
        """Every shard writes its own files into ``ckpt_dir`` in parallel (``PSShard.save_shard``);
        returns their merged ``files`` records. No row passes through this client."""
        self.flush()
        ckpt_dir, root = str(Path(ckpt_dir).resolve()), str(Path(partitions_root).resolve())
        records = self._wait([s.save_shard.remote(ckpt_dir, root) for s in self.shards],
                             [f"PSShard {p}" for p in range(len(self.shards))], "checkpoint save")
        files: dict[str, dict] = {}
        for rec in records:
            files.update(rec)
        return files

    def load(self, ckpt_dir: str | Path, partitions_root: str | Path) -> None:
        """Every shard reads its own rows of checkpoint ``ckpt_dir`` in parallel
        (``PSShard.load_shard``): from a checkpoint of any backend or number of shards."""
        self.flush()
        ckpt_dir, root = str(Path(ckpt_dir).resolve()), str(Path(partitions_root).resolve())
        self._wait([s.load_shard.remote(ckpt_dir, root) for s in self.shards],
                   [f"PSShard {p}" for p in range(len(self.shards))], "checkpoint load")

    # --- diagnostics ----------------------------------------------------------------------
    def shard_counters(self) -> list[dict]:
        return self._wait([s.counters.remote() for s in self.shards],
                          [f"PSShard {p}" for p in range(len(self.shards))], "counters")
