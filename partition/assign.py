"""Assign: node -> partition, as one int array over the raw node space (users, then items).

Three assigners over the on-disk ``Graph`` (``partition/graph.py``); each returns ``part[raw]``
and writes nothing, so dispatch turns any of them into shards:

* ``random``: users and items dealt out separately, the baseline.
* ``metis`` on the **in-memory** path: the whole bidirected graph handed to METIS
  (``partition/metis.py``) with four balance constraints (users, items, user degree, item degree,
  as DistDGL recommends).
* ``metis`` on the **multilevel** path (docs/architecture.md D15): size-constrained label
  propagation coarsens the graph while streaming its CSR from disk, further levels coarsen in
  memory until the graph is small, METIS partitions the coarsest graph with vertex weights (the
  four constraints summed over each cluster) and edge weights (fine edges between two clusters),
  and the assignment is projected back and refined level by level with a greedy k-way pass that
  respects all four constraints. Memory: a few arrays over nodes plus one CSR chunk.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from partition import kernels, metis
from partition.graph import SIDES, Graph

NCON = 4                      # users, items, user degree, item degree
IMBALANCE = 1.03              # per constraint, as DGL's METIS default (ufactor 30)


@dataclass
class AssignOptions:
    num_parts: int
    seed: int = 0
    chunk_entries: int = 1 << 24       # CSR entries per streamed chunk
    lp_rounds: int = 2                 # label-propagation sweeps per level (3 measured no better)
    coarse_target: int = 200_000       # stop coarsening below this many clusters
    max_cluster_fraction: float = 1 / 32   # cluster weight cap, of one partition's weight
    refine_rounds: int = 3
    metis_ncuts: int = 8                   # METIS runs on the coarsest graph; the best cut is kept
    coarse_budget_entries: int = 1 << 28   # directed entries of the first coarse graph kept in memory
    progress: bool = True
    info: dict = field(default_factory=dict)   # filled with what ran (levels, sizes, cuts)


def fine_vertex_weights(graph: Graph, labels: np.ndarray | None = None, size: int = 0) -> np.ndarray:
    """[n, 4] int64 constraint weights, (users, items, user degree, item degree), of the fine
    nodes (``labels`` None) or summed per cluster/partition ``labels[raw]`` (``size`` groups),
    without an [N, 4] array over all fine nodes."""
    deg = graph.degrees()
    U = graph.num_users
    if labels is None:
        w = np.zeros((graph.num_nodes, NCON), dtype=np.int64)
        w[:U, 0] = 1
        w[U:, 1] = 1
        w[:U, 2] = deg[:U]
        w[U:, 3] = deg[U:]
        return w
    w = np.zeros((size, NCON), dtype=np.int64)
    w[:, 0] = np.bincount(labels[:U], minlength=size)
    w[:, 1] = np.bincount(labels[U:], minlength=size)
    w[:, 2] = np.bincount(labels[:U], weights=deg[:U], minlength=size).astype(np.int64)
    w[:, 3] = np.bincount(labels[U:], weights=deg[U:], minlength=size).astype(np.int64)
    return w


def assign_random(graph: Graph, opts: AssignOptions) -> np.ndarray:
    rng = np.random.default_rng(opts.seed)
    user_part = rng.permutation(graph.num_users) % opts.num_parts
    item_part = rng.permutation(graph.num_items) % opts.num_parts
    return np.concatenate([user_part, item_part]).astype(np.int16)


def _full_csr(graph: Graph) -> tuple[np.ndarray, np.ndarray]:
    """The bidirected graph as one symmetric CSR over all raw nodes, in memory (int32 ids)."""
    U, E = graph.num_users, graph.num_edges
    up, ip = graph.indptr("user"), graph.indptr("item")
    indptr = np.concatenate([up, E + ip[1:]])
    indices = np.empty(2 * E, dtype=np.int32)
    indices[:E] = graph.scratch.load("user_indices.npy")
    indices[:E] += np.int32(U)
    indices[E:] = graph.scratch.load("item_indices.npy")
    return indptr, indices


def assign_metis_in_memory(graph: Graph, opts: AssignOptions) -> np.ndarray:
    """METIS on the whole graph (about 45 bytes per directed edge at peak, measured)."""
    indptr, indices = _full_csr(graph)
    part, cut = metis.part_graph_kway(indptr, indices, opts.num_parts, fine_vertex_weights(graph),
                                      None, IMBALANCE, opts.seed)
    del indptr, indices
    part = part.astype(np.int16)
    moves = _refine_fine(graph, part, opts, np.random.default_rng(opts.seed))
    opts.info.update({"path": "in-memory", "metis_nodes": graph.num_nodes,
                      "metis_edges": graph.num_edges, "metis_cut": cut, "refine_moves": [moves]})
    return part


def _max_loads(graph: Graph, k: int) -> np.ndarray:
    totals = np.array([graph.num_users, graph.num_items, graph.num_edges, graph.num_edges], dtype=np.float64)
    return np.ceil(totals / k * IMBALANCE).astype(np.int64) + 1


def _refine_fine(graph: Graph, part: np.ndarray, opts: AssignOptions, rng: np.random.Generator) -> int:
    """Greedy k-way refinement sweeps over the on-disk CSR (both sides), streamed in chunks."""
    k = opts.num_parts
    loads = fine_vertex_weights(graph, part, k)
    max_loads = _max_loads(graph, k)
    dummy_ew = np.zeros(0, dtype=np.int64)
    dummy_vw = np.zeros((1, NCON), dtype=np.int64)
    moves = 0
    hide = None if opts.progress else True
    E = graph.num_edges
    with tqdm(total=2 * E * opts.refine_rounds, desc="assign: refine", unit="edges", unit_scale=True,
              disable=hide, file=sys.stderr) as bar:
        for _ in range(opts.refine_rounds):
            mv = 0
            for side in SIDES:
                for r0, ptr, ind, _ in graph.iter_rows(side, opts.chunk_entries):
                    mv += _refine(ptr, ind, dummy_ew, False, part, dummy_vw, opts, loads, max_loads, rng,
                                  num_users=graph.num_users, row_start=r0 + graph.row_offset(side),
                                  nbr_offset=graph.nbr_offset(side))
                    bar.update(len(ind))
            moves += mv
            if mv < graph.num_nodes // 1000:
                break
    return int(moves)


# ---------------------------------------------------------------------------------------------
# Multilevel
# ---------------------------------------------------------------------------------------------

@dataclass
class Level:
    """One coarse level: CSR with edge weights, vertex weights, and fine -> coarse labels."""

    indptr: np.ndarray
    indices: np.ndarray
    eweights: np.ndarray
    vweights: np.ndarray        # [n, 4]
    labels_from_finer: np.ndarray


def _compact(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Renumber cluster ids to 0..C-1 (in id order) in O(N), with 9 bytes per node of temporaries."""
    present = np.zeros(len(labels), dtype=np.bool_)
    present[labels] = True
    remap = np.cumsum(present, dtype=np.int32) - 1
    num = int(remap[-1]) + 1 if len(remap) else 0
    del present
    return remap[labels], num


