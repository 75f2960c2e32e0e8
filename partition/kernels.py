"""Compiled loops (numba) of the out-of-core partitioner.

These are the few steps that are inherently per-node loops with data-dependent control flow
(label propagation, k-way refinement, per-row sorting): in numpy they would need a sort per step;
compiled they run at memory speed. Each kernel works on one *chunk of CSR rows* held in memory,
so callers stream a graph of any size through them (``partition/graph.py``). ``cache=True`` keeps
the compiled code next to this file, so only the first run after an install pays the compile time.

Node ids: ``row_start + r`` is the global node id of chunk row ``r``; neighbour ids are
``indices[e] + nbr_offset`` (the bipartite graph stores users' rows with item indices and items'
rows with user indices, each in its own raw space; ``nbr_offset`` lifts them to node ids).
"""
from __future__ import annotations

import numpy as np
from numba import njit

_HASH_MULT = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True, inline="always")
def _mix(x):
    """splitmix64 finaliser: a cheap, well-spread hash for tie-breaking and seeded sampling."""
    x = np.uint64(x)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


@njit(cache=True, inline="always")
def _rate_neighbours(a, b, indices, nbr_offset, group, ew, use_ew, rating, touched):
    """Sum the edge weights of entries ``[a, b)`` per neighbour group (``group[neighbour]``: its
    cluster or partition) into ``rating``, listing each group met once in ``touched``; returns how
    many. Label propagation and refinement both rate a node's neighbourhood this way."""
    nt = 0
    for e in range(a, b):
        c = group[indices[e] + nbr_offset]
        if rating[c] == 0:
            touched[nt] = c
            nt += 1
        rating[c] += ew[e] if use_ew else 1
    return nt


@njit(cache=True)
def lp_rows(row_start, indptr, indices, nbr_offset, ew, use_ew, order, labels, cluster_w,
            node_w, max_w, rating, touched, seed):
    """One size-constrained label-propagation sweep over a chunk of rows (in ``order``).

    Node ``v`` joins the neighbouring cluster with the largest total edge weight to it, provided
    the cluster stays within ``max_w`` (KaMinPar's clustering rule); ties keep the current cluster
    or are broken by a seeded hash. ``rating``/``touched`` are scratch arrays (all zero on entry
    and exit). Returns the number of moves.
    """
    moved = 0
    base = indptr[0]
    for t in range(order.size):
        r = order[t]
        v = row_start + r
        a = indptr[r] - base
        b = indptr[r + 1] - base
        if a == b:
            continue
        nt = _rate_neighbours(a, b, indices, nbr_offset, labels, ew, use_ew, rating, touched)
        cur = labels[v]
        wv = node_w[v]
        best = cur
        best_r = rating[cur]
        best_h = _mix(np.uint64(cur) ^ np.uint64(seed))
        for k in range(nt):
            c = touched[k]
            rc = rating[c]
            if c != cur and cluster_w[c] + wv > max_w:
                continue
            if rc > best_r:
                best, best_r = c, rc
                best_h = _mix(np.uint64(c) ^ np.uint64(seed))
            elif rc == best_r and best != cur:
                h = _mix(np.uint64(c) ^ np.uint64(seed))
                if h < best_h:
                    best, best_h = c, h
        for k in range(nt):
            rating[touched[k]] = 0
        if best != cur:
            cluster_w[cur] -= wv
            cluster_w[best] += wv
            labels[v] = best
            moved += 1
    return moved


@njit(cache=True)
def cross_cluster_keys(row_start, indptr, indices, nbr_offset, labels, num_clusters, out):
    """Keys ``label[v] * C + label[n]`` of this chunk's edges between different clusters.

    The contraction's first step: each fine edge becomes an edge between the clusters of its ends;
    edges inside a cluster vanish. Returns how many keys were written into ``out``.
    """
    m = 0
    base = indptr[0]
    for r in range(indptr.size - 1):
        cv = labels[row_start + r]
        for e in range(indptr[r] - base, indptr[r + 1] - base):
            cn = labels[indices[e] + nbr_offset]
            if cn != cv:
                out[m] = np.int64(cv) * num_clusters + cn
                m += 1
    return m


