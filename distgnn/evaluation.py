"""Evaluation: layer-wise full-neighbour inference, blocked full ranking, ranking metrics.

1. ``infer_all``: the final embedding of every node, one layer at a time over all nodes in chunks
   of ``node_batch`` (each chunk a full-neighbour block), so memory is O(nodes * dim) rather than
   the L-hop neighbourhood explosion of sampled inference.
2. ``rank_topk``: for users in blocks of ``user_batch``, scores against every item, the user's
   known items masked out, top-K kept; memory is O(user_batch * num_items). Which items are known
   is the LightGCN protocol applied to a train/valid/test split (``MASKED_SPLITS``): ranking for
   validation masks the training interactions; ranking for test masks training and validation
   interactions (both were seen before test time, so neither may count as a hit nor take a slot).
3. ``ranking_metrics``: per-user metrics averaged over users with at least one held-out item.
   Definitions follow the LightGCN/NGCF evaluation code:
   - Recall@K = hits in top-K / number of held-out items of the user;
   - Precision@K = hits / K;
   - NDCG@K = DCG / IDCG, DCG = sum over hit ranks r (0-based) of 1/log2(r+2), IDCG the DCG of
     min(K, #held-out) hits at the top;
   - HitRate@K = 1 if any hit; MRR@K = 1/(rank of first hit + 1), 0 if none in top-K;
   - coverage@K = distinct items recommended to the evaluated users / number of items;
   - novelty@K = mean over recommended items of -log2(item training degree / number of users).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from distgnn import format as fmt
from distgnn.graph_store import GraphStore


@dataclass
class IdSpace:
    """Sorted user and item gids, and positions (index) of gids among them."""

    user_gids: torch.Tensor
    item_gids: torch.Tensor

    @classmethod
    def from_book(cls, book: fmt.PartitionBook) -> "IdSpace":
        return cls(torch.from_numpy(book.user_gids()), torch.from_numpy(book.item_gids()))

    def user_index(self, gid: torch.Tensor) -> torch.Tensor:
        return torch.searchsorted(self.user_gids, gid)

    def item_index(self, gid: torch.Tensor) -> torch.Tensor:
        return torch.searchsorted(self.item_gids, gid)


@torch.no_grad()
def infer_all(model, graph: GraphStore, emb_store, node_batch: int = 16384,
              device: str | torch.device = "cpu") -> torch.Tensor:
    """Final embeddings of all gids [num_nodes, out_dim] (on CPU)."""
    from distgnn.model import sym_edge_weight

    model.eval()
    n = graph.num_nodes
    all_gids = torch.arange(n, dtype=torch.int64)
    h = torch.cat([emb_store.pull(all_gids[i:i + node_batch]).cpu() for i in range(0, n, node_batch)])
    layers_out = [h]
    use_norm = model.cfg.edge_norm == "sym"
    deg = graph.degrees(all_gids) if use_norm else None
    for li in range(len(model.convs)):
        nxt = None
        for i in range(0, n, node_batch):
            seeds = all_gids[i:i + node_batch]
            block, src = graph.full_block(seeds)
            ew = sym_edge_weight(block, deg[src], deg[seeds]).to(device) if use_norm else None
            out = model.layer(li, block.to(device), h[src].to(device), ew).cpu()
            if nxt is None:
                nxt = torch.empty(n, out.shape[1])
            nxt[i:i + node_batch] = out
        h = nxt
        layers_out.append(h)
    if model.cfg.layer_combine == "mean" and len(layers_out) > 1:
        h = torch.stack(layers_out, 0).mean(0)
    if model.cfg.score == "cosine":  # scores (and exported embeddings) are then plain dot products
        h = torch.nn.functional.normalize(h, dim=-1)
    return h


def csr_by_user(user_idx: torch.Tensor, item_idx: torch.Tensor, num_users: int):
    """(indptr, items) with the item indices of each user contiguous."""
    order = torch.argsort(user_idx, stable=True)
    items = item_idx[order]
    counts = torch.bincount(user_idx, minlength=num_users)
    indptr = torch.zeros(num_users + 1, dtype=torch.int64)
    indptr[1:] = torch.cumsum(counts, 0)
    return indptr, items


def _rows_of(indptr: torch.Tensor, items: torch.Tensor, users: torch.Tensor):
    """Flattened (row in batch, item index) pairs for a batch of user indices."""
    starts, ends = indptr[users], indptr[users + 1]
    lens = ends - starts
    rows = torch.repeat_interleave(torch.arange(len(users)), lens)
    offs = torch.arange(int(lens.sum())) - torch.repeat_interleave(torch.cumsum(lens, 0) - lens, lens)
    return rows, items[torch.repeat_interleave(starts, lens) + offs]


@torch.no_grad()
def rank_topk(user_emb: torch.Tensor, item_emb: torch.Tensor, train_indptr: torch.Tensor,
              train_items: torch.Tensor, users: torch.Tensor, k: int, user_batch: int = 1024,
              device: str | torch.device = "cpu"):
    """Top-k item indices and scores for each user index in ``users`` (train items excluded)."""
    k = min(k, item_emb.shape[0])
    item_emb_d = item_emb.to(device)
    top_idx, top_score = [], []
    for i in range(0, len(users), user_batch):
        ub = users[i:i + user_batch]
        scores = user_emb[ub].to(device) @ item_emb_d.T
        rows, cols = _rows_of(train_indptr, train_items, ub)
        scores[rows.to(device), cols.to(device)] = -math.inf
        s, idx = torch.topk(scores, k, dim=1)
        top_idx.append(idx.cpu())
        top_score.append(s.cpu())
    if not top_idx:
        return torch.zeros(0, k, dtype=torch.int64), torch.zeros(0, k)
    return torch.cat(top_idx), torch.cat(top_score)


def ranking_metrics(top_items: torch.Tensor, test_indptr: torch.Tensor, test_items: torch.Tensor,
                    users: torch.Tensor, k: int, num_items: int,
                    item_degree: torch.Tensor | None = None, num_users: int | None = None) -> dict:
    """Metrics@k for users (indices) with top_items [len(users), >=k] and their held-out items."""
    top = top_items[:, :k]
    n = len(users)
    if n == 0:
        return {f"{m}@{k}": 0.0 for m in ("recall", "ndcg", "precision", "hit_rate", "mrr",
                                          "coverage", "novelty")} | {"num_users": 0}
    hits = torch.empty(n, k, dtype=torch.float64)                      # [n, k]
    chunk = max(1, (1 << 26) // max(num_items, 1))                      # bounded: ~64 MB of bools
    for i in range(0, n, chunk):
        rows, cols = _rows_of(test_indptr, test_items, users[i:i + chunk])
        truth = torch.zeros(len(users[i:i + chunk]), num_items, dtype=torch.bool)
        truth[rows, cols] = True
        hits[i:i + chunk] = truth.gather(1, top[i:i + chunk]).to(torch.float64)
    num_true = (test_indptr[users + 1] - test_indptr[users]).to(torch.float64)
    discount = 1.0 / torch.log2(torch.arange(k, dtype=torch.float64) + 2)
    dcg = (hits * discount).sum(1)
    ideal_len = torch.clamp(num_true, max=k).to(torch.int64)
    idcg = torch.cumsum(discount, 0)[(ideal_len - 1).clamp(min=0)]
    n_hits = hits.sum(1)
    first = torch.where(hits.any(1), hits.argmax(1).to(torch.float64), torch.full((n,), math.inf,
                                                                                    dtype=torch.float64))
    out = {
        f"recall@{k}": float((n_hits / num_true).mean()),
        f"ndcg@{k}": float((dcg / idcg).mean()),
        f"precision@{k}": float((n_hits / k).mean()),
        f"hit_rate@{k}": float((n_hits > 0).to(torch.float64).mean()),
        f"mrr@{k}": float((1.0 / (first + 1)).mean()),
        f"coverage@{k}": float(len(torch.unique(top)) / num_items),
    }
    if item_degree is not None and num_users:
        p = item_degree.to(torch.float64).clamp(min=1) / num_users
        out[f"novelty@{k}"] = float((-torch.log2(p))[top].mean())
    out["num_users"] = n
    return out


# Held-out splits whose interactions are masked, besides the training ones, when ranking for a split.
MASKED_SPLITS = {"valid": (), "test": ("valid",)}


class Evaluator:
    """Holds the id space, the known interactions to mask and the held-out set of one split.

    ``train_indptr``/``train_items`` is the mask: the training interactions, plus, per
    ``MASKED_SPLITS``, the held-out splits that precede ``split`` (for test: validation, if the
    partition directory has one). ``item_degree`` (novelty) counts training interactions only.
    Only the files of ``split`` and of the splits it masks are opened: validation during training
    never reads ``targets/test.parquet``."""

    def __init__(self, graph: GraphStore, split: str, max_users: int | None = None, seed: int = 0):
        self.graph = graph
        self.ids = IdSpace.from_book(graph.book)
        self.num_users, self.num_items = len(self.ids.user_gids), len(self.ids.item_gids)
        u, i = self._all_train_interactions(graph)
        self.item_degree = torch.bincount(self.ids.item_index(i), minlength=self.num_items)
        self.split = split
        self.masked_splits = tuple(s for s in MASKED_SPLITS[split] if s in graph.manifest.get("heldout", {}))
        for s in self.masked_splits:
            mu, mi = self._targets(graph, s)
            u, i = torch.cat([u, mu]), torch.cat([i, mi])
        self.train_indptr, self.train_items = csr_by_user(self.ids.user_index(u), self.ids.item_index(i),
                                                          self.num_users)
        tu, ti = self._targets(graph, split)
        self.test_indptr, self.test_items = csr_by_user(self.ids.user_index(tu), self.ids.item_index(ti),
                                                        self.num_users)
        self.eval_users = torch.nonzero(self.test_indptr[1:] > self.test_indptr[:-1]).flatten()
        if max_users is not None:  # the same seeded sample as the sharded evaluator's
            from distgnn.inference import sample_users

            keep = sample_users(self.ids.user_gids[self.eval_users].numpy(), max_users, self.num_users, seed)
            self.eval_users = self.eval_users[torch.from_numpy(keep)]

    @staticmethod
    def _targets(graph: GraphStore, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        tu, ti = fmt.read_targets(graph.root, split)
        return torch.from_numpy(np.array(tu, np.int64)), torch.from_numpy(np.array(ti, np.int64))

    @staticmethod
    def _all_train_interactions(graph: GraphStore):
        if len(getattr(graph, "parts", [])) == graph.book.num_parts:
            return graph.train_interactions()
        us, its = [], []
        for p in range(graph.book.num_parts):
            s, d = fmt.read_part_edges(graph.root, p)
            m = graph.book.ntype_of(d) == fmt.USER
            us.append(d[m])
            its.append(s[m])
        return torch.from_numpy(np.concatenate(us)), torch.from_numpy(np.concatenate(its))

    def split_embeddings(self, emb: torch.Tensor):
        return emb[self.ids.user_gids], emb[self.ids.item_gids]

    def evaluate(self, emb: torch.Tensor, k: int, user_batch: int = 1024,
                 device: str | torch.device = "cpu") -> dict:
        user_emb, item_emb = self.split_embeddings(emb)
        top, _ = rank_topk(user_emb, item_emb, self.train_indptr, self.train_items, self.eval_users,
                           k, user_batch, device)
        return ranking_metrics(top, self.test_indptr, self.test_items, self.eval_users, k,
                               self.num_items, self.item_degree, self.num_users)