def _lp_fine(graph: Graph, opts: AssignOptions, max_w: int, rng: np.random.Generator, bar) -> np.ndarray:
    """Label propagation over the on-disk bipartite CSR; returns labels over raw nodes."""
    N = graph.num_nodes
    node_w = graph.degrees()
    max_deg = int(node_w.max(initial=0))
    node_w += 1
    # int32 throughout (4 bytes per node per array): degrees and the cluster cap stay below 2^31
    labels = np.arange(N, dtype=np.int32)
    cluster_w = node_w.copy()
    rating = np.zeros(N, dtype=np.int32)
    touched = np.zeros(max_deg + 1, dtype=np.int32)
    dummy_ew = np.zeros(0, dtype=np.int64)
    for rnd in range(opts.lp_rounds):
        moved = 0
        # Items first in the first round: their clusters then attract users (and vice versa).
        for side in (("item", "user") if rnd % 2 == 0 else SIDES):
            for r0, ptr, ind, _ in graph.iter_rows(side, opts.chunk_entries):
                order = rng.permutation(len(ptr) - 1).astype(np.int64)
                moved += kernels.lp_rows(r0 + graph.row_offset(side), ptr, ind, graph.nbr_offset(side),
                                         dummy_ew, False, order, labels, cluster_w, node_w, max_w,
                                         rating, touched, np.uint64(opts.seed * 1000 + rnd))
                bar.update(len(ind))
        if moved < N // 100:
            break
    return labels


