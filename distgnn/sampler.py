"""Sampler: edge minibatches of training interactions, negatives, and L-hop neighbour blocks.

A minibatch is ``batch_size`` positive interactions (user -> item) of the graph store, ``k``
negative items per positive (uniform over items, a configurable fraction drawn by popularity
``p ~ degree^alpha``), and the L-hop computation graph of all its seeds (users, positive and
negative items) sampled hop by hop with per-layer fanouts through ``GraphStore.sample_block``.
Every hop excludes the minibatch's own interactions in both directions, so a positive never
carries its own label into its message passing. Held-out targets are never in the graph store.

Determinism: the epoch order comes from a generator seeded by (seed, epoch) and every step reseeds
DGL and torch from (seed, epoch, step); a run resumed at any step therefore draws exactly the same
minibatches as an uninterrupted one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from distgnn import format as fmt
from distgnn.graph_store import GraphStore


def step_seed(seed: int, epoch: int, step: int) -> int:
    return (seed * 1_000_003 + epoch * 100_003 + step) % (2 ** 31 - 1)


class ItemRanges:
    """The item gids as a list of contiguous ranges, in order: position <-> gid in O(ranges).

    Every partition's items are one contiguous gid range ``[item_gid_start, gid_end)``
    (docs/format.md), so "the i-th item" of the concatenation of those ranges, in partition order,
    is found with one ``searchsorted`` over the per-range cumulative counts. This is what lets a
    training worker draw uniform negatives over all items without holding an array of all item
    gids (80M nodes at 1B interactions): ``gids(pos)`` equals ``book.item_gids()[pos]``.
    """

    def __init__(self, starts: np.ndarray, ends: np.ndarray):
        self.starts = torch.as_tensor(np.asarray(starts, dtype=np.int64))
        ends = torch.as_tensor(np.asarray(ends, dtype=np.int64))
        if len(self.starts) != len(ends) or bool((ends < self.starts).any()):
            raise ValueError("item ranges need one end >= start per start")
        counts = ends - self.starts
        self.offsets = torch.zeros(len(counts) + 1, dtype=torch.int64)  # position of each range's first item
        torch.cumsum(counts, 0, out=self.offsets[1:])

    @classmethod
    def from_book(cls, book: fmt.PartitionBook, parts: Sequence[int] | None = None) -> "ItemRanges":
        """The items of ``parts`` (default: every partition), in that order."""
        idx = np.arange(book.num_parts) if parts is None else np.asarray(list(parts), dtype=np.int64)
        return cls(book.item_gid_start[idx], book.gid_end[idx])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def gids(self, pos: torch.Tensor) -> torch.Tensor:
        """The gid of the item at each position in ``[0, len(self))`` (any shape)."""
        # the range holding pos: the first whose end offset is > pos (empty ranges are skipped)
        r = torch.searchsorted(self.offsets[1:], pos, right=True)
        return self.starts[r] + (pos - self.offsets[r])

    def all_gids(self) -> torch.Tensor:
        """Every item gid, ascending within each range: O(items); for callers that need them all."""
        if len(self) == 0:
            return torch.zeros(0, dtype=torch.int64)
        return self.gids(torch.arange(len(self), dtype=torch.int64))


class NegativeSampler:
    """k negatives per positive: uniform over items, ``pop_fraction`` of them by popularity.

    ``items``: the item set, as ``ItemRanges`` (O(num_parts) memory: what training uses) or as a
    tensor of item gids. Either way a uniform negative is ``items[randint(len(items))]``, so both
    give the same draws from the same generator. ``item_degrees`` (one per item, in ``items``'
    order) is only needed, and only read, when ``pop_fraction > 0``: popularity negatives keep an
    O(items) cumulative table, the one per-item structure of a training worker (docs/architecture.md
    D28).
    """

    def __init__(self, items: ItemRanges | torch.Tensor, item_degrees: torch.Tensor | None, k: int,
                 pop_fraction: float = 0.0, alpha: float = 0.75,
                 local_item_gids: ItemRanges | torch.Tensor | None = None, local_fraction: float = 0.0):
        self.items = items
        self.num_items = len(items)
        self.k = k
        self.num_pop = int(round(k * pop_fraction))
        # Partition-local negatives (PyTorch-BigGraph's trick): drawn from the trainer's own
        # partition, so their embeddings and neighbourhoods are local.
        self.local_items = local_item_gids
        self.num_local = (int(round((k - self.num_pop) * local_fraction))
                          if local_item_gids is not None and len(local_item_gids) else 0)
        self.cdf: torch.Tensor | None = None
        if self.num_pop:
            if item_degrees is None or len(item_degrees) != self.num_items:
                raise ValueError("popularity negatives need one degree per item")
            weights = item_degrees.to(torch.float64).clamp(min=0) ** alpha
            cdf = torch.cumsum(weights, 0)
            del weights
            self.cdf = (cdf / cdf[-1]).to(torch.float64)

    @staticmethod
    def _take(items: ItemRanges | torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return items.gids(pos) if isinstance(items, ItemRanges) else items[pos]

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """Negative item gids, shape [n, k]."""
        num_uni = self.k - self.num_pop - self.num_local
        idx = torch.randint(self.num_items, (n, num_uni), generator=gen)
        if self.num_pop:
            u = torch.rand(n, self.num_pop, generator=gen, dtype=torch.float64)
            pop = torch.searchsorted(self.cdf, u).clamp_(max=self.num_items - 1)
            idx = torch.cat([idx, pop], 1)
        neg = self._take(self.items, idx)
        if self.num_local:
            local = torch.randint(len(self.local_items), (n, self.num_local), generator=gen)
            neg = torch.cat([neg, self._take(self.local_items, local)], 1)
        return neg


@dataclass
class MiniBatch:
    user_gid: torch.Tensor        # [B]
    pos_item_gid: torch.Tensor    # [B]
    neg_item_gid: torch.Tensor    # [B, k], or [1, k] when shared by the minibatch
    seed_gids: torch.Tensor       # [S] unique seeds = dst nodes of the last block
    user_pos: torch.Tensor        # [B] position of each user in seed_gids
    pos_pos: torch.Tensor         # [B]
    neg_pos: torch.Tensor         # [B, k] or [1, k]
    blocks: list                  # L DGL blocks, input layer first
    input_gids: torch.Tensor      # src nodes of blocks[0] (seeds first)
    block_gids: list              # per block: gids of its src nodes

    @property
    def num_edges(self) -> int:
        return len(self.user_gid)


class EdgeMinibatchSampler:
    """Iterates over the graph store's training interactions in minibatches."""

    def __init__(self, graph: GraphStore, fanouts: list[int], batch_size: int,
                 negatives: NegativeSampler, seed: int = 0, shared_negatives: bool = False):
        self.shared_negatives = shared_negatives
        self.graph = graph
        self.fanouts = list(fanouts)
        self.batch_size = batch_size
        self.negatives = negatives
        self.seed = seed
        self.interactions = graph.interactions()

    @property
    def num_interactions(self) -> int:
        return len(self.interactions)

    def steps_per_epoch(self) -> int:
        return (self.num_interactions + self.batch_size - 1) // self.batch_size

    def epoch_order(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(step_seed(self.seed, epoch, 10 ** 6))
        return torch.randperm(self.num_interactions, generator=gen)

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[tuple[int, torch.Tensor]]:
        order = self.epoch_order(epoch)
        for step in range(start_step, self.steps_per_epoch()):
            yield step, order[step * self.batch_size:(step + 1) * self.batch_size]

    def sample(self, idx: torch.Tensor, gen: torch.Generator,
               hop_gen: torch.Generator | None = None) -> MiniBatch:
        """``gen`` draws the negatives; ``hop_gen`` is passed to every ``sample_block`` (see there)."""
        users, pos = self.interactions.take(idx)
        neg = self.negatives.sample(1 if self.shared_negatives else len(idx), gen)
        return self.sample_for(users, pos, neg, hop_gen)

    def sample_for(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                   hop_gen: torch.Generator | None = None) -> MiniBatch:
        """``neg``: [B, k] negatives per positive, or [1, k] shared by the whole minibatch."""
        b = len(users)
        bn, k = neg.shape
        seeds, inverse = torch.unique(torch.cat([users, pos, neg.reshape(-1)]), return_inverse=True)
        blocks, block_gids = [], []
        dst = seeds
        for fanout in reversed(self.fanouts):
            block, src = self.graph.sample_block(dst, fanout, exclude=(users, pos), gen=hop_gen)
            blocks.insert(0, block)
            block_gids.insert(0, src)
            dst = src
        return MiniBatch(users, pos, neg, seeds, inverse[:b], inverse[b:2 * b],
                         inverse[2 * b:].view(bn, k), blocks, dst, block_gids)
