"""Small planted-community interaction data for the training tests (not Gowalla).

Users and items belong to ``communities`` groups; each user interacts mostly (``p_in``) with items
of its own group, so a model that learns the structure ranks held-out items of the user's group
far above what item popularity alone can do.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def planted(out: Path, num_users: int = 300, num_items: int = 200, communities: int = 5,
            per_user: int = 15, p_in: float = 0.9, test_fraction: float = 0.2, seed: int = 0,
            string_ids: bool = False, valid_fraction: float = 0.0) -> tuple[Path, Path]:
    """Write train.parquet and test.parquet (and, with ``valid_fraction``, valid.parquet: that
    share of the training interactions, disjoint from both) under ``out``."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    user_c = rng.integers(0, communities, num_users)
    item_c = rng.integers(0, communities, num_items)
    # a Zipf-ish popularity inside each group so popularity is a real (but weak) baseline
    pop = 1.0 / (1.0 + rng.permutation(num_items)) ** 0.5
    rows_u, rows_i = [], []
    for u in range(num_users):
        same = np.flatnonzero(item_c == user_c[u])
        other = np.flatnonzero(item_c != user_c[u])
        n_in = rng.binomial(per_user, p_in)
        n_in = min(n_in, len(same))
        items_in = rng.choice(same, n_in, replace=False, p=pop[same] / pop[same].sum())
        items_out = rng.choice(other, per_user - n_in, replace=False, p=pop[other] / pop[other].sum())
        items = np.concatenate([items_in, items_out])
        rows_u.append(np.full(len(items), u))
        rows_i.append(items)
    u = np.concatenate(rows_u).astype(np.int64)
    i = np.concatenate(rows_i).astype(np.int64)
    test = rng.random(len(u)) < test_fraction
    # keep at least one training interaction per user
    first = np.r_[True, u[1:] != u[:-1]]
    test &= ~first

    def ids(x, prefix):
        return pa.array([f"{prefix}{v}" for v in x]) if string_ids else pa.array(x * 7 + 3)

    valid = ~test & ~first & (rng.random(len(u)) < valid_fraction) if valid_fraction else np.zeros_like(test)
    splits = [("train", ~test & ~valid), ("test", test)] + ([("valid", valid)] if valid_fraction else [])
    for name, mask in splits:
        pq.write_table(pa.table({"user_id": ids(u[mask], "u"), "item_id": ids(i[mask], "i")}),
                       out / f"{name}.parquet")
    return out / "train.parquet", out / "test.parquet"


def partitioned(tmp: Path, num_parts: int = 2, method: str = "random", valid: bool = True, **kw) -> Path:
    """Generate planted data and partition it with the project's partitioner; ``valid``: with a
    validation split (10% of the training interactions, through ``--valid``) as the configs of
    tests/train_cfg.py select on it."""
    from partition.pipeline import CreateOptions, create

    train, test = planted(tmp / "raw", valid_fraction=0.1 if valid else 0.0, **kw)
    out = tmp / "parts"
    create(CreateOptions(train=str(train), test=str(test), valid=str(tmp / "raw" / "valid.parquet") if valid else None,
                         out=str(out), num_parts=num_parts, method=method, progress=False))
    return out


def move_test_split_away(parts: Path, tmp: Path) -> Path:
    """Move targets/test.parquet out of a partition directory (a moved file cannot be read by
    anyone, root included, unlike one without read permission); returns where it went."""
    import shutil

    away = tmp / "test-split-away.parquet"
    shutil.move(parts / "targets" / "test.parquet", away)
    return away
