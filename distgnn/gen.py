"""``distgnn gen``: a synthetic user-item interaction graph with known structure, as Parquet.

What is generated
-----------------
* **Users** ``0..U-1`` with power-law *activity*: each user's weight is drawn from a truncated
  Pareto distribution, and the ``N`` interactions are shared out in proportion to the weights
  (every user gets at least one when ``N >= U``).
* **Items** ``0..I-1`` with power-law *popularity*: inside each community, item ranks follow a
  truncated Zipf law sampled by inverse CDF, so no per-item array is ever built.
* **Planted communities**: user ``u`` belongs to community ``u % C`` and item ``j`` to ``j % C``
  (O(1) memory; id ranges do not reveal the blocks). A fraction ``in_community`` (default 0.8) of
  each user's interactions is drawn inside the user's own community, the rest uniformly from the
  other communities. Partition quality (edge cut) and recommendation quality are therefore
  measurable against a known ground truth.
* **Held-out split**: a fraction ``test_fraction`` of each user's interactions (at least one for
  users with two or more, never all of them) goes to ``test``; with ``timestamps`` the held-out
  interactions are the user's latest ones (temporal split), otherwise a random subset.

Determinism and scale
---------------------
Users are processed in fixed blocks of ``BLOCK_USERS``; block ``b`` draws every random number from
its own stream ``SeedSequence(seed, spawn_key=(b,))``. A first pass only sums the blocks' activity
weights; the second pass hands out degrees by cumulative rounding against those sums, so before
de-duplication the total is exactly ``N``, and the output depends on nothing but the arguments
(not on ``--chunk-users``, which only decides how many users go into one Parquet file). Memory is
bounded by one output row group plus one block, from a thousand to a billion interactions.

Layout: ``OUT/train/part-NNNNN.parquet``, ``OUT/test/part-NNNNN.parquet`` (columns ``user_id``,
``item_id`` and optionally ``ts``, all int64, rows grouped by ascending ``user_id``), plus
``OUT/gen.json`` with the parameters and counts. Everything is written into a hidden sibling
directory that is renamed to ``OUT`` at the end.

Heavy imports (numpy, pyarrow, tqdm) are kept inside functions so ``distgnn --help`` stays fast.
"""
from __future__ import annotations

import argparse
import json
import math
import operator
import os
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from distgnn import atomic
from distgnn.errors import UserError

