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
  so a checkpoint moves between the local and the Ray backend and between numbers of shards;
- fencing (docs/architecture.md D30): every shard incarnation has a generation (how often Ray
  restarted it). A restarted shard reloads its rows and optimizer state from the run's last
  committed checkpoint (not its initial values), names its shared-memory files by its generation
  and removes those of the incarnation before it. Every client call names the generation the
  client expects; a shard refuses any other with ``StaleGenerationError``, which makes the worker
  fail and the job roll back to the last checkpoint. ``check_generations`` is the health check
  (with a deadline) run before a checkpoint is written, so a shard that crashed while idle is
  found before its fresh rows could be saved.
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
from distgnn.errors import RayCallError, StaleGenerationError, UserError
from distgnn.ray_runtime.cluster import (DEFAULT_CALL_TIMEOUT_S, actor_restarts, get_with_deadline,
                                         placement_options, wait_ready, workload_env)

ID_BYTES = 8
VALUE_BYTES = 4
# Test hook: a shard believes its tmpfs has this many bytes free (e.g. 0: /dev/shm is full). The
# driver forwards DISTGNN_TEST_* variables to the shards (``create_ps_shards``).
SHM_FREE_ENV = "DISTGNN_TEST_SHM_FREE_BYTES"


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
                 crash_after_pushes: int | None = None, shm_dir: str | None = None,
                 run_dir: str | None = None, partitions_root: str | None = None):
        torch.set_num_threads(max(1, int(num_threads)))
        self.part_id, self.gid_start, self.gid_end = int(part_id), int(gid_start), int(gid_end)
        self._init_args = dict(num_rows=self.gid_end - self.gid_start, dim=dim, optimizer=optimizer, lr=lr,
                               init_std=init_std, betas=betas, eps=eps, seed=shard_seed(seed, part_id))
        self.run_dir, self.partitions_root = run_dir, partitions_root
        # This incarnation's number: clients name it in every call (fencing, D30).
        self.generation = actor_restarts()
        self.restarted = self.generation > 0
        self.store = LocalEmbeddingStore(**self._init_args)
        self.loaded_from: str | None = None  # the checkpoint a restarted shard reloaded
        self.load_error: str | None = None
        if self.restarted:
            self._reload_last_checkpoint()
        self.shm_fallback: str | None = None  # why the rows are not in shared memory, if asked to be
        self.shm = self._share(shm_dir)
        self.lock = RowLock(self.shm["lock"] if self.shm else None)
        # Injected faults fire once, not again in the restarted actor.
        self.crash_after_pushes = None if self.restarted else crash_after_pushes
        self.stats = {"pull_calls": 0, "pull_rows": 0, "push_calls": 0, "push_rows": 0,
                      "busy_s": 0.0}

    def _reload_last_checkpoint(self) -> None:
        """A restarted shard's rows: the run's last committed checkpoint, not the initial rows, so a
        crash while idle cannot make the next checkpoint save fresh rows. Without a checkpoint (or
        without a run directory) the initial rows stay and ``loaded_from`` is None: the trainers'
        rollback re-initialises every shard (``reset``)."""
        if not (self.run_dir and self.partitions_root):
            return
        last = ckpt.latest(self.run_dir)
        if last is None:
            return
        try:
            self._load_rows(str(last), self.partitions_root)
            self.loaded_from = last.name
        except (OSError, UserError, ValueError) as exc:  # e.g. pruned while read: the rollback reloads
            self.load_error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        print(f"PSShard {self.part_id}: generation {self.generation} (restarted), rows from "
              f"{self.loaded_from or 'its initial values'}"
              + (f" ({self.load_error})" if self.load_error else ""), file=sys.stderr, flush=True)

    def _fence(self, gen: int | None, call: str) -> None:
        """Refuse a call meant for another incarnation (``gen`` None: an unfenced caller, tests)."""
        if gen is not None and int(gen) != self.generation:
            now = (f"rows reloaded from {self.loaded_from}" if self.loaded_from
                   else "initial rows, no checkpoint reloaded")
            raise StaleGenerationError(
                f"PSShard {self.part_id} is generation {self.generation} ({now}) but the {call} "
                f"expected generation {gen}: the shard restarted since the caller synced; roll back "
                f"to the last checkpoint")

    def _share(self, shm_dir: str | None) -> dict | None:
        """Move the rows and optimizer state to files in ``shm_dir`` (a tmpfs such as /dev/shm), so
        the trainer on this node reads and updates them in place (``RayEmbeddingStore``), if the
        tmpfs has room; else the shard keeps them private, every access is a call, and
        ``shm_fallback`` says why (the trainer's warning record carries it to the driver).

        Files are named ``ps<part>-g<generation>-<pid>.<tensor>``: an old incarnation's files are
        never reused by a new one, and are removed here (a trainer still mapping them writes into
        an orphan the job rolls back from)."""
        import ray as _ray

        if not shm_dir:
            return None
        from distgnn import atomic

        for d in atomic.sweep_shm(os.path.dirname(shm_dir)):  # killed jobs' leftovers on this node
            print(f"PSShard {self.part_id}: removed stale shared memory {d}", file=sys.stderr)
        need = sum(t.numel() * t.element_size() for t in self.store.state_dict().values())
        prefix = os.path.join(shm_dir, f"ps{self.part_id}-g{self.generation}-{os.getpid()}")
        try:
            os.makedirs(shm_dir, exist_ok=True)
            self._remove_old_generations(shm_dir, prefix)
            free = shutil.disk_usage(shm_dir).free
            if os.environ.get(SHM_FREE_ENV):
                free = int(os.environ[SHM_FREE_ENV])
            if free < 1.5 * need:
                self.shm_fallback = (f"PSShard {self.part_id}: {shm_dir} has {free / 2**20:.1f} MiB free, "
                                     f"less than 1.5 x its {need / 2**20:.1f} MiB of rows")
        except OSError as exc:
            self.shm_fallback = f"PSShard {self.part_id}: {shm_dir} is unusable ({exc.strerror or exc})"
        if self.shm_fallback:
            print(f"{self.shm_fallback}; the co-located trainer will use calls", file=sys.stderr)
            return None
        spec = self.store.move_to_files(prefix)
        return {"prefix": prefix, "spec": spec, "lock": prefix + ".lock", "generation": self.generation,
                "node_id": _ray.get_runtime_context().get_node_id(), "gid_start": self.gid_start}

    def _remove_old_generations(self, shm_dir: str, own: str, keep_own: bool = True) -> None:
        """Remove this partition's shared files of other incarnations (any generation) in
        ``shm_dir`` (a crashed incarnation never ran ``close``), and with ``keep_own=False`` this
        incarnation's too (files named ``own.*``)."""
        import glob

        for path in glob.glob(os.path.join(shm_dir, f"ps{self.part_id}-g*")):
            mine = path.startswith(own + ".")
            if mine and keep_own:
                continue
            with contextlib.suppress(OSError):
                os.remove(path)
                if not mine:
                    print(f"PSShard {self.part_id}: removed {path} of an earlier incarnation",
                          file=sys.stderr)

    def shm_spec(self, gen: int | None = None) -> dict | None:
        """Where the shared rows are, and the optimizer settings to update them with."""
        self._fence(gen, "shm_spec")
        if self.shm is None:
            return None
        return {**self.shm, "lr": self.store.lr, "betas": list(self.store.betas), "eps": self.store.eps}

    def close(self) -> None:
        """Remove this shard's shared files, and any earlier incarnation's of its partition (the
        driver calls it before killing the shard)."""
        if self.shm:
            shm_dir = os.path.dirname(self.shm["prefix"])
            self._remove_old_generations(shm_dir, self.shm["prefix"], keep_own=False)
            # the job's directory on this node too, once its last shard here has closed: the
            # driver removes it only on its own node (found by the two-host run, launch/multihost.py)
            with contextlib.suppress(OSError):
                os.rmdir(shm_dir)

    def _local(self, gids: np.ndarray) -> torch.Tensor:
        gids = np.asarray(gids, dtype=np.int64)
        if len(gids) and (gids.min() < self.gid_start or gids.max() >= self.gid_end):
            bad = gids[(gids < self.gid_start) | (gids >= self.gid_end)][:5]
            raise ValueError(f"PSShard {self.part_id} owns gids [{self.gid_start}, {self.gid_end}), "
                             f"got {bad.tolist()}")
        return _tensor(gids - self.gid_start)

    def pull(self, gids: np.ndarray, gen: int | None = None) -> np.ndarray:
        self._fence(gen, "pull")
        t = time.perf_counter()
        rows = self.store.pull(self._local(gids)).numpy()
        self.stats["pull_calls"] += 1
        self.stats["pull_rows"] += len(rows)
        self.stats["busy_s"] += time.perf_counter() - t
        return rows

    def push(self, gids: np.ndarray, grads: np.ndarray, unique: bool = False, gen: int | None = None) -> int:
        self._fence(gen, "push")
        t = time.perf_counter()
        with self.lock:
            self.store.push(self._local(gids), _tensor(np.asarray(grads, dtype=np.float32)), unique=unique)
        self.stats["push_calls"] += 1
        self.stats["push_rows"] += len(gids)
        self.stats["busy_s"] += time.perf_counter() - t
        if self.crash_after_pushes is not None and self.stats["push_calls"] >= self.crash_after_pushes:
            if self.run_dir:  # the restarted chief names the cause in its fault record
                from distgnn.ray_runtime import faults
                faults.write_note(self.run_dir, f"ps{self.part_id}", what=f"injected fault: PSShard "
                                  f"{self.part_id} exited after {self.stats['push_calls']} pushes")
            os._exit(17)  # fault injection for restart tests
        return len(gids)

    def set_lr(self, lr: float, gen: int | None = None) -> None:
        self._fence(gen, "set_lr")
        self.store.lr = float(lr)

    def reset(self, gen: int | None = None) -> None:
        """Back to the initial rows and optimizer state (a restart before the first checkpoint);
        written in place, since a co-located trainer may have the rows mapped."""
        self._fence(gen, "reset")
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

    def save_shard(self, ckpt_dir: str, partitions_root: str, gen: int | None = None) -> dict[str, dict]:
        """Write this shard's checkpoint files, ``embeddings/{user,item}-PPPPP.parquet`` (each
        atomically, fsynced), into the checkpoint's temporary directory ``ckpt_dir``; returns
        their ``{relpath: {"rows", "bytes", "sha256"}}``. Orig ids come from this partition's own
        slice of the id maps: the shard never reads more than its own rows. Fenced: a restarted
        shard never saves its reloaded (or fresh) rows into a checkpoint of the old incarnation's."""
        self._fence(gen, "checkpoint save")
        self._check_partitions(partitions_root)
        with self.lock:  # a consistent snapshot against co-located pushes
            state = {n: getattr(self.store, n).numpy() for n in self.store._state_names()}
            return ckpt.write_partition_files(ckpt_dir, partitions_root, self.part_id, state,
                                              self.store.optimizer, self.store.dim)

    def load_shard(self, ckpt_path: str, partitions_root: str, gen: int | None = None) -> int:
        """This shard's rows and optimizer state from checkpoint ``ckpt_path`` (v1 or v2, any
        partitioning; ``checkpoint.load_partition_rows``), written in place (a co-located trainer
        may have them mapped); returns the number of rows."""
        self._fence(gen, "checkpoint load")
        return self._load_rows(ckpt_path, partitions_root)

    def _load_rows(self, ckpt_path: str, partitions_root: str) -> int:
        self._check_partitions(partitions_root)
        names = self.store._state_names()
        rows = ckpt.load_partition_rows(ckpt_path, partitions_root, self.part_id, names,
                                        optimizer=self.store.optimizer, dim=self.store.dim)
        with (self.lock if hasattr(self, "lock") else contextlib.nullcontext()):
            for n in names:
                getattr(self.store, n).copy_(_tensor(rows[n]))
        return self.gid_end - self.gid_start

    def state_dict(self, gen: int | None = None) -> dict[str, np.ndarray]:
        self._fence(gen, "state_dict")
        return {n: v.numpy() for n, v in self.store.state_dict().items()}

    def load_state_dict(self, state: dict[str, np.ndarray], gen: int | None = None) -> None:
        self._fence(gen, "load_state_dict")
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
                "restarted": self.restarted, "generation": self.generation,
                "loaded_from": self.loaded_from, "load_error": self.load_error,
                "shared_memory": self.shm is not None, "shm_fallback": self.shm_fallback,
                "node_id": _ray.get_runtime_context().get_node_id(), "pid": os.getpid()}

    def health(self) -> dict[str, Any]:
        """The health check's answer (cheap: no rows): generation and where this incarnation runs."""
        import ray as _ray

        return {"part_id": self.part_id, "generation": self.generation, "loaded_from": self.loaded_from,
                "node_id": _ray.get_runtime_context().get_node_id(), "pid": os.getpid()}


