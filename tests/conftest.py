"""Shared fixtures: small interaction logs written as real Parquet/CSV files."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("DGLBACKEND", "pytorch")


def community_interactions(num_users: int = 300, num_items: int = 200, communities: int = 4,
                           per_user: int = 12, in_community: float = 0.9, seed: int = 0
                           ) -> tuple[np.ndarray, np.ndarray]:
    """A planted-community bipartite graph: user u and item j share community u % C == j % C."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(num_users), per_user)
    inside = rng.random(len(users)) < in_community
    comm = users % communities
    per_comm = num_items // communities
    item_in = comm + communities * rng.integers(0, per_comm, len(users))
    item_any = rng.integers(0, num_items, len(users))
    items = np.where(inside, item_in, item_any)
    return users.astype(np.int64), items.astype(np.int64)


def write_parquet(path: Path, **columns) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


@pytest.fixture
def logs(tmp_path: Path) -> dict[str, Path]:
    """train.parquet + test.parquet of a 4-community graph, with a few duplicates."""
    users, items = community_interactions()
    rng = np.random.default_rng(1)
    is_test = rng.random(len(users)) < 0.15
    train_u, train_i = users[~is_test], items[~is_test]
    train_u = np.concatenate([train_u, train_u[:5]])  # 5 exact duplicates (at least)
    train_i = np.concatenate([train_i, train_i[:5]])
    train = write_parquet(tmp_path / "in" / "train.parquet", user_id=train_u, item_id=train_i)
    test = write_parquet(tmp_path / "in" / "test.parquet", user_id=users[is_test], item_id=items[is_test])
    return {"train": train, "test": test, "tmp": tmp_path}


@pytest.fixture(scope="module")
def ray_cluster(request):
    """A local Ray instance (2 CPUs) per test module, shut down after it; a failing test's report
    gets the tails of the Ray workers' stdout/stderr."""
    from distgnn.ray_runtime.testing import ray_for_tests

    with ray_for_tests(request, num_cpus=2) as info:
        yield info