@njit(cache=True)
def refine_rows(row_start, indptr, indices, nbr_offset, ew, use_ew, order, part, num_parts,
                conn, touched, loads, max_loads, vw, num_users):
    """One greedy k-way refinement sweep that respects every balance constraint.

    A node moves to the neighbouring partition with the largest positive gain in cut edges, if
    after the move that partition stays within ``max_loads`` in every constraint. Node weights:
    ``vw[v]`` (coarse levels) or, when ``num_users >= 0`` (the fine bipartite level),
    (1, 0, degree, 0) for users and (0, 1, 0, degree) for items. Returns the number of moves.
    """
    moved = 0
    base = indptr[0]
    ncon = loads.shape[1]
    w = np.zeros(ncon, dtype=np.int64)
    for t in range(order.size):
        r = order[t]
        v = row_start + r
        a = indptr[r] - base
        b = indptr[r + 1] - base
        if a == b:
            continue
        cur = part[v]
        nt = _rate_neighbours(a, b, indices, nbr_offset, part, ew, use_ew, conn, touched)
        if nt > 1 or (nt == 1 and touched[0] != cur):   # a boundary node
            if num_users >= 0:
                for c in range(ncon):
                    w[c] = 0
                deg = b - a
                if v < num_users:
                    w[0] = 1
                    w[2] = deg
                else:
                    w[1] = 1
                    w[3] = deg
            else:
                for c in range(ncon):
                    w[c] = vw[v, c]
            best = cur
            best_gain = 0
            for k in range(nt):
                p = touched[k]
                if p == cur:
                    continue
                gain = conn[p] - conn[cur]
                if gain <= best_gain:
                    continue
                fits = True
                for c in range(ncon):
                    if loads[p, c] + w[c] > max_loads[c]:
                        fits = False
                        break
                if fits:
                    best, best_gain = p, gain
            if best != cur:
                for c in range(ncon):
                    loads[cur, c] -= w[c]
                    loads[best, c] += w[c]
                part[v] = best
                moved += 1
        for k in range(nt):
            conn[touched[k]] = 0
    return moved


@njit(cache=True)
def choose_holdout(row_start, indptr, indices, ts, by_latest, fraction, seed, out_mask):
    """Per-user validation split: mark ``round(fraction * deg)`` of each row (at least one, never
    all; rows with fewer than two entries kept whole), the latest ones by ``ts`` or a seeded
    random choice that depends only on (seed, user, item), not on how rows are chunked."""
    base = indptr[0]
    for r in range(indptr.size - 1):
        a = indptr[r] - base
        b = indptr[r + 1] - base
        deg = b - a
        if deg < 2:
            continue
        n = int(np.floor(fraction * deg + 0.5))
        if n < 1:
            n = 1
        if n > deg - 1:
            n = deg - 1
        keys = np.empty(deg, dtype=np.uint64)
        u = np.uint64(row_start + r)
        for e in range(a, b):
            if by_latest:
                # largest ts first: invert the order; ties broken by item id
                keys[e - a] = np.uint64(0x7FFFFFFFFFFFFFFF - ts[e])
            else:
                keys[e - a] = _mix(_mix(u ^ np.uint64(seed)) ^ np.uint64(indices[e]))
        order = np.argsort(keys, kind="mergesort")
        for j in range(n):
            out_mask[a + order[j]] = True


@njit(cache=True)
def in_csr(indptr, indices, rows, cols):
    """For each (row, col): is ``col`` in CSR row ``row``? Rows' indices are sorted."""
    out = np.zeros(rows.size, dtype=np.bool_)
    for k in range(rows.size):
        a = indptr[rows[k]]
        b = indptr[rows[k] + 1]
        x = cols[k]
        while a < b:
            mid = (a + b) // 2
            if indices[mid] < x:
                a = mid + 1
            else:
                b = mid
        if a < indptr[rows[k] + 1] and indices[a] == x:
            out[k] = True
    return out


@njit(cache=True)
def dispatch_chunk(row_start, row_offset, indptr, indices, nbr_offset, ts, has_ts, part_of_raw,
                   gid_of_raw, num_parts, halo, out_src, out_dst, out_ts, part_counts):
    """One streamed chunk of rows -> per-partition runs of (src_gid, dst_gid[, ts]).

    For each row (a destination node): its partition is ``part_of_raw[row]``; its entries become
    edges ``src -> row`` with src gids sorted ascending (insertion sort: rows are short on
    average, long rows fall back to a merge sort). Edges are written grouped by partition, each
    group in row order (= gid order inside a partition), into ``out_*``; ``part_counts[p]`` gets
    the group sizes, ``halo[p, src]`` marks the sources seen. Returns the number of entries whose
    two ends lie in different partitions.
    """
    base = indptr[0]
    nrows = indptr.size - 1
    for p in range(num_parts):
        part_counts[p] = 0
    for r in range(nrows):
        part_counts[part_of_raw[row_offset + row_start + r]] += indptr[r + 1] - indptr[r]
    pos = np.zeros(num_parts, dtype=np.int64)
    acc = 0
    for p in range(num_parts):
        pos[p] = acc
        acc += part_counts[p]
    cut = 0
    for r in range(nrows):
        v = row_offset + row_start + r
        p = part_of_raw[v]
        dst = gid_of_raw[v]
        a = indptr[r] - base
        b = indptr[r + 1] - base
        start = pos[p]
        long_row = b - a > 48
        for e in range(a, b):
            n = indices[e] + nbr_offset
            if part_of_raw[n] != p:
                cut += 1
            g = gid_of_raw[n]
            halo[p, g] = 1
            j = pos[p]
            if not long_row:
                # insertion into the sorted run out_src[start:j]
                while j > start and out_src[j - 1] > g:
                    out_src[j] = out_src[j - 1]
                    if has_ts:
                        out_ts[j] = out_ts[j - 1]
                    j -= 1
            out_src[j] = g
            if has_ts:
                out_ts[j] = ts[e]
            out_dst[pos[p]] = dst
            pos[p] += 1
        if long_row:
            end = pos[p]
            if has_ts:
                order = np.argsort(out_src[start:end], kind="mergesort")
                run = out_src[start:end][order]
                tr = out_ts[start:end][order]
                out_src[start:end] = run
                out_ts[start:end] = tr
            else:
                out_src[start:end] = np.sort(out_src[start:end])
    return cut


