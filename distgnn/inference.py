"""Sharded layer-wise inference and ranking: every worker computes and ranks only its own partitions.

``distgnn.evaluation.infer_all`` keeps every node's embedding of every layer in one process; at
100M interactions (8M nodes) and beyond that is tens of GB. Here the work is split the way
training is: worker ``r`` of ``N`` owns the partitions ``r, r + N, ...`` (``assigned_parts``) and

1. **layer 0**: writes its partitions' layer-0 rows (from the parameter server during training,
   from the checkpoint's own shard files in ``evaluate``/``recommend``) and their degrees;
2. **layer l -> l+1**: for its owned nodes, in chunks of ``node_batch``, one full-neighbour block
   from its own partition's in-edges (``PartitionCSC``: every in-edge of an owned node is stored
   in the owner's partition, docs/format.md), the halo rows read from the other partitions'
   layer-l files; writes layer l+1 for its owned nodes;
3. **final**: combines its own layers (mean or last, then cosine normalisation, as ``infer_all``).

Between stages every worker waits for the others (a barrier with a deadline: ``dist.barrier``
inside Ray Train, the driver's ``get_with_deadline`` for the evaluation actors).

**Where the rows live between stages** (the issue left the choice open): per-layer files,
``WORK/<stage>/part-PPPPP.npy`` (float32, one row per owned node, gid order), written atomically
and read memory-mapped. A worker holds its own partitions' rows plus one chunk's halo rows;
other partitions' rows are paged in from the files when a block needs them. Why files and not
the parameter-server shards: inference reads each layer once in a few large sequential-ish
gathers, the PS shards would hold a second table per layer in actor memory, and the run
directory is already on storage every node reads (checkpoints live there). The files are
scratch: the caller removes ``WORK`` at the end.

4. **ranking** (``rank_worker_users``): each worker ranks its own users (those with held-out
   items in the split) against every item: the items' final rows are all-gathered into memory
   when they fit in ``item_budget_bytes``, otherwise streamed block by block from the final files
   with a running top-K merge. Known items are masked (training interactions from the worker's own
   CSC rows, plus the held-out splits ``evaluation.MASKED_SPLITS`` names, read filtered to the
   worker's user ranges). Each worker returns **sums** of the per-user metrics; the driver adds
   them up and divides (``combine_sums``), so the result equals single-process evaluation.

``eval.protocol: sampled`` ranks each user's held-out items against ``num_negatives`` items drawn
uniformly (seeded by the user) from the items the user has not interacted with, as GraphStorm
does for catalogues too big for full ranking; ``eval.max_users`` evaluates a seeded sample of
users (each kept with probability max_users / num_users, by a hash of its gid, so the sample does
not depend on how the users are sharded). The protocol that ran is reported with the metrics.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow.parquet as pq
import torch

from distgnn import atomic
from distgnn import format as fmt

# Item rows are gathered into memory when they fit this (eval.item_budget_bytes' default).
DEFAULT_ITEM_BUDGET = 1 << 30
# One user batch's score matrix against one item block is at most this: the block's rows are
# chosen from the user batch (4.7M items x 2048 users would be 38 GB in one matrix).
SCORE_BUDGET = 1 << 28


def assigned_parts(rank: int, num_workers: int, num_parts: int) -> list[int]:
    """The partitions worker ``rank`` of ``num_workers`` owns: ``rank, rank + N, ...``."""
    return list(range(rank, num_parts, num_workers))


# --- per-stage row files ------------------------------------------------------------------------
class StageFiles:
    """One stage's rows (a layer, the degrees, the final embeddings): one ``.npy`` per partition
    with a row per owned node in gid order. Written atomically by the owner, read memory-mapped
    by anyone."""

    def __init__(self, work: str | Path, stage: str, book: fmt.PartitionBook):
        self.dir = Path(work) / stage
        self.book = book
        self._maps: dict[int, np.ndarray] = {}

    def path(self, part: int) -> Path:
        return self.dir / f"part-{part:05d}.npy"

    def write(self, part: int, rows: np.ndarray) -> None:
        n = int(self.book.gid_end[part] - self.book.gid_start[part])
        if rows.shape[0] != n:
            raise ValueError(f"stage {self.dir.name} part {part}: {rows.shape[0]} rows for {n} owned nodes")
        self.dir.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_file(self.path(part)) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(rows))

    def rows(self, part: int) -> np.ndarray:
        """Partition ``part``'s rows, memory-mapped (read-only)."""
        if part not in self._maps:
            path = self.path(part)
            if not path.is_file():
                raise RuntimeError(f"{path} is missing: the worker owning partition {part} has not "
                                   f"finished stage {self.dir.name}")
            self._maps[part] = np.load(path, mmap_mode="r")
        return self._maps[part]

    def gather(self, gids: np.ndarray) -> np.ndarray:
        """Rows of arbitrary gids, in the given order (one read per owning partition)."""
        gids = np.asarray(gids, dtype=np.int64)
        parts = self.book.part_of(gids)
        first = self.rows(int(parts[0])) if len(gids) else None
        shape = (len(gids),) + (first.shape[1:] if first is not None else ())
        out = np.empty(shape, dtype=first.dtype if first is not None else np.float32)
        order = np.argsort(parts, kind="stable")
        sorted_parts = parts[order]
        bounds = np.searchsorted(sorted_parts, np.arange(self.book.num_parts + 1))
        for p in range(self.book.num_parts):
            lo, hi = bounds[p], bounds[p + 1]
            if hi > lo:
                sel = order[lo:hi]
                out[sel] = self.rows(p)[gids[sel] - self.book.gid_start[p]]
        return out

    def close(self) -> None:
        self._maps.clear()


