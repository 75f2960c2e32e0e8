"""Graph store: the message-passing graph of training interactions, sampled by gid.

Interface (``GraphStore``), kept small so a Ray ``GraphShard`` implementation can sit behind it:

- ``train_interactions()``: the (user_gid, item_gid) pairs this store's trainer iterates over;
  ``interactions()`` the same by position, computed per minibatch where the store can;
- ``degrees(gids)``: in-degree of nodes in the full training graph (for edge normalisation);
- ``sample_block(seed_gids, fanout, exclude)``: one hop of neighbour sampling as a DGL block whose
  destination nodes are ``seed_gids`` (in order), plus the gids of its source nodes (the
  destination nodes come first, DGL's block convention);
- ``full_block(seed_gids)``: the same with every in-neighbour (layer-wise inference).

Ids are explicit: callers pass and receive ``gid``; the DGL graph inside is indexed by ``lid``.
``LocalGraphStore`` loads one, some or all partitions of a partition directory into one in-process
DGL graph. Its lids are the owned nodes of the loaded partitions (partition order, ascending gid)
followed by the halo nodes they need (ascending gid); so with one partition the lid is the row of
``nodes.parquet`` (docs/format.md), and with all partitions ``lid == gid`` (no translation).
Each interaction is stored as two directed edges (user->item, item->user) and held-out targets are
never in it.
"""
from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from distgnn import format as fmt
from distgnn.errors import UserError


class FusedSampler:
    """DGL's fused neighbour sampler (``sample_neighbors_fused``) on one homogeneous graph.

    It samples and numbers the block's nodes in one C++ pass, seeds first, then the other
    sources in order of first appearance, the numbering DGL's ``to_block`` gives, and returns the
    block already in CSC, the format GATConv's kernels read: about half the CPU of
    ``sample_neighbors`` followed by ``to_block`` on a Gowalla hop (docs/architecture.md D34).
    Its price is a node-id scratch array sized by the graph's node count, which DGL keeps in the
    ``mapping`` dict between calls; one per thread, so sampling on the prefetch thread never races
    another thread's call. The caller sets DGL's seed and threads (one, for a reproducible draw).
    """

    def __init__(self, g):
        self.g = g
        self._scratch = threading.local()

    def sample(self, seeds: torch.Tensor, fanout: int, exclude_eids: torch.Tensor | None = None):
        """A DGL block of up to ``fanout`` (-1: all) in-neighbours of each seed, without the
        edges ``exclude_eids``; ``block.srcdata[dgl.NID]`` are the sources' ids in ``g``."""
        if not hasattr(self._scratch, "mapping"):
            self._scratch.mapping = {}
        return self.g.sample_neighbors_fused(seeds, fanout, exclude_edges=exclude_eids,
                                             mapping=self._scratch.mapping)