def _contract_fine(graph: Graph, labels: np.ndarray, num_clusters: int, opts: AssignOptions, bar,
                   budget_entries: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Aggregate the fine edges between clusters, streamed over the user-side CSR.

    Each chunk's cross-cluster pairs are aggregated (one sort of the chunk), both directions are
    appended to bucket files by source-cluster range, and each bucket is reduced to coarse CSR
    rows. If the coarse graph would exceed ``budget_entries`` directed entries, edges of weight 1
    (a single interaction between two clusters) are dropped: they carry the least structure, and
    the fine-level refinement sees every edge again. Returns (indptr, indices, weights, min_weight).
    """
    scratch = graph.scratch
    buf = np.empty(opts.chunk_entries, dtype=np.int64)
    num_buckets = max(1, min(1024, -(-2 * graph.num_edges // (4 * opts.chunk_entries))))
    per_bucket = -(-num_clusters // num_buckets)
    handles = [open(scratch.path(f"contract-{b:04d}.bin"), "wb", buffering=1 << 20) for b in range(num_buckets)]
    upper = 0
    try:
        for r0, ptr, ind, _ in graph.iter_rows("user", opts.chunk_entries):
            if len(ind) > len(buf):
                buf = np.empty(len(ind), dtype=np.int64)
            m = kernels.cross_cluster_keys(r0, ptr, ind, graph.num_users, labels, np.int64(num_clusters), buf)
            k, w = np.unique(buf[:m], return_counts=True)
            a, b = k // num_clusters, k % num_clusters
            upper += 2 * len(k)
            for src, dst in ((a, b), (b, a)):
                bk = src // per_bucket
                order = np.argsort(bk, kind="stable")
                bounds = np.searchsorted(bk[order], np.arange(num_buckets + 1))
                rec = np.empty((len(src), 3), dtype=np.int32)   # src, dst, weight: 12 bytes
                rec[:, 0] = src
                rec[:, 1] = dst
                rec[:, 2] = np.minimum(w, np.iinfo(np.int32).max)
                rec = rec[order]
                for j in np.flatnonzero(np.diff(bounds)):
                    handles[j].write(rec[bounds[j]:bounds[j + 1]].data)
            bar.update(len(ind))
    finally:
        for h in handles:
            h.close()
    min_weight = 1 if upper <= budget_entries else 2
    opts.info["coarse_entries_upper_bound"] = int(upper)
    indptr = np.zeros(num_clusters + 1, dtype=np.int64)
    rows_deg = np.zeros(num_clusters, dtype=np.int64)
    ind_parts, w_parts = [], []
    for j in range(num_buckets):
        path = scratch.path(f"contract-{j:04d}.bin")
        rec = np.fromfile(path, dtype=np.int32).reshape(-1, 3)
        path.unlink()
        if len(rec) == 0:
            continue
        keys = rec[:, 0].astype(np.int64) * num_clusters + rec[:, 1]
        order = np.argsort(keys)
        keys = keys[order]
        ws = rec[order, 2].astype(np.int64)
        del rec, order
        start = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
        keys = keys[start]
        ws = np.add.reduceat(ws, start)
        keep = ws >= min_weight
        keys, ws = keys[keep], ws[keep]
        src = keys // num_clusters
        rows_deg += np.bincount(src, minlength=num_clusters)
        ind_parts.append((keys % num_clusters).astype(np.int32))
        w_parts.append(np.minimum(ws, np.iinfo(np.int32).max).astype(np.int32))
    np.cumsum(rows_deg, out=indptr[1:])
    indices = np.concatenate(ind_parts) if ind_parts else np.zeros(0, np.int32)
    weights = np.concatenate(w_parts) if w_parts else np.zeros(0, np.int32)   # 8 bytes per entry with indices
    return indptr, indices, weights, min_weight


def _lp_coarse(indptr, indices, ew, vw_total, opts, max_w, rng, seed) -> np.ndarray:
    n = len(indptr) - 1
    labels = np.arange(n, dtype=np.int32)
    node_w = vw_total.astype(np.int64)
    cluster_w = node_w.copy()
    rating = np.zeros(n, dtype=np.int64)
    touched = np.zeros(int(np.diff(indptr).max(initial=0)) + 1, dtype=np.int32)
    for rnd in range(opts.lp_rounds):
        order = rng.permutation(n).astype(np.int64)
        moved = kernels.lp_rows(0, indptr, indices, 0, ew, True, order, labels, cluster_w, node_w,
                                max_w, rating, touched, np.uint64(seed + rnd))
        if moved < n // 100:
            break
    return labels


def _contract_coarse(indptr, indices, ew, labels, num_clusters, min_weight: int = 1):
    """Coarse CSR of an in-memory weighted CSR, with no [num_edges] temporaries (two compiled
    passes: count, then fill)."""
    members = np.argsort(labels, kind="stable").astype(np.int64)
    member_ptr = np.zeros(num_clusters + 1, dtype=np.int64)
    np.cumsum(np.bincount(labels, minlength=num_clusters), out=member_ptr[1:])
    rating = np.zeros(num_clusters, dtype=np.int64)
    touched = np.zeros(num_clusters, dtype=np.int32)
    out_indptr = np.zeros(num_clusters + 1, dtype=np.int64)
    dummy_i = np.zeros(0, dtype=np.int32)
    dummy_w = np.zeros(0, dtype=np.int64)
    m = kernels.contract_csr(indptr, indices, ew, labels, num_clusters, members, member_ptr, min_weight,
                             False, out_indptr, dummy_i, dummy_w, rating, touched)
    out_indices = np.empty(m, dtype=np.int32)
    out_w = np.empty(m, dtype=np.int64)
    kernels.contract_csr(indptr, indices, ew, labels, num_clusters, members, member_ptr, min_weight,
                         True, out_indptr, out_indices, out_w, rating, touched)
    return out_indptr, out_indices, out_w


def _refine(indptr, indices, ew, use_ew, part, vw, opts, loads, max_loads, rng, num_users=-1,
            row_start=0, nbr_offset=0, order=None):
    conn = np.zeros(opts.num_parts, dtype=np.int64)
    touched = np.zeros(opts.num_parts, dtype=np.int32)
    if order is None:
        order = rng.permutation(len(indptr) - 1).astype(np.int64)
    return kernels.refine_rows(row_start, indptr, indices, nbr_offset, ew, use_ew, order, part,
                               opts.num_parts, conn, touched, loads, max_loads, vw, num_users)


def _loads(part: np.ndarray, vw: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((k, vw.shape[1]), dtype=np.int64)
    for c in range(vw.shape[1]):
        out[:, c] = np.bincount(part, weights=vw[:, c], minlength=k).astype(np.int64)
    return out


def assign_multilevel(graph: Graph, opts: AssignOptions) -> np.ndarray:
    """Coarsen (LP, streamed) -> METIS on the coarsest level -> project and refine."""
    import time
    t0 = time.perf_counter()
    secs: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal t0
        now = time.perf_counter()
        secs[name] = round(secs.get(name, 0.0) + now - t0, 2)
        t0 = now

    k = opts.num_parts
    rng = np.random.default_rng(opts.seed)
    hide = None if opts.progress else True
    total_w = int(graph.num_nodes + 2 * graph.num_edges)
    max_w = max(2, int(total_w / k * opts.max_cluster_fraction))
    E = graph.num_edges
    with tqdm(total=2 * E * opts.lp_rounds + E, desc="assign: coarsen", unit="edges", unit_scale=True,
              disable=hide, file=sys.stderr) as bar:
        labels0 = _lp_fine(graph, opts, max_w, rng, bar)
        lap("coarsen_fine")
        labels0, C = _compact(labels0)
        indptr, indices, ew, min_w = _contract_fine(graph, labels0, C, opts, bar, opts.coarse_budget_entries)
    vw = fine_vertex_weights(graph, labels0, C)
    lap("contract_fine")
    levels = [Level(indptr, indices, ew, vw, labels0)]
    sizes = [graph.num_nodes, C]
    while len(levels[-1].indptr) - 1 > opts.coarse_target:
        lv = levels[-1]
        n = len(lv.indptr) - 1
        lab = _lp_coarse(lv.indptr, lv.indices, lv.eweights, lv.vweights.sum(axis=1) + 0, opts,
                         max_w, rng, opts.seed + 7 * len(levels))
        lab, C2 = _compact(lab)
        if C2 > 0.9 * n:
            break
        ip, ix, w = _contract_coarse(lv.indptr, lv.indices, lv.eweights, lab, C2)
        vw2 = np.zeros((C2, NCON), dtype=np.int64)
        for c in range(NCON):
            vw2[:, c] = np.bincount(lab, weights=lv.vweights[:, c], minlength=C2).astype(np.int64)
        levels.append(Level(ip, ix, w, vw2, lab))
        sizes.append(C2)
    lap("coarsen_coarse")
    top = levels[-1]
    if opts.progress:
        print(f"assign: METIS on the coarsest level ({len(top.indptr) - 1:,} nodes, "
              f"{len(top.indices) // 2:,} edges)", file=sys.stderr, flush=True)
    # several METIS runs when the coarse graph is small: its cut varies by seed (Gowalla, 4 parts:
    # 0.174-0.196 with one run, 0.167-0.177 with the best of 8), and small graphs cost little
    ncuts = int(np.clip(2_000_000 // max(len(top.indices) // 2, 1), 1, opts.metis_ncuts))
    part, cut = metis.part_graph_kway(top.indptr, top.indices, k, top.vweights, top.eweights,
                                      IMBALANCE, opts.seed, ncuts=ncuts)
    part = part.astype(np.int16)
    lap("metis")
    max_loads = _max_loads(graph, k)
    moves = []
    # Uncoarsen: refine each coarse level in memory, then project to the finer one.
    for li in range(len(levels) - 1, -1, -1):
        lv = levels[li]
        loads = _loads(part, lv.vweights, k)
        m = 0
        for _ in range(opts.refine_rounds):
            mv = _refine(lv.indptr, lv.indices, lv.eweights, True, part, lv.vweights, opts, loads,
                         max_loads, rng)
            m += mv
            if mv == 0:
                break
        moves.append(int(m))
        part = part[lv.labels_from_finer]
    lap("refine_coarse")
    # Fine level: streamed refinement sweeps over both sides.
    fine_moves = _refine_fine(graph, part, opts, rng)
    lap("refine_fine")
    opts.info.update({"path": "multilevel", "level_sizes": [int(s) for s in sizes],
                      "metis_nodes": int(len(top.indptr) - 1), "metis_edges": int(len(top.indices) // 2),
                      "metis_cut": int(cut), "metis_ncuts": ncuts, "coarse_min_weight": int(min_w), "refine_moves": moves + [int(fine_moves)], "seconds": secs})
    return part


ASSIGNERS = {"random": assign_random, "metis-in-memory": assign_metis_in_memory,
             "metis-multilevel": assign_multilevel}