# --- inference --------------------------------------------------------------------------------
@dataclass
class ShardedInference:
    """The inference work of one worker over its partitions ``csc`` (part -> ``PartitionCSC``)."""

    model: torch.nn.Module
    book: fmt.PartitionBook
    csc: dict
    work: Path
    node_batch: int = 16384
    device: torch.device | str = "cpu"
    progress: Callable[[str], None] | None = None

    def stages(self) -> list[str]:
        """Stage names in order; a barrier must separate consecutive stages."""
        return ["layer-0"] + [f"layer-{i + 1}" for i in range(len(self.model.convs))] + ["final"]

    def run_stage(self, stage: str, layer0: Callable[[int], np.ndarray] | None = None) -> None:
        if stage == "layer-0":
            self.write_layer0(layer0)
        elif stage == "final":
            self.write_final()
        else:
            self.write_layer(int(stage.split("-")[1]) - 1)

    def write_layer0(self, layer0: Callable[[int], np.ndarray]) -> None:
        """Layer-0 rows of each own partition (``layer0(part)`` -> [owned, dim]) and its degrees."""
        rows = StageFiles(self.work, "layer-0", self.book)
        deg = StageFiles(self.work, "degrees", self.book)
        for p, csc in self.csc.items():
            rows.write(p, np.asarray(layer0(p), dtype=np.float32))
            deg.write(p, np.diff(np.asarray(csc.indptr)).astype(np.int64))

    @torch.no_grad()
    def write_layer(self, li: int) -> None:
        """Layer ``li + 1`` of every owned node from layer ``li`` (all partitions' files)."""
        from distgnn.model import sym_edge_weight
        from distgnn.ray_runtime.graph_shard import edges_to_block

        model = self.model
        model.eval()
        prev = StageFiles(self.work, f"layer-{li}", self.book)
        deg = StageFiles(self.work, "degrees", self.book)
        out_files = StageFiles(self.work, f"layer-{li + 1}", self.book)
        use_norm = model.cfg.edge_norm == "sym"
        for p, csc in self.csc.items():
            lo, hi = int(self.book.gid_start[p]), int(self.book.gid_end[p])
            out = None
            for a in range(lo, hi, self.node_batch):
                seeds = np.arange(a, min(a + self.node_batch, hi), dtype=np.int64)
                src, dst = csc.sample(seeds, -1)
                block, src_gids = edges_to_block(torch.from_numpy(seeds), torch.from_numpy(src),
                                                 torch.from_numpy(dst))
                sg = src_gids.numpy()
                h_src = torch.from_numpy(prev.gather(sg))
                ew = None
                if use_norm:
                    ew = sym_edge_weight(block, torch.from_numpy(deg.gather(sg)),
                                         torch.from_numpy(deg.gather(seeds))).to(self.device)
                h = model.layer(li, block.to(self.device), h_src.to(self.device), ew).cpu().numpy()
                if out is None:
                    out = np.empty((hi - lo, h.shape[1]), dtype=np.float32)
                out[a - lo:a - lo + len(seeds)] = h
            if out is None:  # a partition with no nodes
                out = np.zeros((0, model.cfg.out_dim), dtype=np.float32)
            out_files.write(p, out)
            if self.progress:
                self.progress(f"layer {li + 1} of partition {p}")
        prev.close()
        deg.close()

    def write_final(self) -> None:
        """The exported/scored embedding: layers combined, normalised for cosine scores."""
        num_layers = len(self.model.convs)
        combine = self.model.cfg.layer_combine
        final = StageFiles(self.work, "final", self.book)
        for p in self.csc:
            if combine == "mean" and num_layers > 0:
                acc = None
                for li in range(num_layers + 1):
                    r = StageFiles(self.work, f"layer-{li}", self.book).rows(p)
                    acc = np.array(r, dtype=np.float64) if acc is None else acc + r
                h = (acc / (num_layers + 1)).astype(np.float32)
            else:
                h = np.array(StageFiles(self.work, f"layer-{num_layers}", self.book).rows(p))
            if self.model.cfg.score == "cosine":
                h = torch.nn.functional.normalize(torch.from_numpy(h), dim=-1).numpy()
            final.write(p, h)