# A crashed shard (or one on a lost node) is restarted by Ray, on another node if need be, under a
# new generation that reloads the last checkpoint; calls in flight fail, later ones naming the old
# generation are refused (fencing). Calls are never retried: a retried push would apply twice.
PS_MAX_RESTARTS = 3
PSShard = ray.remote(num_cpus=0, max_restarts=PS_MAX_RESTARTS, max_task_retries=0)(_PSShard)


def create_ps_shards(book: fmt.PartitionBook, dim: int, optimizer: str = "adam", lr: float = 0.01,
                     init_std: float = 0.1, betas: tuple[float, float] = (0.9, 0.999),
                     eps: float = 1e-8, seed: int = 0,
                     scheduling_strategies: Sequence[Any] | None = None, num_cpus: float = 0,
                     timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
                     crash: tuple[int, int] | None = None, shm_dir: str | None = None,
                     run_dir: str | Path | None = None, partitions_root: str | Path | None = None) -> list:
    """One ``PSShard`` per partition of ``book``; returns their handles once all are constructed.

    ``scheduling_strategies[p]`` places shard ``p`` (e.g. ``cluster.bundle_strategy(pg, p)`` to share
    a placement-group bundle with the partition's ``GraphShard``). ``crash=(part, n)``: shard
    ``part`` exits after its ``n``-th push (fault injection). ``run_dir`` and ``partitions_root``:
    where a restarted shard finds the last committed checkpoint to reload (without them it comes
    back with its initial rows). ``DISTGNN_TEST_*`` variables of this process reach the shards."""
    if optimizer not in OPTIMIZERS:
        raise UserError(f"embedding optimizer {optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
    test_env = {k: v for k, v in os.environ.items() if k.startswith("DISTGNN_TEST_")}
    shards = []
    for p in range(book.num_parts):
        opts: dict[str, Any] = {"num_cpus": num_cpus}
        if scheduling_strategies is not None and scheduling_strategies[p] is not None:
            opts.update(placement_options(scheduling_strategies[p]))
        opts["runtime_env"] = {"env_vars": {**workload_env(), **test_env}}
        shards.append(PSShard.options(**opts).remote(
            p, int(book.gid_start[p]), int(book.gid_end[p]), dim, optimizer=optimizer, lr=lr,
            init_std=init_std, betas=betas, eps=eps, seed=seed,
            crash_after_pushes=crash[1] if crash is not None and crash[0] == p else None,
            shm_dir=shm_dir, run_dir=str(Path(run_dir).resolve()) if run_dir else None,
            partitions_root=str(Path(partitions_root).resolve()) if partitions_root else None))
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
        # each shard's generation as this process last learned it (None: not synced yet); every
        # call names it (fencing, D30)
        self._gens: list[int] | None = None
        self.shm_fallbacks: dict[int, str] = {}  # part -> why its rows could not be mapped
        # (rank, world size) of a Ray Train worker whose pushes take turns (``order_pushes``)
        self._turns: tuple[int, int] | None = None
        self.reset_counters()

    def order_pushes(self, rank: int, world_size: int) -> None:
        """Reproducible runs (``embedding.ordered_pushes``): every push of a step is applied in
        turn order (``rank`` is this worker's turn: the Ray worker passes its partition group, so
        the order does not depend on placement), with a barrier (the Ray Train process group's)
        after each worker's turn, so
        the rows every worker pulls next, and the order in which one row's updates are applied,
        no longer depend on timing. Adam's and Adagrad's updates do not commute, and a worker's
        next pull could otherwise see another's push or not: with two workers, identical runs
        reached Recall@20 values 0.008 apart. Every worker pushes once per step (equal steps), so
        the barriers line up."""
        self._turns = (int(rank), int(world_size))

    # --- generations (fencing) ----------------------------------------------------------------
    def _names(self) -> list[str]:
        return [f"PSShard {p}" for p in range(len(self.shards))]

    def sync_generations(self) -> list[dict]:
        """Learn every shard's current generation (one ``info`` call each, with the deadline); a
        worker does this when it starts, before any row moves, and the chief's rollback then makes
        every shard's rows the checkpoint's. Mapped views are dropped (``attach_local`` maps the
        current generation's files again). Returns the shards' ``info``."""
        infos = get_with_deadline([s.info.remote() for s in self.shards], self.timeout_s,
                                  "parameter-server generations", self._names())
        self._gens = [int(i["generation"]) for i in infos]
        self._drop_views()
        lrs = {float(i["lr"]) for i in infos}
        self._lr = lrs.pop() if len(lrs) == 1 else None  # a restarted shard has its initial lr
        return infos

    @property
    def generations(self) -> list[int]:
        if self._gens is None:
            self.sync_generations()
        return list(self._gens)

    def _gen(self, part: int) -> int:
        if self._gens is None:
            self.sync_generations()
        return self._gens[part]

    def check_generations(self, where: str) -> list[dict]:
        """The health check: every shard answers (``health``, within the call deadline) with the
        generation this client expects. A shard that crashed while idle, even if Ray restarted it
        since, is found here, before a checkpoint could save its reloaded or fresh rows: raises
        ``StaleGenerationError`` (or ``RayCallError`` for a dead or silent shard)."""
        self.flush()
        expected = self.generations
        answers = self._wait([s.health.remote() for s in self.shards], self._names(),
                             f"health check {where}")
        stale = [(p, a) for p, a in enumerate(answers) if int(a["generation"]) != expected[p]]
        if stale:
            self._drop_views()
            what = ", ".join(f"PSShard {p} is generation {a['generation']} (rows from "
                             f"{a['loaded_from'] or 'its initial values'}), expected {expected[p]}"
                             for p, a in stale)
            raise StaleGenerationError(f"health check {where}: {what}: restarted since this worker "
                                       f"synced; roll back to the last checkpoint")
        return answers

    def _drop_views(self, parts: Sequence[int] | None = None) -> None:
        """Forget mapped rows (all, or of ``parts``): after a restart they belong to an earlier
        incarnation whose files are orphans; updating them would be lost silently."""
        for p in list(self._views if parts is None else parts):
            self._views.pop(p, None)

    def attach_local(self) -> bool:
        """Map the rows of each of ``local_parts`` whose shard shares them on this node: then pulls
        and pushes of the trainer's own partitions' rows are memory accesses (under the shard's
        row lock), not calls. True if every local partition was mapped; ``shm_fallbacks`` says
        why the others were not."""
        import ray as _ray

        if not self.local_parts:
            return False
        specs = self._wait([self.shards[p].shm_spec.remote(self._gen(p)) for p in self.local_parts],
                           [f"PSShard {p}" for p in self.local_parts], "shm_spec")
        node = _ray.get_runtime_context().get_node_id()
        for p, spec in zip(self.local_parts, specs):
            if not spec:
                info = get_with_deadline(self.shards[p].info.remote(), self.timeout_s, f"PSShard {p} info")
                self.shm_fallbacks[p] = info.get("shm_fallback") or f"PSShard {p} keeps its rows private"
            elif spec["node_id"] != node:
                self.shm_fallbacks[p] = f"PSShard {p} runs on another node ({spec['node_id'][:8]})"
            else:
                try:
                    view = LocalEmbeddingStore.attach(spec["spec"], self.optimizer, spec["lr"],
                                                      tuple(spec["betas"]), spec["eps"])
                except (OSError, RuntimeError, ValueError) as exc:  # files gone or cut: calls, said loudly
                    self.shm_fallbacks[p] = (f"mapping PSShard {p}'s rows failed "
                                             f"({type(exc).__name__}: {' '.join(str(exc).split())[:120]})")
                    continue
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
        self._wait([s.set_lr.remote(float(value), self._gen(p)) for p, s in enumerate(self.shards)],
                   self._names(), "set_lr")
        self._lr = float(value)
        for view, _, _ in self._views.values():
            view.lr = self._lr

    def reset(self) -> None:
        """Every shard back to its initial rows and optimizer state."""
        self.flush()
        self._wait([s.reset.remote(self._gen(p)) for p, s in enumerate(self.shards)], self._names(), "reset")

    # Shipped to Ray Train workers: handles and the book travel, in-flight state does not, nor the
    # generations: each process syncs its own (a restarted job must not inherit the driver's).
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_pending"] = []
        state["_counters"] = None
        state["_views"] = {}  # mapped again on the receiving node (attach_local)
        state["_gens"] = None
        state["shm_fallbacks"] = {}
        state["_turns"] = None
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
        except RayCallError:  # stale or dead shard: its mapped rows belong to a gone incarnation
            self._drop_views()
            raise
        finally:
            self._counters["wait_s"] += time.perf_counter() - t

    # --- pull / push ----------------------------------------------------------------------
    def _single_view(self, gids: torch.Tensor) -> int | None:
        """The partition whose mapped rows hold every one of ``gids``, if there is one.

        Then a pull or push is the in-process store's: one ``index_select`` or in-place step on
        the mapped rows, without the sort by owner that routing needs (``np.unique`` and the
        gathers around it cost 5x the row copy: 0.3-0.5 s against 0.06 s per 50 Gowalla steps,
        D34). Always the case for a worker whose partitions' rows are all mapped and all asked
        for, e.g. the only worker of a one-partition job."""
        if not self._views or len(gids) == 0:
            return None
        lo, hi = int(gids.min()), int(gids.max())
        p = int(self.book.part_of(np.array([lo]))[0])
        if p in self._views and hi < int(self.book.gid_end[p]) and lo >= 0:
            return p
        return None

    def pull(self, gids: torch.Tensor) -> torch.Tensor:
        gids = gids.detach().cpu().reshape(-1).to(torch.int64)
        p = self._single_view(gids)
        if p is not None:  # rows counted as asked for (the trainer's ids are unique)
            view, _, start = self._views[p]
            self._count("pull", p, len(gids))
            self._counters["pull_rows_mapped"] += len(gids)
            self._counters["pull_calls"] += 1
            return view.pull(gids - start)
        g = gids.numpy()
        uniq, inverse = np.unique(g, return_inverse=True)
        runs = self._split(uniq)
        mapped = [r for r in runs if r[0] in self._views]
        remote = [r for r in runs if r[0] not in self._views]
        refs = [self.shards[p].pull.remote(uniq[lo:hi], self._gen(p)) for p, lo, hi in remote]  # all sent first
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
        if self._turns is None:
            return self._push(gids, grads, unique)
        import torch.distributed as dist

        rank, world = self._turns
        for turn in range(world):
            if turn == rank:
                self._push(gids, grads, unique)
                self.flush()
            dist.barrier()

    def _push(self, gids: torch.Tensor, grads: torch.Tensor, unique: bool = False) -> None:
        gids = gids.detach().cpu().reshape(-1).to(torch.int64)
        grads = grads.detach().cpu().to(torch.float32)
        p = self._single_view(gids) if unique else None
        if p is not None:  # in place, atomic with the shard's pushes; no sort (rows are unique)
            view, lock, start = self._views[p]
            with lock:
                view.push(gids - start, grads, unique=True)
            self._count("push", p, len(gids))
            self._counters["push_rows_mapped"] += len(gids)
            self._counters["push_calls"] += 1
            return
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
        refs = [self.shards[p].push.remote(g[lo:hi], v[lo:hi], True, self._gen(p)) for p, lo, hi in remote]
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
        parts = self._wait([s.state_dict.remote(self._gen(p)) for p, s in enumerate(self.shards)],
                           self._names(), "state_dict")
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
            refs.append(s.load_state_dict.remote({n: state[n][a:b].cpu().numpy() for n in names}, self._gen(p)))
        self._wait(refs, [f"PSShard {p}" for p in range(len(refs))], "load_state_dict")

    # --- checkpoints: every shard writes and reads its own files -------------------------------
    def save(self, ckpt_dir: str | Path, partitions_root: str | Path) -> dict[str, dict]:
        """Every shard writes its own files into ``ckpt_dir`` in parallel (``PSShard.save_shard``);
        returns their merged ``files`` records. No row passes through this client."""
        self.flush()
        ckpt_dir, root = str(Path(ckpt_dir).resolve()), str(Path(partitions_root).resolve())
        records = self._wait([s.save_shard.remote(ckpt_dir, root, self._gen(p)) for p, s in enumerate(self.shards)],
                             self._names(), "checkpoint save")
        files: dict[str, dict] = {}
        for rec in records:
            files.update(rec)
        return files

    def load(self, ckpt_dir: str | Path, partitions_root: str | Path) -> None:
        """Every shard reads its own rows of checkpoint ``ckpt_dir`` in parallel
        (``PSShard.load_shard``): from a checkpoint of any backend or number of shards."""
        self.flush()
        ckpt_dir, root = str(Path(ckpt_dir).resolve()), str(Path(partitions_root).resolve())
        self._wait([s.load_shard.remote(ckpt_dir, root, self._gen(p)) for p, s in enumerate(self.shards)],
                   self._names(), "checkpoint load")

    # --- diagnostics ----------------------------------------------------------------------
    def shard_counters(self) -> list[dict]:
        return self._wait([s.counters.remote() for s in self.shards],
                          [f"PSShard {p}" for p in range(len(self.shards))], "counters")
