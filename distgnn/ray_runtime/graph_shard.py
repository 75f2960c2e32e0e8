"""Graph shards: per-partition neighbour sampling as Ray actors, and the client that batches it.

``PartitionCSC`` is one partition's in-neighbour structure in gid space: ``indptr`` over its owned
nodes (row ``gid - gid_start``) and ``indices`` = source gids, sorted within each row (the shard's
``edges.parquet`` is sorted by (dst, src), docs/format.md). DGL samples it as a bipartite unit
graph (``src`` type: the whole gid space, ``dst`` type: the owned nodes) stored in CSC only, so no
array is ever sized by the global node count and sampled source ids come out as gids directly.

``GraphShard`` (Ray actor, one per partition) loads its Parquet shard, puts the two CSC arrays in
the object store once (``ray.put``), maps them back zero-copy for its own sampling, and hands the
``ObjectRef`` to any co-located trainer (``csc_ref``): the trainer maps the same shared-memory
pages and samples its own partition with no Ray call. A GraphShard holds nothing that changes, so
Ray restarts a crashed one (or one on a lost node, on another node) and it reloads its partition
files; calls in flight are retried (sampling is read-only and seeded, so a retry returns the same
edges). A trainer whose mapped CSC object was lost with its owner fetches the new one.

``DistributedNeighborSampler`` is the trainer-side client: for one hop it splits the seeds by
owner, sends one request per remote partition first, samples the local part from the mapped
arrays meanwhile, then waits (with a deadline) and merges. Exclusion follows
``LocalGraphStore.sample_block``: the edges of the given (user, item) interactions, in both
directions, are never sampled. ``RayGraphStore`` wraps it in the ``GraphStore`` interface. A
partition that owns every node (one-partition directory) has no remote seeds and is sampled with
DGL's fused sampler straight into a block, as the local store is (docs/architecture.md D34).
"""
from __future__ import annotations

import contextlib
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import ray
import torch

from distgnn import format as fmt
from distgnn.errors import UserError
from distgnn.graph_store import FusedSampler, GraphStore, Interactions
from distgnn.errors import RayCallError
from distgnn.ray_runtime.cluster import (DEFAULT_CALL_TIMEOUT_S, actor_restarts, get_with_deadline,
                                         placement_options, workload_env)

ETYPE = ("src", "e", "dst")


def _tensor(arr: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():  # read-only object-store pages: we never write to them
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)


def part_seed(rng_seed: int, part_id: int) -> int:
    return (int(rng_seed) * 1_000_003 + int(part_id) * 7919 + 1) % (2 ** 31 - 1)