# --- users and their known / held-out items ---------------------------------------------------
def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a fixed, well-mixed hash of int64 keys (numpy uint64 arithmetic)."""
    z = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z


def sample_users(user_gids: np.ndarray, max_users: int | None, num_users: int, seed: int) -> np.ndarray:
    """Mask of users kept by ``eval.max_users``: each with probability max_users / num_users, by a
    hash of (seed, gid), so the same users are kept however the users are sharded."""
    if max_users is None or max_users >= num_users:
        return np.ones(len(user_gids), dtype=bool)
    with np.errstate(over="ignore"):
        h = _mix64(np.asarray(user_gids, np.int64).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
                   + np.uint64(seed & 0xFFFFFFFF))
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53) < max_users / num_users


def read_targets_in(root: str | Path, split: str, ranges: Sequence[tuple[int, int]]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(user_gid, item_gid) of a held-out split, only rows whose user is in one of ``ranges``
    (the file is sorted by user, so row-group statistics skip the rest)."""
    path = Path(root) / fmt.targets_path(split)
    if not path.is_file():
        from distgnn.errors import UserError
        raise UserError(f"{root}: {fmt.targets_path(split)} is missing, but reading the '{split}' "
                        f"split needs it; put the file back (or re-run 'distgnn partition create')")
    fmt.verify_once(root, fmt.targets_path(split))
    us, its = [], []
    for lo, hi in ranges:
        if hi <= lo:
            continue
        t = pq.read_table(path, columns=["user_gid", "item_gid"],
                          filters=[("user_gid", ">=", int(lo)), ("user_gid", "<", int(hi))])
        us.append(t.column("user_gid").to_numpy())
        its.append(t.column("item_gid").to_numpy())
    if not us:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(us), np.concatenate(its)