BLOCK_USERS = 1024                 # users per RNG stream; the unit of determinism
DEFAULT_CHUNK_USERS = 100_000      # users per Parquet file (rounded up to whole blocks)
ROW_GROUP_ROWS = 1 << 20           # rows buffered before a Parquet row group is written
DEFAULT_IN_COMMUNITY = 0.8
DEFAULT_TEST_FRACTION = 0.2
DEFAULT_ACTIVITY_EXPONENT = 1.2    # Pareto tail index of user activity (smaller = heavier tail)
DEFAULT_POPULARITY_EXPONENT = 1.0  # Zipf exponent of item popularity inside a community
MAX_ACTIVITY_RATIO = 1000.0        # the most active user's weight is at most this times the least
INTERACTIONS_PER_USER = 30         # Gowalla-like defaults when --users / --items are omitted
INTERACTIONS_PER_ITEM = 20
MAX_DEFAULT_DENSITY = 0.05         # default U, I are scaled up so that N <= 5% of U * I
MAX_IDS = 1 << 40                  # keeps all int64 arithmetic (keys, permutations) exact
TS_START = 1_577_836_800           # 2020-01-01T00:00:00Z
TS_RANGE = 4 * 365 * 86_400        # timestamps spread over about four years
PL_ROUNDS, MAX_ROUNDS = 3, 6       # dedup refill rounds: power-law draws, then uniform draws
_OFFSET_MULT = 2_654_435_761       # per-community rotation of the rank -> item permutation
GEN_JSON = "gen.json"
OWN_ENTRIES = {"train", "test", GEN_JSON}


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Plan:
    interactions: int
    users: int
    items: int
    communities: int
    in_community: float        # effective share (1.0 when there is one community)
    test_fraction: float
    timestamps: bool
    seed: int
    activity_exponent: float
    popularity_exponent: float
    max_degree: int            # hard per-user cap, keeps de-duplication cheap
    activity_ratio: float      # R: activity weights lie in [1, R]
    base_degree: int           # every user gets this many before the weighted share-out
    rest: int                  # interactions shared out by weight
    m_lo: int                  # items per community: m_lo, or m_lo + 1 for the first m_rem ones
    m_rem: int
    perm_mult: int             # rank -> local item index: (perm_mult * r + offset_c) mod m_c

    @property
    def num_blocks(self) -> int:
        return -(-self.users // BLOCK_USERS)


def _as_int(value: Any, flag: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise UserError(f"{flag} must be a whole number, got {value!r}; pass e.g. {flag} 1000") \
            from None


def _as_float(value: Any, flag: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{flag} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise UserError(f"{flag} must be a finite number, got {value!r}")
    return out


def _pareto_mean(ratio: float, alpha: float) -> float:
    """Mean of the Pareto(alpha) distribution truncated to [1, ratio]."""
    if ratio <= 1.0:
        return 1.0
    if abs(alpha - 1.0) < 1e-9:
        return math.log(ratio) / (1.0 - 1.0 / ratio)
    return alpha / (alpha - 1.0) * (1.0 - ratio ** (1.0 - alpha)) / (1.0 - ratio ** (-alpha))


def _solve_activity_ratio(mean_extra: float, max_extra: float, alpha: float) -> float:
    """R such that the expected largest degree, mean_extra * R / mean(R), is about max_extra."""
    if mean_extra <= 0 or max_extra <= mean_extra:
        return 1.0
    target = max_extra / mean_extra

    def spread(r: float) -> float:
        return r / _pareto_mean(r, alpha)

    if spread(MAX_ACTIVITY_RATIO) <= target:
        return MAX_ACTIVITY_RATIO
    lo, hi = 0.0, math.log(MAX_ACTIVITY_RATIO)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if spread(math.exp(mid)) < target:
            lo = mid
        else:
            hi = mid
    return math.exp(lo)


def _coprime_multiplier(m_lo: int) -> int:
    """A multiplier coprime to both community sizes m_lo and m_lo + 1 (a bijection mod each)."""
    m_hi = m_lo + 1
    start = max(1, min(round(0.6180339887 * m_hi), (1 << 62) // m_hi))
    a = start
    while math.gcd(a, m_lo) != 1 or math.gcd(a, m_hi) != 1:
        a += 1
    return a


def _default_sizes(n: int) -> tuple[int, int]:
    users = max(1, math.ceil(n / INTERACTIONS_PER_USER))
    items = max(1, math.ceil(n / INTERACTIONS_PER_ITEM))
    need = n / MAX_DEFAULT_DENSITY
    if users * items < need:                # tiny N: keep the graph sparse enough to be useful
        scale = math.sqrt(need / (users * items))
        users, items = math.ceil(users * scale), math.ceil(items * scale)
    return users, items


def default_communities(users: int, items: int) -> int:
    return max(1, min(max(2, min(64, users // 500)), users, items))


def _plan(interactions: Any, users: Any, items: Any, communities: Any, seed: Any,
          test_fraction: Any, timestamps: bool, in_community: Any, activity_exponent: Any,
          popularity_exponent: Any) -> _Plan:
    n = _as_int(interactions, "--interactions")
    if n < 1:
        raise UserError(f"--interactions must be at least 1, got {n}; pass e.g. --interactions 1000000")
    d_users, d_items = _default_sizes(n)
    u = d_users if users is None else _as_int(users, "--users")
    i = d_items if items is None else _as_int(items, "--items")
    if u < 1:
        raise UserError(f"--users must be at least 1, got {u}; omit it for a default of about "
                        f"{INTERACTIONS_PER_USER} interactions per user")
    if i < 1:
        raise UserError(f"--items must be at least 1, got {i}; omit it for a default of about "
                        f"{INTERACTIONS_PER_ITEM} interactions per item")
    if u > MAX_IDS or i > MAX_IDS:
        raise UserError(f"--users and --items must be at most {MAX_IDS:,}; use fewer")
    c = default_communities(u, i) if communities is None else _as_int(communities, "--communities")
    if c < 1 or c > min(u, i):
        raise UserError(f"--communities must be between 1 and min(--users, --items) = {min(u, i):,}"
                        f" (every community needs a user and an item), got {c}; use fewer "
                        f"communities or omit the flag")
    s = _as_int(seed, "--seed")
    if s < 0:
        raise UserError(f"--seed must be a non-negative integer, got {s}")
    f = _as_float(test_fraction, "--test-fraction")
    if not 0.0 <= f < 1.0:
        raise UserError(f"--test-fraction must be in [0, 1), got {test_fraction}; e.g. 0.2 holds "
                        f"out 20% of each user's interactions, 0 writes no test set")
    p = _as_float(in_community, "--in-community")
    if not 0.0 <= p <= 1.0:
        raise UserError(f"--in-community must be in [0, 1], got {in_community}; e.g. 0.8 puts 80% "
                        f"of the interactions inside the user's community")
    alpha = _as_float(activity_exponent, "--activity-exponent")
    if alpha <= 0:
        raise UserError(f"--activity-exponent must be positive, got {activity_exponent}; "
                        f"smaller means more skewed user activity (e.g. 1.2)")
    zipf = _as_float(popularity_exponent, "--popularity-exponent")
    if zipf < 0:
        raise UserError(f"--popularity-exponent must be >= 0, got {popularity_exponent}; "
                        f"0 is uniform popularity, 1 is Zipf")
    if c == 1:
        p = 1.0
    m_lo, m_rem = divmod(i, c)
    m_hi = m_lo + (m_rem > 0)
    # Largest degree that still lets every user find distinct items cheaply: at most half of the
    # items reachable from each side (own community for the in-share, the others for the rest).
    room = float(i)
    if p > 0:
        room = min(room, m_lo / p)
    if p < 1:
        room = min(room, (i - m_hi) / (1.0 - p))
    max_degree = max(1, int(0.5 * room))
    max_mean = max(1, max_degree // 2)
    if n > u * max_mean:
        raise UserError(
            f"{n:,} interactions over {u:,} users is {n / u:,.1f} per user, too dense for {i:,} "
            f"items in {c:,} communities (at most about {max_mean:,} per user); pass more "
            f"--users or --items, or fewer --communities or --interactions")
    base = 1 if n >= u else 0
    rest = n - base * u
    ratio = _solve_activity_ratio(rest / u, 0.8 * max_degree - base, alpha)
    return _Plan(interactions=n, users=u, items=i, communities=c, in_community=p,
                 test_fraction=f, timestamps=bool(timestamps), seed=s, activity_exponent=alpha,
                 popularity_exponent=zipf, max_degree=max_degree, activity_ratio=ratio,
                 base_degree=base, rest=rest, m_lo=m_lo, m_rem=m_rem,
                 perm_mult=_coprime_multiplier(m_lo))


# --------------------------------------------------------------------------------------------
# One block of users (vectorised; every random number comes from the block's own stream)
# --------------------------------------------------------------------------------------------

def _block_rng(plan: _Plan, block: int):
    import numpy as np
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(plan.seed, spawn_key=(block,))))


def _block_weights(rng, n: int, plan: _Plan):
    """Truncated-Pareto activity weights in [1, R]; always the first draw of a block's stream."""
    u = rng.random(n)
    if plan.activity_ratio <= 1.0:
        return u * 0.0 + 1.0
    a = plan.activity_exponent
    return (1.0 - u * (1.0 - plan.activity_ratio ** (-a))) ** (-1.0 / a)


def _block_size(plan: _Plan, block: int) -> int:
    return min(plan.users, (block + 1) * BLOCK_USERS) - block * BLOCK_USERS


def _zipf_ranks(u, m, s: float):
    """Inverse CDF of a truncated power law over ranks 0..m-1 (m may be an array)."""
    import numpy as np
    mf = m.astype(np.float64)
    if s == 0.0:
        x = u * mf + 1.0
    elif abs(s - 1.0) < 1e-9:
        x = np.exp(u * np.log1p(mf))
    else:
        e = 1.0 - s
        x = (1.0 + u * ((mf + 1.0) ** e - 1.0)) ** (1.0 / e)
    r = x.astype(np.int64) - 1
    np.clip(r, 0, m - 1, out=r)
    return r


def _items_of(comm, rank, plan: _Plan):
    """Item id of the item with popularity `rank` inside community `comm` (a bijection)."""
    m = plan.m_lo + (comm < plan.m_rem)
    local = (plan.perm_mult * rank + (comm * _OFFSET_MULT) % m) % m
    return comm + plan.communities * local


def _group_starts(counts):
    import numpy as np
    starts = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    return starts


def _gen_block(plan: _Plan, block: int, offset: float, total_weight: float):
    """Rows of one block: (user_id, item_id, ts or None, is_test), grouped by user."""
    import numpy as np

    rng = _block_rng(plan, block)
    n = _block_size(plan, block)
    w = _block_weights(rng, n, plan)
    first_user = block * BLOCK_USERS
    c_num, items = plan.communities, plan.items

    # Degrees by cumulative rounding: telescopes to exactly `rest` over all blocks.
    cum = offset + np.cumsum(w)
    prev = np.empty(n)
    prev[0] = offset
    prev[1:] = cum[:-1]
    hi = np.floor(plan.rest * (cum / total_weight) + 0.5)
    lo = np.floor(plan.rest * (prev / total_weight) + 0.5)
    degree = plan.base_degree + (hi - lo).astype(np.int64)
    np.minimum(degree, plan.max_degree, out=degree)

    # Two streams per user: 2*lu draws inside the own community, 2*lu+1 from the other ones.
    own = (first_user + np.arange(n, dtype=np.int64)) % c_num
    p = plan.in_community
    n_in = np.floor(p * degree + rng.random(n)).astype(np.int64) if 0.0 < p < 1.0 else \
        (degree if p >= 1.0 else np.zeros(n, dtype=np.int64))
    need_stream = np.empty(2 * n, dtype=np.int64)
    need_stream[0::2] = n_in
    need_stream[1::2] = degree - n_in
    target = need_stream.copy()

    kept_keys = np.empty(0, dtype=np.int64)      # lu * items + item, grouped by stream
    kept_stream = np.empty(0, dtype=np.int64)
    for rnd in range(MAX_ROUNDS):
        if not need_stream.any():
            break
        extra = np.ceil(need_stream * (0.25 if rnd == 0 else 1.0)).astype(np.int64)
        n_draw = need_stream + extra + (need_stream > 0)
        streams = np.repeat(np.arange(2 * n, dtype=np.int64), n_draw)
        lu = streams >> 1
        comm = own[lu]
        out_mask = (streams & 1).astype(bool)
        if out_mask.any():
            shift = rng.integers(1, c_num, size=int(out_mask.sum()))
            comm[out_mask] = (comm[out_mask] + shift) % c_num
        m = plan.m_lo + (comm < plan.m_rem)
        u = rng.random(len(streams))
        if rnd < PL_ROUNDS:
            rank = _zipf_ranks(u, m, plan.popularity_exponent)
        else:                                     # heavy users: fill the tail uniformly
            rank = np.minimum((u * m).astype(np.int64), m - 1)
        keys = lu * items + _items_of(comm, rank, plan)

        # Merge kept rows and new draws per stream (kept first), without a sort.
        kept_count = np.bincount(kept_stream, minlength=2 * n)
        tot = kept_count + n_draw
        starts = _group_starts(tot)
        comb_keys = np.empty(int(tot.sum()), dtype=np.int64)
        comb_stream = np.repeat(np.arange(2 * n, dtype=np.int64), tot)
        if len(kept_keys):
            kst = _group_starts(kept_count)
            kpos = starts[kept_stream] + (np.arange(len(kept_keys)) - kst[kept_stream])
            comb_keys[kpos] = kept_keys
        nst = _group_starts(n_draw)
        npos = starts[streams] + kept_count[streams] + (np.arange(len(keys)) - nst[streams])
        comb_keys[npos] = keys

        # First occurrence of each (user, item), in draw order; keep the first `target` per stream.
        order = np.argsort(comb_keys, kind="stable")
        sk = comb_keys[order]
        first = np.ones(len(sk), dtype=bool)
        first[1:] = sk[1:] != sk[:-1]
        pos_first = np.sort(order[first])
        u_keys, u_stream = comb_keys[pos_first], comb_stream[pos_first]
        counts = np.bincount(u_stream, minlength=2 * n)
        rank_in = np.arange(len(u_keys)) - _group_starts(counts)[u_stream]
        keep = rank_in < target[u_stream]
        kept_keys, kept_stream = u_keys[keep], u_stream[keep]
        need_stream = target - np.minimum(counts, target)

    lu = kept_keys // items
    item = kept_keys - lu * items
    in_comm = (kept_stream & 1) == 0

    # Random order inside each user; the last positions become test (and get the latest ts).
    order = np.argsort(lu + rng.random(len(lu)))
    lu, item, in_comm = lu[order], item[order], in_comm[order]
    cnt = np.bincount(lu, minlength=n)
    starts = _group_starts(cnt)
    pos = np.arange(len(lu)) - starts[lu]
    if plan.test_fraction > 0:
        n_test = np.floor(plan.test_fraction * cnt + rng.random(n)).astype(np.int64)
        n_test = np.where(cnt >= 2, np.clip(n_test, 1, np.maximum(cnt - 1, 1)), 0)
        is_test = pos >= (cnt - n_test)[lu]
    else:
        is_test = np.zeros(len(lu), dtype=bool)

    ts = None
    if plan.timestamps:
        span = np.floor(TS_RANGE * (0.05 + 0.95 * rng.random(n)))
        start = TS_START + np.floor((TS_RANGE - span) * rng.random(n))
        gaps = rng.exponential(size=len(lu))
        csum = np.cumsum(gaps)
        before = np.where(starts > 0, csum[np.maximum(starts - 1, 0)], 0.0)
        user_total = np.bincount(lu, weights=gaps, minlength=n) + rng.exponential(size=n)
        frac = (csum - before[lu]) / user_total[lu]
        ts = (start[lu] + np.floor(span[lu] * frac)).astype(np.int64) + pos

    return first_user + lu, item, ts, is_test, in_comm


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

class _PartWriter:
    """One Parquet file, written in row groups of about ROW_GROUP_ROWS rows."""

    def __init__(self, path: Path, with_ts: bool):
        import pyarrow as pa
        import pyarrow.parquet as pq
        fields = [pa.field("user_id", pa.int64(), nullable=False),
                  pa.field("item_id", pa.int64(), nullable=False)]
        if with_ts:
            fields.append(pa.field("ts", pa.int64(), nullable=False))
        self.schema = pa.schema(fields)
        self.writer = pq.ParquetWriter(path, self.schema)
        self.buf: list[list] = []
        self.buffered = 0
        self.rows = 0

    def add(self, cols: list) -> None:
        if len(cols[0]):
            self.buf.append(cols)
            self.buffered += len(cols[0])
            if self.buffered >= ROW_GROUP_ROWS:
                self.flush()

    def flush(self) -> None:
        import numpy as np
        import pyarrow as pa
        if not self.buf:
            return
        arrays = [pa.array(np.concatenate([b[k] for b in self.buf]), type=pa.int64())
                  for k in range(len(self.schema))]
        self.writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema),
                                row_group_size=self.buffered)
        self.rows += self.buffered
        self.buf, self.buffered = [], 0

    def close(self) -> None:
        self.flush()
        self.writer.close()


def _check_out(out: Path, overwrite: bool) -> bool:
    """May gen write ``out``? True if an earlier gen output is to be replaced (see
    ``distgnn.atomic.check_replaceable``: gen.json present and nothing but gen's own entries)."""
    return atomic.check_replaceable(out, atomic.json_marker(GEN_JSON, generator="distgnn gen"), overwrite,
                                    what="'distgnn gen'", own_entry=OWN_ENTRIES.__contains__)


def generate(out_dir: str | os.PathLike, interactions: int, users: int | None = None,
             items: int | None = None, communities: int | None = None, seed: int = 0,
             test_fraction: float = DEFAULT_TEST_FRACTION, timestamps: bool = False, *,
             in_community: float = DEFAULT_IN_COMMUNITY, chunk_users: int = DEFAULT_CHUNK_USERS,
             overwrite: bool = False, progress: bool = True,
             activity_exponent: float = DEFAULT_ACTIVITY_EXPONENT,
             popularity_exponent: float = DEFAULT_POPULARITY_EXPONENT) -> dict[str, Any]:
    """Write a synthetic interaction graph to ``out_dir`` and return its counts.

    Returns a dict with ``interactions`` (rows written), ``train``, ``test``, ``users``,
    ``items``, ``communities``, ``active_users`` (users with >= 1 interaction), ``test_users``,
    ``in_community_fraction`` (of train rows), ``train_files``, ``test_files``, ``out`` and
    ``seconds``. Raises ``UserError`` for bad arguments, leaving nothing on disk.
    """
    t0 = time.perf_counter()
    plan = _plan(interactions, users, items, communities, seed, test_fraction, timestamps,
                 in_community, activity_exponent, popularity_exponent)
    k = _as_int(chunk_users, "--chunk-users")
    if k < 1:
        raise UserError(f"--chunk-users must be at least 1, got {k}; e.g. 100000")
    blocks_per_chunk = -(-k // BLOCK_USERS)
    out = Path(out_dir).expanduser().absolute()
    replace = _check_out(out, overwrite)
    atomic.sweep_stale(out.parent)

    import numpy as np
    from tqdm import tqdm

    # Pass 1: the activity weights' running sum at every block boundary.
    offsets = np.empty(plan.num_blocks + 1)
    offsets[0] = 0.0
    acc = 0.0
    for b in range(plan.num_blocks):
        acc = acc + float(np.cumsum(_block_weights(_block_rng(plan, b),
                                                   _block_size(plan, b), plan))[-1])
        offsets[b + 1] = acc
    total_weight = acc

    created = out.parent                          # topmost directory this run will create
    while not created.parent.exists():
        created = created.parent
    created = None if created.exists() else created
    stats = dict(train=0, test=0, active_users=0, test_users=0, in_community=0)
    n_chunks = -(-plan.num_blocks // blocks_per_chunk)
    try:
        # fsynced and renamed into place at the end; an earlier output removed only after
        with atomic.AtomicDir(out, overwrite=replace) as tmp:
            (tmp / "train").mkdir()
            (tmp / "test").mkdir()
            bar = tqdm(total=plan.interactions, unit="int", unit_scale=True, desc="distgnn gen",
                       file=sys.stderr, disable=not progress, dynamic_ncols=True)
            with bar:
                for chunk in range(n_chunks):
                    name = f"part-{chunk:05d}.parquet"
                    train_w = _PartWriter(tmp / "train" / name, plan.timestamps)
                    test_w = _PartWriter(tmp / "test" / name, plan.timestamps)
                    b_end = min(plan.num_blocks, (chunk + 1) * blocks_per_chunk)
                    for b in range(chunk * blocks_per_chunk, b_end):
                        uid, iid, ts, is_test, in_comm = _gen_block(plan, b, offsets[b], total_weight)
                        tr = ~is_test
                        cols = [uid, iid] + ([ts] if ts is not None else [])
                        train_w.add([c[tr] for c in cols])
                        test_w.add([c[is_test] for c in cols])
                        stats["train"] += int(tr.sum())
                        stats["test"] += int(is_test.sum())
                        stats["in_community"] += int(in_comm[tr].sum())
                        stats["active_users"] += int(len(np.unique(uid))) if len(uid) else 0
                        stats["test_users"] += int(len(np.unique(uid[is_test]))) if is_test.any() else 0
                        bar.update(len(uid))
                    train_w.close()
                    test_w.close()
            total = stats["train"] + stats["test"]
            counts = {
                "interactions": total, "train": stats["train"], "test": stats["test"],
                "users": plan.users, "items": plan.items, "communities": plan.communities,
                "active_users": stats["active_users"], "test_users": stats["test_users"],
                "in_community_fraction": round(stats["in_community"] / stats["train"], 6)
                if stats["train"] else 0.0,
                "train_files": n_chunks, "test_files": n_chunks,
            }
            params = {k2: v for k2, v in asdict(plan).items()}
            params["chunk_users"] = k
            meta = {"generator": "distgnn gen", "requested_interactions": plan.interactions,
                    "params": params, "counts": counts,
                    "layout": {"train": "train/part-*.parquet", "test": "test/part-*.parquet",
                               "columns": ["user_id", "item_id"] + (["ts"] if plan.timestamps else [])}}
            (tmp / GEN_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    except BaseException as exc:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        if isinstance(exc, OSError):
            raise UserError(f"cannot write {out}: {exc.strerror or exc}; free some space or "
                            f"choose another --out") from None
        raise
    counts = dict(counts, out=str(out), seconds=time.perf_counter() - t0)
    return counts


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}


def _count(text: str) -> int:
    """argparse type for counts: 1000, 1_000_000, 10M, 2.5k, 1e9."""
    s = text.strip().replace("_", "").replace(",", "")
    match = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[0-9]+)?)([kmbg]?)", s, flags=re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count; use e.g. 1000, 10M or 1e9")
    value = float(match.group(1)) * _SUFFIX[match.group(2).lower()]
    if "." not in match.group(1) and "e" not in match.group(1).lower():
        value = int(match.group(1)) * _SUFFIX[match.group(2).lower()]
    if value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(value)


DESCRIPTION = """\
Generate a synthetic user-item interaction graph (like Gowalla check-ins) as chunked Parquet.

Users have power-law activity and items power-law popularity. Users and items belong to planted
communities (user u is in community u % C, item j in j % C) and, by default, 80% of each
user's interactions fall inside the user's own community, so partition quality (edge cut) and
recommendation quality can be measured against a known structure. A fraction of every user's
interactions is held out as a test set (the latest ones with --timestamps, random otherwise).

Output (written to a hidden sibling directory and renamed to OUT when complete):
  OUT/train/part-00000.parquet ...   user_id, item_id [, ts]   (int64)
  OUT/test/part-00000.parquet ...    same columns; no test pair appears in train
  OUT/gen.json                       parameters and counts

The result depends only on the arguments: the same --seed gives byte-identical files."""

EPILOG = """\
examples:
  distgnn gen --interactions 1M --out data/synth1m
  distgnn gen --interactions 1e9 --timestamps --out /data/synth1b
  distgnn gen --interactions 100k --users 5000 --items 8000 --communities 8 --seed 1 --out s"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "gen", help="generate a synthetic interaction graph with planted communities (Parquet)",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--interactions", "-n", type=_count, required=True, metavar="N",
                   help="about N interactions in total (duplicates within a user are removed; "
                        "the actual counts are printed at the end). Accepts 1000, 10M, 1e9")
    p.add_argument("--users", type=_count, metavar="U",
                   help=f"number of users (default: about N/{INTERACTIONS_PER_USER}, more for "
                        f"tiny N)")
    p.add_argument("--items", type=_count, metavar="I",
                   help=f"number of items (default: about N/{INTERACTIONS_PER_ITEM}, more for "
                        f"tiny N)")
    p.add_argument("--communities", type=_count, metavar="C",
                   help="planted communities, 1..min(U, I) (default: max(2, min(64, U // 500)))")
    p.add_argument("--in-community", type=float, default=DEFAULT_IN_COMMUNITY, metavar="P",
                   help="share of each user's interactions inside the user's community "
                        "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION, metavar="F",
                   help="share of each user's interactions held out in OUT/test, in [0, 1); "
                        "at least one per user with two or more (default: %(default)s)")
    p.add_argument("--timestamps", action="store_true",
                   help="add an int64 'ts' column (seconds, increasing per user); the held-out "
                        "interactions are then each user's latest ones")
    p.add_argument("--chunk-users", type=_count, default=DEFAULT_CHUNK_USERS, metavar="K",
                   help=f"users per Parquet file, rounded up to a multiple of {BLOCK_USERS}; "
                        f"does not change the data (default: %(default)s)")
    p.add_argument("--activity-exponent", type=float, default=DEFAULT_ACTIVITY_EXPONENT,
                   metavar="A", help="Pareto tail index of user activity; smaller is more "
                                     "skewed (default: %(default)s)")
    p.add_argument("--popularity-exponent", type=float, default=DEFAULT_POPULARITY_EXPONENT,
                   metavar="S", help="Zipf exponent of item popularity; 0 is uniform "
                                     "(default: %(default)s)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (must not "
                   "exist or be empty, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace DIR if it holds the output of an earlier 'distgnn gen'")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    res = generate(args.out, args.interactions, users=args.users, items=args.items,
                   communities=args.communities, seed=args.seed, test_fraction=args.test_fraction,
                   timestamps=args.timestamps, in_community=args.in_community,
                   chunk_users=args.chunk_users, overwrite=args.overwrite,
                   progress=not args.quiet, activity_exponent=args.activity_exponent,
                   popularity_exponent=args.popularity_exponent)
    print(f"wrote {res['interactions']:,} interactions (requested about {args.interactions:,}): "
          f"{res['train']:,} train, {res['test']:,} test")
    print(f"  {res['active_users']:,} active users of {res['users']:,}, {res['items']:,} items, "
          f"{res['communities']:,} communities, {res['in_community_fraction']:.1%} of train "
          f"interactions inside the user's community")
    print(f"  {res['out']}/{{train,test}}/part-*.parquet ({res['train_files']} files each), "
          f"{res['seconds']:.1f} s")
    return 0
