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
from typing import Iterator

import torch

from distgnn.graph_store import GraphStore


def step_seed(seed: int, epoch: int, step: int) -> int:
    return (seed * 1_000_003 + epoch * 100_003 + step) % (2 ** 31 - 1)


class NegativeSampler:
    """k negatives per positive: uniform over items, ``pop_fraction`` of them by popularity."""

    def __init__(self, item_gids: torch.Tensor, item_degrees: torch.Tensor, k: int,
                 pop_fraction: float = 0.0, alpha: float = 0.75,
                 local_item_gids: torch.Tensor | None = None, local_fraction: float = 0.0):
        self.item_gids = item_gids
        self.k = k
        self.num_pop = int(round(k * pop_fraction))
        # Partition-local negatives (PyTorch-BigGraph's trick): drawn from the trainer's own
        # partition, so their embeddings and neighbourhoods are local.
        self.local_item_gids = local_item_gids
        self.num_local = (int(round((k - self.num_pop) * local_fraction))
                          if local_item_gids is not None and len(local_item_gids) else 0)
        weights = item_degrees.to(torch.float64).clamp(min=0) ** alpha
        cdf = torch.cumsum(weights, 0)
        self.cdf = (cdf / cdf[-1]).to(torch.float64)

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """Negative item gids, shape [n, k]."""
        num_uni = self.k - self.num_pop - self.num_local
        idx = torch.randint(len(self.item_gids), (n, num_uni), generator=gen)
        if self.num_pop:
            u = torch.rand(n, self.num_pop, generator=gen, dtype=torch.float64)
            pop = torch.searchsorted(self.cdf, u).clamp_(max=len(self.item_gids) - 1)
            idx = torch.cat([idx, pop], 1)
        neg = self.item_gids[idx]
        if self.num_local:
            local = torch.randint(len(self.local_item_gids), (n, self.num_local), generator=gen)
            neg = torch.cat([neg, self.local_item_gids[local]], 1)
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
        self.user_gid, self.item_gid = graph.train_interactions()

    @property
    def num_interactions(self) -> int:
        return len(self.user_gid)

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
        users = self.user_gid[idx]
        pos = self.item_gid[idx]
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