@dataclass
class UserTable:
    """CSR of item gids per user, for the users of some gid ranges (``users`` sorted)."""

    users: np.ndarray
    indptr: np.ndarray
    items: np.ndarray

    @classmethod
    def from_pairs(cls, users: np.ndarray, u: np.ndarray, i: np.ndarray) -> "UserTable":
        pos = np.searchsorted(users, u)
        order = np.lexsort((i, pos))
        counts = np.bincount(pos, minlength=len(users))
        indptr = np.zeros(len(users) + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        return cls(users, indptr, i[order].astype(np.int64))

    def rows_of(self, sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row in ``sel``, item gid) pairs of the users at positions ``sel``."""
        starts, ends = self.indptr[sel], self.indptr[sel + 1]
        lens = ends - starts
        rows = np.repeat(np.arange(len(sel)), lens)
        offs = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
        return rows, self.items[np.repeat(starts, lens) + offs]


def known_and_truth(root: str | Path, manifest: dict, book: fmt.PartitionBook, csc: dict, split: str | None,
                    masked_splits: Sequence[str]) -> tuple[np.ndarray, UserTable, UserTable | None]:
    """(all users of the own partitions, known items to mask, held-out items of ``split``).

    Known items: the training interactions (the item -> user edges of the own CSC rows) plus the
    held-out splits ``masked_splits``; all read for the own user ranges only."""
    ranges = [(int(book.gid_start[p]), int(book.item_gid_start[p])) for p in sorted(csc)]
    users = np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in ranges]) if ranges else np.zeros(0, np.int64)
    ku, ki = [], []
    for p in sorted(csc):
        c = csc[p]
        n_users = int(book.item_gid_start[p] - book.gid_start[p])
        ip = np.asarray(c.indptr[:n_users + 1])
        ku.append(np.repeat(np.arange(book.gid_start[p], book.item_gid_start[p], dtype=np.int64), np.diff(ip)))
        ki.append(np.asarray(c.indices[:ip[-1]], dtype=np.int64))
    for s in masked_splits:
        mu, mi = read_targets_in(root, s, ranges)
        ku.append(mu)
        ki.append(mi)
    known = UserTable.from_pairs(users, np.concatenate(ku) if ku else np.zeros(0, np.int64),
                                 np.concatenate(ki) if ki else np.zeros(0, np.int64))
    truth = None
    if split is not None:
        tu, ti = read_targets_in(root, split, ranges)
        truth = UserTable.from_pairs(users, tu, ti)
    return users, known, truth


# --- ranking ------------------------------------------------------------------------------------
class ItemRows:
    """The items' final rows as score blocks of consecutive item gids: gathered into memory when
    they fit in ``budget`` bytes, else memory-mapped from the final files; either way each block
    has at most ``block_rows`` rows, so one user batch's score matrix stays within
    ``SCORE_BUDGET`` (``block_rows_for``)."""

    def __init__(self, final: StageFiles, book: fmt.PartitionBook, budget: int = DEFAULT_ITEM_BUDGET,
                 block_rows: int = 1 << 16):
        self.book = book
        self.blocks: list[tuple[int, np.ndarray]] = []  # (first item gid, rows)
        dim = final.rows(0).shape[1]
        num_items = int((book.gid_end - book.item_gid_start).sum())
        self.in_memory = num_items * dim * 4 <= budget
        for p in range(book.num_parts):
            a = int(book.item_gid_start[p] - book.gid_start[p])
            r = final.rows(p)
            if self.in_memory:  # all-gathered: a private copy, no page faults while ranking
                r = np.array(r[a:])
                a = 0
                first = int(book.item_gid_start[p])
            else:
                first = int(book.gid_start[p])
            for s in range(a, r.shape[0], block_rows):
                self.blocks.append((first + s - a if self.in_memory else first + s,
                                    r[s:min(s + block_rows, r.shape[0])]))


def block_rows_for(user_batch: int) -> int:
    """Item rows per score block: ``user_batch x rows x 4 B`` within ``SCORE_BUDGET``."""
    return max(1024, SCORE_BUDGET // (4 * max(user_batch, 1)))


def read_only_tensor(arr: np.ndarray) -> torch.Tensor:
    """A tensor over a read-only array (a memory-mapped stage file) without a copy. torch warns
    that it cannot protect such memory from writes; the blocks are only read, so the warning,
    which a user would see once per worker, says nothing here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(arr))