@njit(cache=True)
def contract_csr(indptr, indices, ew, labels, num_clusters, members, member_ptr, min_weight, fill,
                 out_indptr, out_indices, out_w, rating, touched):
    """Contract a weighted CSR by ``labels`` into a coarse CSR, cluster by cluster.

    ``members[member_ptr[c]:member_ptr[c+1]]`` are the nodes of cluster ``c``. Edges inside a
    cluster vanish; parallel edges merge, their weights add; coarse edges lighter than
    ``min_weight`` are dropped (symmetric, since both directions carry the same weight). With
    ``fill`` False only ``out_indptr`` (the coarse degrees, cumulated) is computed, so the caller
    can allocate exactly; with ``fill`` True the rows are written.
    """
    pos = 0
    out_indptr[0] = 0
    for c in range(num_clusters):
        nt = 0
        for m in range(member_ptr[c], member_ptr[c + 1]):
            v = members[m]
            for e in range(indptr[v], indptr[v + 1]):
                d = labels[indices[e]]
                if d == c:
                    continue
                if rating[d] == 0:
                    touched[nt] = d
                    nt += 1
                rating[d] += ew[e]
        for k in range(nt):
            d = touched[k]
            w = rating[d]
            if w >= min_weight:
                if fill:
                    out_indices[pos] = d
                    out_w[pos] = w
                pos += 1
            rating[d] = 0
        out_indptr[c + 1] = pos
    return pos


@njit(cache=True)
def scatter_transpose_range(row_start, indptr, indices, ts, has_ts, lo, hi, cursor, base, out_indices,
                            out_ts):
    """``scatter_transpose`` restricted to columns ``lo <= i < hi``, into a private buffer whose
    first slot is entry ``base`` of the transposed CSR (one pass of a range-by-range transpose)."""
    b0 = indptr[0]
    for r in range(indptr.size - 1):
        u = row_start + r
        for e in range(indptr[r] - b0, indptr[r + 1] - b0):
            i = indices[e]
            if i < lo or i >= hi:
                continue
            pos = cursor[i] - base
            out_indices[pos] = u
            if has_ts:
                out_ts[pos] = ts[e]
            cursor[i] += 1


@njit(cache=True)
def dedup_rows(user_local, items, ts, has_ts, num_rows, out_ptr, out_items, out_ts):
    """Group (user, item[, ts]) rows by user (counting sort), sort each user's items and keep each
    (user, item) once, with its earliest ts. O(n) plus one small sort per user, instead of a global
    sort of n keys. ``out_ptr`` gets the per-user CSR offsets; returns the number of rows kept."""
    n = user_local.size
    cnt = np.zeros(num_rows + 1, dtype=np.int64)
    for k in range(n):
        cnt[user_local[k] + 1] += 1
    for r in range(num_rows):
        cnt[r + 1] += cnt[r]
    pos = cnt[:-1].copy()
    tmp_i = np.empty(n, dtype=np.int64)
    tmp_t = np.empty(n if has_ts else 0, dtype=np.int64)
    for k in range(n):
        r = user_local[k]
        tmp_i[pos[r]] = items[k]
        if has_ts:
            tmp_t[pos[r]] = ts[k]
        pos[r] += 1
    m = 0
    out_ptr[0] = 0
    for r in range(num_rows):
        a = cnt[r]
        b = cnt[r + 1]
        if b > a:
            if has_ts:
                order = np.argsort(tmp_i[a:b], kind="mergesort")
                seg_i = tmp_i[a:b][order]
                seg_t = tmp_t[a:b][order]
                k = 0
                while k < seg_i.size:
                    best = seg_t[k]
                    j = k + 1
                    while j < seg_i.size and seg_i[j] == seg_i[k]:
                        if seg_t[j] < best:
                            best = seg_t[j]
                        j += 1
                    out_items[m] = seg_i[k]
                    out_ts[m] = best
                    m += 1
                    k = j
            else:
                seg = np.sort(tmp_i[a:b])
                out_items[m] = seg[0]
                m += 1
                for k in range(1, seg.size):
                    if seg[k] != seg[k - 1]:
                        out_items[m] = seg[k]
                        m += 1
        out_ptr[r + 1] = m
    return m