def _np64(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """A flat int64 numpy array of ids given as a tensor or an array."""
    return np.asarray(x.cpu().numpy() if torch.is_tensor(x) else x, dtype=np.int64).reshape(-1)


def _draw_seed(rng_seed: int | None) -> int:
    """``rng_seed``, or one drawn from torch's global generator (a trainer that seeds torch per
    step then samples reproducibly)."""
    return int(torch.randint(0, 2 ** 31 - 1, (1,)).item()) if rng_seed is None else int(rng_seed)


@contextlib.contextmanager
def _seeded(rng_seed: int | None):
    """DGL's random engine of this thread seeded with ``rng_seed`` and its OpenMP at one thread
    while sampling (DGL's per-thread RNGs: one thread makes a seed reproducible); no seed: as is."""
    import dgl
    from dgl.utils import get_num_threads, set_num_threads

    threads = get_num_threads()
    if rng_seed is not None:
        dgl.seed(int(rng_seed))
        set_num_threads(1)
    try:
        yield
    finally:
        set_num_threads(threads)


class PartitionCSC:
    """In-neighbours of one partition's owned nodes, in gid space, sampled with DGL."""

    def __init__(self, part_id: int, gid_start: int, gid_end: int, item_gid_start: int,
                 num_nodes: int, indptr: np.ndarray, indices: np.ndarray):
        import dgl

        self.part_id, self.gid_start, self.gid_end = int(part_id), int(gid_start), int(gid_end)
        self.item_gid_start, self.num_nodes = int(item_gid_start), int(num_nodes)
        self.indptr, self.indices = indptr, indices
        n_owned = self.gid_end - self.gid_start
        if len(indptr) != n_owned + 1:
            raise ValueError(f"indptr has {len(indptr)} entries for {n_owned} owned nodes")
        # zero-copy: DGL's CSC keeps pointers to these arrays (checked in the tests)
        csc = (_tensor(indptr), _tensor(indices), torch.empty(0, dtype=torch.int64))
        self.g = dgl.heterograph({ETYPE: ("csc", csc)},
                                 num_nodes_dict={"src": self.num_nodes, "dst": n_owned}, idtype=torch.int64)
        # A partition that owns every node (a one-partition directory) is also a homogeneous graph
        # over the gid space, on the same arrays: sampled by DGL's fused sampler like the local
        # store (``sample_block``, D34). Its scratch is sized by the node count, which such a
        # partition's CSC exceeds anyway; no other partition gets one (D28).
        self.fused = (FusedSampler(dgl.graph(("csc", csc), num_nodes=self.num_nodes, idtype=torch.int64))
                      if self.owns_all else None)

    @classmethod
    def from_edges(cls, part_id: int, book: fmt.PartitionBook, src_gid: np.ndarray,
                   dst_gid: np.ndarray) -> "PartitionCSC":
        lo, hi = int(book.gid_start[part_id]), int(book.gid_end[part_id])
        if len(dst_gid) and (dst_gid.min() < lo or dst_gid.max() >= hi):
            raise UserError(f"part {part_id} has edges whose dst is not owned by it")
        key_sorted = np.all(np.diff(dst_gid) >= 0) if len(dst_gid) else True
        if not key_sorted:
            raise UserError(f"part {part_id}: edges are not sorted by dst_gid (docs/format.md)")
        counts = np.bincount(dst_gid - lo, minlength=hi - lo)
        indptr = np.zeros(hi - lo + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        indices = np.ascontiguousarray(src_gid, dtype=np.int64)
        # within a dst, sources must be ascending for edge_ids' binary search (they are, by spec)
        return cls(part_id, lo, hi, int(book.item_gid_start[part_id]), book.num_nodes, indptr, indices)

    def to_arrays(self) -> dict[str, Any]:
        return {"part_id": self.part_id, "gid_start": self.gid_start, "gid_end": self.gid_end,
                "item_gid_start": self.item_gid_start, "num_nodes": self.num_nodes,
                "indptr": self.indptr, "indices": self.indices}

    @classmethod
    def from_arrays(cls, a: dict[str, Any]) -> "PartitionCSC":
        return cls(a["part_id"], a["gid_start"], a["gid_end"], a["item_gid_start"], a["num_nodes"],
                   a["indptr"], a["indices"])

    @property
    def num_edges(self) -> int:
        return len(self.indices)

    @property
    def owns_all(self) -> bool:
        """Whether this partition owns every node of the graph (then no seed is ever remote)."""
        return self.gid_start == 0 and self.gid_end == self.num_nodes

    def owns(self, gid: np.ndarray) -> np.ndarray:
        return (gid >= self.gid_start) & (gid < self.gid_end)

    def degrees(self, gids: np.ndarray) -> np.ndarray:
        d = np.asarray(gids, dtype=np.int64) - self.gid_start
        return self.indptr[d + 1] - self.indptr[d]

    def train_interactions(self) -> tuple[np.ndarray, np.ndarray]:
        """(user_gid, item_gid): the item -> user edges, whose dst is a user owned here."""
        end = self.indptr[self.item_gid_start - self.gid_start]
        users = np.repeat(np.arange(self.gid_start, self.item_gid_start, dtype=np.int64),
                          np.diff(self.indptr[:self.item_gid_start - self.gid_start + 1]))
        return users, np.array(self.indices[:end])

    def edge_ids(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """Positions (edge ids) of the edges src -> dst that exist here; other pairs are dropped.

        A vectorised binary search of each src inside its dst's sorted row."""
        src = np.asarray(src, dtype=np.int64)
        dst = np.asarray(dst, dtype=np.int64)
        keep = self.owns(dst)
        src, d = src[keep], dst[keep] - self.gid_start
        if len(src) == 0 or self.num_edges == 0:
            return np.zeros(0, dtype=np.int64)
        lo, end = self.indptr[d].copy(), self.indptr[d + 1]
        hi = end.copy()
        last = self.num_edges - 1
        while True:
            active = lo < hi
            if not active.any():
                break
            mid = (lo + hi) // 2
            less = self.indices[np.minimum(mid, last)] < src
            lo = np.where(active & less, mid + 1, lo)
            hi = np.where(active & ~less, mid, hi)
        found = (lo < end) & (self.indices[np.minimum(lo, last)] == src)
        return lo[found]

    def exclude_eids(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Edge ids of the interactions (user, item) in both directions, those stored here."""
        return np.concatenate([self.edge_ids(users, items), self.edge_ids(items, users)])

    def sample(self, seeds: np.ndarray, fanout: int, exclude_users: np.ndarray | None = None,
               exclude_items: np.ndarray | None = None, rng_seed: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``fanout`` (-1: all) in-neighbours of each owned seed, without replacement,
        as (src_gid, dst_gid) edge arrays."""
        import dgl

        seeds = np.asarray(seeds, dtype=np.int64)
        if len(seeds) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        if not self.owns(seeds).all():
            bad = seeds[~self.owns(seeds)][:5]
            raise ValueError(f"partition {self.part_id} owns gids [{self.gid_start}, {self.gid_end}), "
                             f"asked to sample {bad.tolist()}")
        local = seeds - self.gid_start
        eids = None
        if exclude_users is not None and len(exclude_users):
            eids = self.exclude_eids(exclude_users, exclude_items)
        if fanout == -1 and (eids is None or len(eids) == 0):
            # every in-neighbour: plain slicing of the CSC rows, no RNG involved
            starts, ends = self.indptr[local], self.indptr[local + 1]
            counts = ends - starts
            total = int(counts.sum())
            offs = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
            pos = np.arange(total, dtype=np.int64) + offs
            return np.array(self.indices[pos]), np.repeat(seeds, counts)
        with _seeded(rng_seed):
            sg = dgl.sampling.sample_neighbors(
                self.g, {"dst": torch.from_numpy(local)}, int(fanout), replace=False,
                exclude_edges=None if eids is None else {ETYPE: torch.from_numpy(eids)},
                copy_ndata=False, copy_edata=False)
        s, d = sg.edges(etype=ETYPE)
        return s.numpy(), d.numpy() + self.gid_start

    def sample_block(self, seeds: torch.Tensor, fanout: int, exclude_users: np.ndarray | None = None,
                     exclude_items: np.ndarray | None = None, rng_seed: int | None = None):
        """``sample`` as a DGL block in one step, for a partition that ``owns_all``: DGL's fused
        sampler numbers the nodes and builds the CSC itself, as for the local store, instead of
        ``sample`` followed by ``edges_to_block`` (``to_block`` over a COO graph of the edges,
        whose CSC GATConv then builds on the training thread). Same contract and exclusion as
        ``DistributedNeighborSampler.sample_block``; the draws differ from ``sample``'s but are
        as reproducible (a function of ``rng_seed``). Returns ``(block, src_gids)``."""
        import dgl

        if self.fused is None:
            raise ValueError(f"partition {self.part_id} does not own every node: use sample()")
        eids = None
        if exclude_users is not None and len(exclude_users):
            eids = torch.from_numpy(self.exclude_eids(exclude_users, exclude_items))
        with _seeded(rng_seed):
            block = self.fused.sample(seeds, int(fanout), eids)
        return block, block.srcdata[dgl.NID]


class CSCInteractions(Interactions):
    """A worker's local partitions' training interactions, read from their CSC on demand.

    Position ``i`` is the i-th pair of ``RayGraphStore.train_interactions()`` (partition by
    partition, then by user gid, then in the row's order), so runs are the same as with the
    arrays, but nothing per interaction is held privately: the CSC is mapped from the object
    store, shared with the graph shard (D31). A minibatch costs two binary searches per pair."""

    def __init__(self, cscs: Sequence[PartitionCSC]):
        self.cscs = list(cscs)
        # each partition's user rows come first (gid_start .. item_gid_start): their in-edges
        ends = [int(c.indptr[c.item_gid_start - c.gid_start]) for c in self.cscs]
        self.offsets = np.concatenate([[0], np.cumsum(ends, dtype=np.int64)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def take(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pos = np.asarray(pos, dtype=np.int64)
        if len(pos) and (pos.min() < 0 or pos.max() >= len(self)):
            raise IndexError(f"interaction positions must lie in [0, {len(self)})")
        part = np.searchsorted(self.offsets, pos, side="right") - 1
        users = np.empty(len(pos), dtype=np.int64)
        items = np.empty(len(pos), dtype=np.int64)
        for k, c in enumerate(self.cscs):
            m = part == k
            if not m.any():
                continue
            local = pos[m] - self.offsets[k]
            user_rows = c.indptr[:c.item_gid_start - c.gid_start + 1]
            # the row holding edge ``local``: the last row starting at or before it (empty rows
            # share their start with the next row, so side="right" skips them)
            users[m] = np.searchsorted(user_rows, local, side="right") - 1 + c.gid_start
            items[m] = c.indices[local]
        return torch.from_numpy(users), torch.from_numpy(items)


class _GraphShard:
    """One partition's graph, loaded from its Parquet shard (see module doc)."""

    def __init__(self, root: str, part_id: int, num_threads: int = 1):
        torch.set_num_threads(max(1, int(num_threads)))
        self.root = Path(root)
        self.part_id = int(part_id)
        self.generation = actor_restarts()  # 0, then 1, 2, ... after each restart by Ray
        self.error: str | None = None
        self.stats = {"sample_calls": 0, "sample_seeds": 0, "sample_edges": 0, "busy_s": 0.0}
        try:
            self._load()
        except UserError as exc:  # reported by ready(): one line, naming the node
            self.error = str(exc)

    def ready(self) -> bool:
        if self.error is not None:
            node = ray.util.get_node_ip_address()
            raise UserError(f"graph shard {self.part_id} on node {node}: {self.error}")
        return True

    def _load(self) -> None:
        manifest = fmt.load_manifest(self.root)
        self.book = fmt.PartitionBook.from_manifest(manifest)
        if not 0 <= self.part_id < self.book.num_parts:
            raise UserError(f"partition {self.part_id} does not exist in {self.root} (it has {self.book.num_parts})")
        src, dst = fmt.read_part_edges(self.root, self.part_id)
        built = PartitionCSC.from_edges(self.part_id, self.book, src, dst)
        del src, dst
        # One copy, in shared memory: put it once, then map it back for our own sampling.
        self._ref = ray.put(built.to_arrays())
        del built
        # Arrow's allocator keeps the freed Parquet decode buffers (~30 B per edge) for reuse
        # that never comes; hand them back so the shard holds its CSC and little else.
        import pyarrow as pa
        pa.default_memory_pool().release_unused()
        self.csc = PartitionCSC.from_arrays(ray.get(self._ref))

    def csc_ref(self) -> list:
        """``[ObjectRef]`` of the CSC arrays (wrapped in a list so Ray hands over the ref itself)."""
        return [self._ref]

    def sample(self, seeds: np.ndarray, fanout: int, exclude_users: np.ndarray | None = None,
               exclude_items: np.ndarray | None = None, rng_seed: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        t = time.perf_counter()
        out = self.csc.sample(seeds, fanout, exclude_users, exclude_items, rng_seed)
        self.stats["sample_calls"] += 1
        self.stats["sample_seeds"] += len(seeds)
        self.stats["sample_edges"] += len(out[0])
        self.stats["busy_s"] += time.perf_counter() - t
        return out

    def degrees(self, gids: np.ndarray) -> np.ndarray:
        return self.csc.degrees(gids)

    def train_interactions(self) -> tuple[np.ndarray, np.ndarray]:
        return self.csc.train_interactions()

    def counters(self) -> dict[str, Any]:
        """Work served, and this process's memory (``distgnn.stages.process_memory``: pid, peak
        RSS) and node, for the job's per-process memory report."""
        from distgnn.stages import process_memory

        return dict(self.stats, part_id=self.part_id, node_id=ray.get_runtime_context().get_node_id(),
                    **process_memory())

    def info(self) -> dict[str, Any]:
        import os

        return {"part_id": self.part_id, "num_edges": self.csc.num_edges, "generation": self.generation,
                "gid_start": self.csc.gid_start, "gid_end": self.csc.gid_end,
                "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}


# Read-only and seeded: restarting one (it reloads its partition files) and retrying the calls in
# flight is safe, so a crash or a lost node costs a reload, not the job.
GRAPH_MAX_RESTARTS = 3
GraphShard = ray.remote(num_cpus=0, max_restarts=GRAPH_MAX_RESTARTS,
                        max_task_retries=GRAPH_MAX_RESTARTS)(_GraphShard)


def create_graph_shards(root: str | Path, num_parts: int,
                        scheduling_strategies: Sequence[Any] | None = None, num_cpus: float = 0,
                        timeout_s: float = DEFAULT_CALL_TIMEOUT_S) -> list:
    """One ``GraphShard`` per partition, constructed (shards loaded) before this returns.

    ``scheduling_strategies[p]`` places shard ``p``; give it the same placement-group bundle as
    parameter-server shard ``p`` to co-locate them. A partition directory that a node cannot read
    fails here with the shard's ``UserError``."""
    root = str(Path(root).resolve())
    shards = []
    for p in range(num_parts):
        opts: dict[str, Any] = {"num_cpus": num_cpus, "runtime_env": {"env_vars": workload_env()}}
        if scheduling_strategies is not None and scheduling_strategies[p] is not None:
            opts.update(placement_options(scheduling_strategies[p]))
        shards.append(GraphShard.options(**opts).remote(root, p))
    get_with_deadline([s.ready.remote() for s in shards], timeout_s,
                      f"loading {num_parts} graph shards from {root}",
                      [f"GraphShard {p}" for p in range(num_parts)])
    return shards


class DistributedNeighborSampler:
    """Samples one hop over all partitions: the worker's own partitions (``local_parts``) from
    mapped arrays, the rest remotely."""

    def __init__(self, graph_shards: Sequence, book: fmt.PartitionBook, local_parts: Sequence[int] = (),
                 timeout_s: float = DEFAULT_CALL_TIMEOUT_S):
        self.shards = list(graph_shards)
        self.book = book
        self.local_parts = tuple(int(p) for p in local_parts)
        self.timeout_s = float(timeout_s)
        self.local: dict[int, PartitionCSC] = {}
        self.reset_counters()
        self._ensure_local()

    def _ensure_local(self, attempts: int = 3) -> None:
        """Map the local partitions' CSC arrays from the object store (zero-copy on their node).
        An object lost with its owner (the GraphShard restarted, maybe on another node) is fetched
        again from the new incarnation, which put its own copy."""
        from ray.exceptions import ObjectLostError

        for p in self.local_parts:
            for attempt in range(attempts):
                if p in self.local:
                    break
                ref = get_with_deadline(self.shards[p].csc_ref.remote(), self.timeout_s,
                                        f"GraphShard {p} csc_ref")[0]
                try:
                    arrays = get_with_deadline(ref, self.timeout_s, f"mapping partition {p}'s graph")
                except RayCallError as exc:
                    if isinstance(exc.__cause__, ObjectLostError) and attempt + 1 < attempts:
                        time.sleep(1.0)  # the owner is restarting: ask it for its new object
                        continue
                    raise
                self.local[p] = PartitionCSC.from_arrays(arrays)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["local"] = {}  # re-mapped lazily on the receiving side
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.reset_counters()

    def reset_counters(self) -> None:
        self._counters = {"remote_requests": 0, "remote_seeds": 0, "remote_edges": 0,
                          "local_seeds": 0, "local_edges": 0, "sample_local_s": 0.0,
                          "sample_remote_wait_s": 0.0, "degree_requests": 0, "degree_nodes_remote": 0,
                          "degrees_remote_wait_s": 0.0}

    def counters(self) -> dict[str, float]:
        return dict(self._counters)

    def sample_neighbors(self, seeds_gid: torch.Tensor | np.ndarray, fanout: int,
                         exclude: tuple[torch.Tensor, torch.Tensor] | None = None,
                         rng_seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(src_gid, dst_gid) of up to ``fanout`` in-neighbours of each seed (-1: all).

        ``exclude``: (user_gid, item_gid) interactions whose edges (both directions) are never
        sampled. ``rng_seed``: makes the draw reproducible; by default one is drawn from torch's
        global generator, so a trainer that seeds torch per step gets reproducible samples."""
        seeds = self._checked_seeds(seeds_gid)
        self._ensure_local()
        rng_seed = _draw_seed(rng_seed)
        parts = self.book.part_of(seeds)
        ex_u = ex_i = ex_pu = ex_pi = None
        if exclude is not None:
            ex_u, ex_i = _np64(exclude[0]), _np64(exclude[1])
            ex_pu, ex_pi = self.book.part_of(ex_u), self.book.part_of(ex_i)
        present = np.unique(parts)
        # 1. remote requests first, one per remote partition
        refs, who, sizes = [], [], []
        for p in present:
            p = int(p)
            if p in self.local:
                continue
            sel = seeds[parts == p]
            eu = ei = None
            if ex_u is not None:  # only the interactions with an edge stored in partition p
                m = (ex_pu == p) | (ex_pi == p)
                eu, ei = ex_u[m], ex_i[m]
            refs.append(self.shards[p].sample.remote(sel, int(fanout), eu, ei, part_seed(rng_seed, p)))
            who.append(f"GraphShard {p}")
            sizes.append(len(sel))
        # 2. the local partitions meanwhile, from the mapped arrays
        srcs, dsts = [], []
        for p in present:
            p = int(p)
            if p not in self.local:
                continue
            t = time.perf_counter()
            sel = seeds[parts == p]
            eu = ei = None
            if ex_u is not None:
                m = (ex_pu == p) | (ex_pi == p)
                eu, ei = ex_u[m], ex_i[m]
            s, d = self.local[p].sample(sel, int(fanout), eu, ei, part_seed(rng_seed, p))
            srcs.append(s)
            dsts.append(d)
            self._counters["local_seeds"] += len(sel)
            self._counters["local_edges"] += len(s)
            self._counters["sample_local_s"] += time.perf_counter() - t
        # 3. then wait for the remote answers and merge
        if refs:
            t = time.perf_counter()
            results = get_with_deadline(refs, self.timeout_s, f"sampling {int(sum(sizes))} remote seeds",
                                        who)
            self._counters["sample_remote_wait_s"] += time.perf_counter() - t
            for s, d in results:
                srcs.append(s)
                dsts.append(d)
                self._counters["remote_edges"] += len(s)
            self._counters["remote_requests"] += len(refs)
            self._counters["remote_seeds"] += int(sum(sizes))
        if not srcs:
            return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
        return torch.from_numpy(np.concatenate(srcs)), torch.from_numpy(np.concatenate(dsts))

    def _checked_seeds(self, seeds_gid: torch.Tensor | np.ndarray) -> np.ndarray:
        seeds = _np64(seeds_gid)
        if len(seeds) and (seeds.min() < 0 or seeds.max() >= self.book.num_nodes):
            raise ValueError(f"seed gids must be in [0, {self.book.num_nodes})")
        return seeds

    def degrees(self, gids: torch.Tensor | np.ndarray) -> np.ndarray:
        """In-degree of each gid (any order, repeats allowed) from its owning partition.

        Gids of the local partitions are read from their mapped CSC; the others go to their
        GraphShard in one batched call per remote partition, all sent before the local ones are
        read and then awaited together under the deadline. Nothing is sized by the global node
        count: memory is O(len(gids)) (docs/architecture.md D28)."""
        g = np.asarray(gids.cpu().numpy() if torch.is_tensor(gids) else gids, dtype=np.int64).reshape(-1)
        out = np.empty(len(g), dtype=np.int64)
        if len(g) == 0:
            return out
        if g.min() < 0 or g.max() >= self.book.num_nodes:
            raise ValueError(f"gids must be in [0, {self.book.num_nodes})")
        self._ensure_local()
        parts = self.book.part_of(g)
        order = np.argsort(parts, kind="stable")
        bounds = np.searchsorted(parts[order], np.arange(self.book.num_parts + 1))
        refs, who, where = [], [], []
        for p in range(self.book.num_parts):  # 1. remote requests first, one per partition
            lo, hi = int(bounds[p]), int(bounds[p + 1])
            if lo < hi and p not in self.local:
                refs.append(self.shards[p].degrees.remote(g[order[lo:hi]]))
                who.append(f"GraphShard {p}")
                where.append(order[lo:hi])
        for p in self.local:  # 2. the local partitions meanwhile
            lo, hi = int(bounds[p]), int(bounds[p + 1])
            if lo < hi:
                out[order[lo:hi]] = self.local[p].degrees(g[order[lo:hi]])
        if refs:  # 3. the remote answers
            t = time.perf_counter()
            results = get_with_deadline(refs, self.timeout_s, f"degrees of {sum(map(len, where))} remote nodes",
                                        who)
            self._counters["degrees_remote_wait_s"] += time.perf_counter() - t
            for idx, deg in zip(where, results):
                out[idx] = deg
            self._counters["degree_requests"] += len(refs)
            self._counters["degree_nodes_remote"] += int(sum(map(len, where)))
        return out

    def sample_block(self, seed_gids: torch.Tensor, fanout: int,
                     exclude: tuple[torch.Tensor, torch.Tensor] | None = None,
                     rng_seed: int | None = None):
        """``GraphStore.sample_block``'s contract: a DGL block whose dst nodes are ``seed_gids``
        (unique, in order) and whose src nodes are the seeds followed by the other sampled
        sources; returns ``(block, src_gids)``.

        When one local partition owns every node (a one-partition directory), no seed can be
        remote and DGL's fused sampler builds the block from its CSC directly, as the local store
        does (``PartitionCSC.sample_block``, D34); otherwise the hop's edges are gathered from the
        partitions (``sample_neighbors``) and numbered by ``edges_to_block``."""
        self._ensure_local()
        whole = next((c for c in self.local.values() if c.owns_all), None)
        if whole is None:
            src, dst = self.sample_neighbors(seed_gids, fanout, exclude, rng_seed)
            return edges_to_block(seed_gids, src, dst, self.book.num_nodes)
        seeds = torch.from_numpy(self._checked_seeds(seed_gids))
        rng_seed = _draw_seed(rng_seed)
        t = time.perf_counter()
        ex = (None, None) if exclude is None else (_np64(exclude[0]), _np64(exclude[1]))
        block, src = whole.sample_block(seeds, fanout, *ex, part_seed(rng_seed, whole.part_id))
        self._counters["local_seeds"] += len(seeds)
        self._counters["local_edges"] += block.num_edges()
        self._counters["sample_local_s"] += time.perf_counter() - t
        return block, src


def edges_to_block(seed_gids: torch.Tensor, src_gid: torch.Tensor, dst_gid: torch.Tensor,
                   num_nodes: int | None = None):
    """A DGL block of the sampled edges (gid space): dst nodes are the seeds (in order), src nodes
    the seeds followed by the other sources in order of first appearance, as DGL's ``to_block``
    numbers them.

    The order matters for speed, not for results: sources numbered as the dst-grouped edges meet
    them are gathered almost sequentially by GATConv's kernels, while sources in gid order make
    those gathers random (forward and backward were 15-30% slower; docs/architecture.md D13)."""
    import dgl

    seeds = seed_gids.cpu().to(torch.int64)
    if num_nodes is None:
        num_nodes = int(max(int(seeds.max()) if len(seeds) else -1,
                            int(src_gid.max()) if len(src_gid) else -1)) + 1
    frontier = dgl.graph((src_gid, dst_gid), num_nodes=num_nodes, idtype=torch.int64)
    block = dgl.to_block(frontier, dst_nodes=seeds)
    return block, block.srcdata[dgl.NID]


class RayGraphStore(GraphStore):
    """``GraphStore`` over GraphShard actors for a trainer of the partitions ``local_parts``."""

    def __init__(self, root: str | Path, graph_shards: Sequence, local_parts: Sequence[int],
                 timeout_s: float = DEFAULT_CALL_TIMEOUT_S):
        self.root = Path(root)
        self.manifest = fmt.load_manifest(self.root)
        self.book = fmt.PartitionBook.from_manifest(self.manifest)
        self.local_parts = tuple(int(p) for p in local_parts)
        if not self.local_parts:
            raise ValueError("a RayGraphStore trains at least one local partition")
        self.timeout_s = float(timeout_s)
        self.sampler = DistributedNeighborSampler(graph_shards, self.book, self.local_parts, timeout_s)

    def train_interactions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(user_gid, item_gid) of the local partitions' training interactions."""
        self.sampler._ensure_local()
        pairs = [self.sampler.local[p].train_interactions() for p in self.local_parts]
        return (torch.from_numpy(np.concatenate([u for u, _ in pairs])),
                torch.from_numpy(np.concatenate([i for _, i in pairs])))

    def interactions(self) -> CSCInteractions:
        """The local partitions' interactions by position, from their mapped CSC (no copy)."""
        self.sampler._ensure_local()
        return CSCInteractions([self.sampler.local[p] for p in self.local_parts])

    def degrees(self, gids: torch.Tensor) -> torch.Tensor:
        """From the owning partitions, per call (``DistributedNeighborSampler.degrees``): no
        per-node table is kept, so a training worker asks for its minibatch's nodes only."""
        return torch.from_numpy(self.sampler.degrees(gids))

    def sample_block(self, seed_gids: torch.Tensor, fanout: int,
                     exclude: tuple[torch.Tensor, torch.Tensor] | None = None,
                     gen: torch.Generator | None = None):
        # the draw a trainer thread would take from torch's global generator, from ``gen`` when
        # given, so a background (prefetch) thread samples the same without touching the global one
        rng_seed = None if gen is None else int(torch.randint(0, 2 ** 31 - 1, (1,), generator=gen).item())
        return self.sampler.sample_block(seed_gids, fanout, exclude, rng_seed)