@torch.no_grad()
def topk_blocked(user_rows: np.ndarray, items: ItemRows, known_rows: np.ndarray, known_items: np.ndarray,
                 k: int, device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Top-k item gids and scores for a batch of users over every item, known items masked;
    a running top-k merge over the item blocks."""
    u = torch.from_numpy(np.ascontiguousarray(user_rows, dtype=np.float32)).to(device)
    n = u.shape[0]
    best_s = torch.full((n, 0), -math.inf)
    best_i = torch.zeros((n, 0), dtype=torch.int64)
    for first, rows in items.blocks:
        block = read_only_tensor(rows).to(device)
        scores = u @ block.T
        m = (known_items >= first) & (known_items < first + block.shape[0])
        if m.any():
            scores[torch.from_numpy(known_rows[m]).to(device),
                   torch.from_numpy(known_items[m] - first).to(device)] = -math.inf
        kk = min(k, block.shape[0])
        s, idx = torch.topk(scores, kk, dim=1)
        best_s = torch.cat([best_s, s.cpu()], 1)
        best_i = torch.cat([best_i, idx.cpu() + first], 1)
        if best_s.shape[1] > k:
            best_s, pos = torch.topk(best_s, k, dim=1)
            best_i = best_i.gather(1, pos)
    if best_s.shape[1] > 1:  # a stable order: by score, descending
        best_s, pos = torch.sort(best_s, dim=1, descending=True, stable=True)
        best_i = best_i.gather(1, pos)
    return best_i.numpy(), best_s.numpy()


METRIC_KEYS = ("recall", "ndcg", "precision", "hit_rate", "mrr")


def metric_sums(top_gids: np.ndarray, truth_rows: np.ndarray, truth_items: np.ndarray, num_true: np.ndarray,
                k: int) -> dict[str, float]:
    """Sums over the batch's users of the per-user metrics of ``evaluation.ranking_metrics``."""
    n = top_gids.shape[0]
    top = top_gids[:, :k]
    # hits: is top[r, j] among user r's held-out items? (sorted pair keys, one searchsorted)
    key_truth = np.sort(truth_rows.astype(np.int64) * (1 << 40) + truth_items)
    key_top = np.repeat(np.arange(n, dtype=np.int64), top.shape[1]) * (1 << 40) + top.reshape(-1)
    pos = np.searchsorted(key_truth, key_top)
    pos_c = np.minimum(pos, max(len(key_truth) - 1, 0))
    hits = (len(key_truth) > 0) & (key_truth[pos_c] == key_top) if len(key_truth) else np.zeros(len(key_top), bool)
    hits = hits.reshape(n, top.shape[1]).astype(np.float64)
    kk = top.shape[1]
    discount = 1.0 / np.log2(np.arange(kk, dtype=np.float64) + 2)
    dcg = (hits * discount).sum(1)
    ideal = np.minimum(num_true, kk).astype(np.int64)
    idcg = np.cumsum(discount)[np.maximum(ideal - 1, 0)]
    n_hits = hits.sum(1)
    any_hit = hits.any(1)
    first = np.where(any_hit, hits.argmax(1), np.inf)
    return {"recall": float((n_hits / num_true).sum()), "ndcg": float((dcg / idcg).sum()),
            "precision": float((n_hits / k).sum()), "hit_rate": float(any_hit.sum()),
            "mrr": float((1.0 / (first + 1)).sum()), "num_users": n}


@dataclass
class RankResult:
    """A worker's share of an evaluation: metric sums, the recommended item set, novelty sum."""

    sums: dict[str, float] = field(default_factory=dict)
    rec_items: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    novelty_sum: float = 0.0
    novelty_count: int = 0


def rank_worker_users(inf: ShardedInference, root: str | Path, manifest: dict, split: str, k: int,
                      masked_splits: Sequence[str], user_batch: int = 1024, protocol: str = "full",
                      num_negatives: int = 100, max_users: int | None = None, seed: int = 0,
                      item_budget: int = DEFAULT_ITEM_BUDGET) -> RankResult:
    """Rank this worker's users that have held-out items in ``split``; return metric sums."""
    book = inf.book
    final = StageFiles(inf.work, "final", book)
    deg = StageFiles(inf.work, "degrees", book)
    users, known, truth = known_and_truth(root, manifest, book, inf.csc, split, masked_splits)
    num_users = int((book.item_gid_start - book.gid_start).sum())
    num_items = int((book.gid_end - book.item_gid_start).sum())
    has = np.diff(truth.indptr) > 0
    keep = has & sample_users(users, max_users, num_users, seed)
    sel_all = np.nonzero(keep)[0]
    result = RankResult(sums=dict.fromkeys(METRIC_KEYS, 0.0) | {"num_users": 0})
    items = ItemRows(final, book, item_budget, block_rows_for(user_batch)) if protocol == "full" else None
    rec_sets = []
    for a in range(0, len(sel_all), user_batch):
        sel = sel_all[a:a + user_batch]
        urows = final.gather(users[sel])
        t_rows, t_items = truth.rows_of(sel)
        if protocol == "full":
            k_rows, k_items = known.rows_of(sel)
            top, _ = topk_blocked(urows, items, k_rows, k_items, k, inf.device)
        else:
            top = _sampled_topk(urows, users[sel], known, sel, truth, final, book, num_items,
                                num_negatives, k, seed)
        num_true = np.diff(truth.indptr)[sel].astype(np.float64)
        s = metric_sums(top, t_rows, t_items, num_true, k)
        for key in METRIC_KEYS:
            result.sums[key] += s[key]
        result.sums["num_users"] += s["num_users"]
        top_k = top[:, :k]
        rec_sets.append(np.unique(top_k))
        d = deg.gather(top_k.reshape(-1)).astype(np.float64)
        result.novelty_sum += float((-np.log2(np.maximum(d, 1) / num_users)).sum())
        result.novelty_count += top_k.size
    if rec_sets:
        result.rec_items = np.unique(np.concatenate(rec_sets))
    final.close()
    deg.close()
    return result


def _sampled_topk(urows: np.ndarray, user_gids: np.ndarray, known: UserTable, sel: np.ndarray,
                  truth: UserTable, final: StageFiles, book: fmt.PartitionBook, num_items: int,
                  num_negatives: int, k: int, seed: int) -> np.ndarray:
    """Top-k of each user's candidates: its held-out items and ``num_negatives`` items drawn
    uniformly (seeded by the user) among those it has neither trained on nor held out."""
    starts = book.item_gid_start
    counts = book.gid_end - book.item_gid_start
    cum = np.concatenate([[0], np.cumsum(counts)])
    out = np.empty((len(sel), k), dtype=np.int64)
    for r, (row_i, u) in enumerate(zip(sel, user_gids)):
        excl = np.concatenate([known.items[known.indptr[row_i]:known.indptr[row_i + 1]],
                               truth.items[truth.indptr[row_i]:truth.indptr[row_i + 1]]])
        rng = np.random.default_rng([seed, int(u)])
        negs = np.zeros(0, np.int64)
        while len(negs) < num_negatives:
            pos = rng.integers(0, num_items, size=2 * num_negatives)
            p = np.searchsorted(cum, pos, side="right") - 1
            cand = starts[p] + (pos - cum[p])
            cand = cand[~np.isin(cand, excl)]
            negs = np.unique(np.concatenate([negs, cand]))[:num_negatives]
            if num_items - len(excl) <= num_negatives:  # a tiny catalogue: take what there is
                break
        pos_items = truth.items[truth.indptr[row_i]:truth.indptr[row_i + 1]]
        cands = np.concatenate([pos_items, negs])
        scores = final.gather(cands) @ urows[r]
        order = np.argsort(-scores, kind="stable")[:k]
        top = cands[order]
        if len(top) < k:  # fewer candidates than k: pad with a gid that is never a hit
            top = np.concatenate([top, np.full(k - len(top), -1, np.int64)])
        out[r] = top
    return out


def combine_sums(results: Sequence[RankResult], k: int, num_items: int) -> dict:
    """The workers' sums -> the metrics of ``evaluation.ranking_metrics`` (means over users)."""
    n = sum(r.sums.get("num_users", 0) for r in results)
    out: dict = {}
    for key in METRIC_KEYS:
        out[f"{key}@{k}"] = float(sum(r.sums[key] for r in results) / n) if n else 0.0
    rec = np.unique(np.concatenate([r.rec_items for r in results])) if results else np.zeros(0)
    rec = rec[rec >= 0]
    out[f"coverage@{k}"] = float(len(rec) / num_items) if n else 0.0
    cnt = sum(r.novelty_count for r in results)
    out[f"novelty@{k}"] = float(sum(r.novelty_sum for r in results) / cnt) if cnt else 0.0
    out["num_users"] = int(n)
    return out


def work_dir(base: str | Path, tag: str) -> Path:
    """A fresh scratch directory for one inference, named as ``atomic.temp_name`` names
    temporaries, so ``atomic.sweep_stale`` removes a dead run's leftovers and spares a live one's."""
    p = atomic.temp_name(Path(base) / f"infer-{tag}")
    p.mkdir(parents=True, exist_ok=True)
    return p