class Interactions:
    """The training interactions a trainer iterates over, addressed by position ``0..len-1``.

    The minibatch sampler only ever needs one minibatch's pairs, so a store may compute them on
    demand (the Ray store reads them from its partitions' CSC, shared with the graph shard)
    instead of holding two int64 arrays of every pair: 16 B per interaction, 0.6 GB in each
    worker of the 100M run (docs/architecture.md D31)."""

    def __len__(self) -> int:
        raise NotImplementedError

    def take(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(user_gid, item_gid) int64 tensors of the interactions at positions ``pos``."""
        raise NotImplementedError


class TensorInteractions(Interactions):
    """Interactions held as two tensors (the local store has them anyway)."""

    def __init__(self, user_gid: torch.Tensor, item_gid: torch.Tensor):
        self.user_gid, self.item_gid = user_gid, item_gid

    def __len__(self) -> int:
        return len(self.user_gid)

    def take(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_gid[pos], self.item_gid[pos]


class GraphStore(ABC):
    """Neighbour sampling and graph facts, addressed by gid."""

    manifest: dict
    book: fmt.PartitionBook

    @property
    def num_nodes(self) -> int:
        """Size of the global gid space."""
        return self.book.num_nodes

    @abstractmethod
    def train_interactions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(user_gid, item_gid) int64 tensors of the interactions owned here."""

    def interactions(self) -> Interactions:
        """The same pairs by position, in the same order, for the minibatch sampler; a store that
        can compute them on demand overrides this (``RayGraphStore``)."""
        return TensorInteractions(*self.train_interactions())

    @abstractmethod
    def degrees(self, gids: torch.Tensor) -> torch.Tensor:
        """In-degree (= number of training interactions) of each gid in the full graph."""

    @abstractmethod
    def sample_block(self, seed_gids: torch.Tensor, fanout: int,
                     exclude: tuple[torch.Tensor, torch.Tensor] | None = None,
                     gen: torch.Generator | None = None):
        """Sample up to ``fanout`` in-neighbours (-1: all) of each seed.

        ``exclude``: (user_gid, item_gid) interactions whose edges, in both directions, must not
        be sampled. ``gen``: a store that seeds its own sampling draws the seed from it (None:
        from torch's global generator); the local store samples with DGL's thread-local engine
        (``dgl.seed``) and ignores it. Returns ``(block, src_gids)``.
        """

    def full_block(self, seed_gids: torch.Tensor):
        return self.sample_block(seed_gids, -1, None)


class LocalGraphStore(GraphStore):
    """All (or some) partitions of a partition directory in one in-process DGL graph."""

    def __init__(self, root: str | Path, parts: Sequence[int] | None = None, deterministic: bool = True):
        import dgl

        self.deterministic = deterministic

        self.root = Path(root)
        self.manifest = fmt.load_manifest(self.root)
        self.book = fmt.PartitionBook.from_manifest(self.manifest)
        num_parts = self.book.num_parts
        self.parts = list(range(num_parts)) if parts is None else sorted(set(int(p) for p in parts))
        for p in self.parts:
            if not 0 <= p < num_parts:
                raise UserError(f"partition {p} does not exist in {self.root} (it has {num_parts})")
        # only what this store reads: held-out targets (above all the test split) are not touched
        fmt.check_files(self.root, self.manifest, fmt.graph_files(self.manifest))

        srcs, dsts = [], []
        for p in self.parts:
            s, d = fmt.read_part_edges(self.root, p)
            lo, hi = self.book.gid_start[p], self.book.gid_end[p]
            if len(d) and (d.min() < lo or d.max() >= hi):
                raise UserError(f"{self.root}: part {p} has edges whose dst is not owned by it; "
                                f"run 'distgnn partition verify {self.root}'")
            srcs.append(s)
            dsts.append(d)
        src_gid = np.concatenate(srcs) if srcs else np.zeros(0, np.int64)
        dst_gid = np.concatenate(dsts) if dsts else np.zeros(0, np.int64)

        # lid space: owned nodes of loaded parts, then halo.
        self._owned_start = np.array([self.book.gid_start[p] for p in self.parts], np.int64)
        self._owned_end = np.array([self.book.gid_end[p] for p in self.parts], np.int64)
        sizes = self._owned_end - self._owned_start
        self._lid_offset = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        num_owned = self._num_owned = int(sizes.sum())
        owned_mask = self._is_owned(src_gid)
        self._halo_gids = np.unique(src_gid[~owned_mask])
        self.identity = (self.parts == list(range(num_parts)))  # lid == gid
        self.num_local = num_owned + len(self._halo_gids)
        self._lid_to_gid = None if self.identity else torch.from_numpy(np.concatenate(
            [np.arange(s, e, dtype=np.int64) for s, e in zip(self._owned_start, self._owned_end)]
            + [self._halo_gids]))

        src_lid = torch.from_numpy(self._gid_to_lid_np(src_gid))
        dst_lid = torch.from_numpy(self._gid_to_lid_np(dst_gid))
        self.g = dgl.graph((src_lid, dst_lid), num_nodes=self.num_local, idtype=torch.int64)
        self.g.create_formats_()
        self._in_deg_local = self.g.in_degrees()
        self._fused = FusedSampler(self.g)
        self._global_degrees: torch.Tensor | None = None

        # Training interactions: item -> user edges (dst is an owned user).
        is_user_dst = self.book.ntype_of(dst_gid) == fmt.USER
        self._train_user_gid = torch.from_numpy(dst_gid[is_user_dst].copy())
        self._train_item_gid = torch.from_numpy(src_gid[is_user_dst].copy())

    # --- id translation -------------------------------------------------------------------
    def _is_owned(self, gid: np.ndarray) -> np.ndarray:
        part = self.book.part_of(gid)
        loaded = np.zeros(self.book.num_parts, dtype=bool)
        loaded[self.parts] = True
        return loaded[np.minimum(part, self.book.num_parts - 1)] & (gid < self.book.num_nodes)

    def _gid_to_lid_np(self, gid: np.ndarray) -> np.ndarray:
        if len(self.parts) == self.book.num_parts:
            return gid.astype(np.int64, copy=False)
        idx = np.searchsorted(self._owned_end, gid, side="right")
        idx_c = np.minimum(idx, len(self._owned_end) - 1)
        owned = (idx < len(self._owned_end)) & (gid >= self._owned_start[idx_c])
        lid = np.empty(len(gid), dtype=np.int64)
        lid[owned] = gid[owned] - self._owned_start[idx_c[owned]] + self._lid_offset[idx_c[owned]]
        halo_pos = np.searchsorted(self._halo_gids, gid[~owned])
        ok = halo_pos < len(self._halo_gids)
        ok[ok] = self._halo_gids[halo_pos[ok]] == gid[~owned][ok]
        if not ok.all():
            raise KeyError("gid not present in the loaded partitions")
        lid[~owned] = halo_pos + self._num_owned
        return lid

    def gid_to_lid(self, gid: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return gid
        return torch.from_numpy(self._gid_to_lid_np(gid.numpy()))

    def lid_to_gid(self, lid: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return lid
        return self._lid_to_gid[lid]

    # --- interface ------------------------------------------------------------------------
    def train_interactions(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._train_user_gid, self._train_item_gid

    def degrees(self, gids: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return self._in_deg_local[gids]
        if self._global_degrees is None:  # halo degrees live in other partitions: count them all
            deg = np.zeros(self.book.num_nodes, dtype=np.int64)
            for p in range(self.book.num_parts):
                d = fmt.read_column(self.root, fmt.edges_path(p), "dst_gid")
                deg += np.bincount(d, minlength=self.book.num_nodes)
            self._global_degrees = torch.from_numpy(deg)
        return self._global_degrees[gids]

    def _exclude_eids(self, exclude: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        user_lid, item_lid = self.gid_to_lid_pairs(*exclude)
        src = torch.cat([user_lid, item_lid])
        dst = torch.cat([item_lid, user_lid])
        if not self.identity:
            keep = self.g.has_edges_between(src, dst)
            src, dst = src[keep], dst[keep]
        return self.g.edge_ids(src, dst)

    def gid_to_lid_pairs(self, user_gid: torch.Tensor, item_gid: torch.Tensor):
        if self.identity:
            return user_gid, item_gid
        # a pair may touch nodes this store does not hold: those edges cannot be sampled anyway
        u = user_gid.numpy()
        i = item_gid.numpy()
        ok = self._present(u) & self._present(i)
        return (torch.from_numpy(self._gid_to_lid_np(u[ok])), torch.from_numpy(self._gid_to_lid_np(i[ok])))

    def _present(self, gid: np.ndarray) -> np.ndarray:
        owned = self._is_owned(gid)
        pos = np.searchsorted(self._halo_gids, gid)
        halo = np.zeros(len(gid), dtype=bool)
        inb = pos < len(self._halo_gids)
        halo[inb] = self._halo_gids[pos[inb]] == gid[inb]
        return owned | halo

    def sample_block(self, seed_gids: torch.Tensor, fanout: int,
                     exclude: tuple[torch.Tensor, torch.Tensor] | None = None,
                     gen: torch.Generator | None = None):
        import dgl

        seed_lid = self.gid_to_lid(seed_gids)
        eids = self._exclude_eids(exclude) if exclude is not None else None
        if fanout == -1 and eids is None:
            frontier = dgl.in_subgraph(self.g, seed_lid)
            block = dgl.to_block(frontier, seed_lid)
        elif self.deterministic:
            # DGL's multi-threaded sampling draws from per-thread RNGs that dgl.seed() does not
            # reset consistently, so the same seed can give other samples; one thread makes the
            # draw a function of the seed (exact --resume), at some sampling speed.
            from dgl.utils import get_num_threads, set_num_threads

            threads = get_num_threads()
            set_num_threads(1)  # DGL's OpenMP only; torch's thread pool is left alone
            try:
                block = self._fused.sample(seed_lid, fanout, eids)
            finally:
                set_num_threads(threads)
        else:
            block = self._fused.sample(seed_lid, fanout, eids)
        src_lid = block.srcdata[dgl.NID]
        return block, self.lid_to_gid(src_lid)
