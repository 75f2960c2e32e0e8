"""GraphShard actors and the distributed neighbour sampler against the in-process LocalGraphStore.

One local Ray instance (2 CPUs) serves the whole module; failing tests get the Ray workers'
stdout/stderr attached to their report (distgnn.ray_runtime.testing)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import ray
import torch

from distgnn import format as fmt
from distgnn.errors import UserError
from distgnn.graph_store import LocalGraphStore
from distgnn.ray_runtime import cluster
from distgnn.ray_runtime.graph_shard import (DistributedNeighborSampler, RayGraphStore,
                                             create_graph_shards)
from distgnn.ray_runtime.testing import make_partitions

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_partitions(tmp_path_factory.mktemp("gs"), layouts=((2, "metis"),))[(2, "metis")]


@pytest.fixture(scope="module")
def shards(ray_cluster, root):
    s = create_graph_shards(root, 2, timeout_s=60)
    yield s
    for a in s:
        ray.kill(a)


@pytest.fixture(scope="module")
def local(root):
    return LocalGraphStore(root)


@pytest.fixture(scope="module")
def book(root):
    return fmt.PartitionBook.from_manifest(fmt.load_manifest(root))


def _edge_set(src, dst) -> set:
    return set(zip(np.asarray(src).tolist(), np.asarray(dst).tolist()))


def _local_edges(local: LocalGraphStore, seeds: torch.Tensor, fanout: int, exclude=None) -> set:
    block, src_gids = local.sample_block(seeds, fanout, exclude)
    u, v = block.edges()
    return _edge_set(src_gids[u], seeds[v])


def _seeds(book, n=150, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.unique(torch.randint(0, book.num_nodes, (n,), generator=g))


@pytest.mark.parametrize("local_parts", [[0], [], [0, 1]], ids=["part0", "none", "both"])
@pytest.mark.parametrize("with_exclude", [False, True])
def test_fanout_all_equals_local_store(shards, local, book, local_parts, with_exclude):
    sampler = DistributedNeighborSampler(shards, book, local_parts=local_parts, timeout_s=60)
    seeds = _seeds(book)
    assert len(np.unique(book.part_of(seeds.numpy()))) == 2
    exclude = None
    if with_exclude:  # positives of a minibatch: some of the seeds' own interactions
        users, items = local.train_interactions()
        is_seed = torch.isin(users, seeds) | torch.isin(items, seeds)
        pick = torch.nonzero(is_seed).flatten()[::3]
        exclude = (users[pick], items[pick])
        assert len(pick) > 10
    src, dst = sampler.sample_neighbors(seeds, -1, exclude)
    want = _local_edges(local, seeds, -1, exclude)
    got = _edge_set(src, dst)
    assert len(src) == len(got)  # no duplicate edges
    assert got == want, (len(got - want), len(want - got))
    if with_exclude:
        full = _local_edges(local, seeds, -1)
        assert len(full) > len(want)  # the exclusion removed something
    c = sampler.counters()
    # one request per remote partition for the hop; the local parts made no Ray call
    assert c["remote_requests"] == 2 - len(local_parts)
    owner = book.part_of(seeds.numpy())
    assert c["local_seeds"] == int(np.isin(owner, local_parts).sum())


def test_fanout_k_is_a_subset_without_replacement_and_reproducible(shards, local, book):
    sampler = DistributedNeighborSampler(shards, book, local_parts=[1], timeout_s=60)
    seeds = _seeds(book, seed=1)
    users, items = local.train_interactions()
    exclude = (users[:200], items[:200])
    allowed = _local_edges(local, seeds, -1, exclude)
    k = 3
    src, dst = sampler.sample_neighbors(seeds, k, exclude, rng_seed=7)
    got = list(zip(src.tolist(), dst.tolist()))
    assert len(set(got)) == len(got)                       # without replacement
    assert set(got) <= allowed                             # real, non-excluded neighbours
    def per(dsts):
        return np.bincount(np.searchsorted(seeds.numpy(), np.asarray(list(dsts), dtype=np.int64)),
                           minlength=len(seeds))
    avail, per_seed = per(d for _, d in allowed), per(dst.numpy())
    excluded = per(d for _, d in _local_edges(local, seeds, -1) - allowed)
    # DGL's exclude_edges (and so LocalGraphStore) draws k, then drops the excluded ones: a seed
    # with excluded in-edges may get fewer than k; every other seed gets min(k, degree)
    clean = excluded == 0
    assert np.array_equal(per_seed[clean], np.minimum(avail, k)[clean])
    assert (per_seed <= np.minimum(avail, k)).all()
    assert (per_seed >= np.minimum(avail, k) - excluded).all()
    assert (avail[clean] > k).any() and (~clean).any()
    src2, dst2 = sampler.sample_neighbors(seeds, k, exclude, rng_seed=7)
    assert torch.equal(src, src2) and torch.equal(dst, dst2)
    src3, _ = sampler.sample_neighbors(seeds, k, exclude, rng_seed=8)
    assert not torch.equal(src, src3)


def test_local_partition_is_mapped_zero_copy(shards, book, root):
    sampler = DistributedNeighborSampler(shards, book, local_parts=[0], timeout_s=60)
    csc = sampler.local[0]
    for arr in (csc.indptr, csc.indices):
        assert not arr.flags.writeable and not arr.flags.owndata  # object-store pages, not a copy
    indptr_t, indices_t, _ = csc.g.adj_tensors("csc", etype=("src", "e", "dst"))
    assert indptr_t.data_ptr() == csc.indptr.ctypes.data
    assert indices_t.data_ptr() == csc.indices.ctypes.data
    # the arrays are the partition's edges in gid space
    src, dst = fmt.read_part_edges(root, 0)
    assert np.array_equal(csc.indices, src)
    assert np.array_equal(np.repeat(np.arange(csc.gid_start, csc.gid_end), np.diff(csc.indptr)), dst)


def test_sample_block_follows_graph_store_contract(shards, book, local):
    sampler = DistributedNeighborSampler(shards, book, local_parts=[0], timeout_s=60)
    seeds = _seeds(book, seed=2)
    block, src_gids = sampler.sample_block(seeds, 4)
    assert block.num_dst_nodes() == len(seeds)
    assert torch.equal(src_gids[:len(seeds)], seeds)                 # dst nodes first
    assert len(torch.unique(src_gids)) == len(src_gids)
    u, v = block.edges()
    got = _edge_set(src_gids[u], seeds[v])
    assert len(got) == block.num_edges()
    assert got <= _local_edges(local, seeds, -1)                      # real in-neighbours
    assert np.bincount(v.numpy(), minlength=len(seeds)).max() <= 4
    assert block.srcdata["_ID"].equal(src_gids) and block.dstdata["_ID"].equal(seeds)


def test_ray_graph_store_matches_local_store(shards, root, local, book):
    for p in (0, 1):
        rg = RayGraphStore(root, shards, local_parts=[p], timeout_s=60)
        lp = LocalGraphStore(root, parts=[p])
        ru, ri = rg.train_interactions()
        lu, li = lp.train_interactions()
        assert _edge_set(ru, ri) == _edge_set(lu, li) and len(ru) == len(lu)
    gids = torch.arange(book.num_nodes)
    assert torch.equal(rg.degrees(gids), local.degrees(gids))


@pytest.mark.parametrize("local_parts", [[0], [1, 0], [0, 1]])
def test_interactions_by_position_equal_the_arrays(shards, root, local_parts):
    """The worker's on-demand interactions (``CSCInteractions``, read from the mapped CSC) give
    the same pairs in the same order as ``train_interactions()``'s arrays, for any positions;
    a position outside them is an error, not a wrong pair."""
    rg = RayGraphStore(root, shards, local_parts=local_parts, timeout_s=60)
    users, items = rg.train_interactions()
    inter = rg.interactions()
    assert len(inter) == len(users) > 100
    u, i = inter.take(torch.arange(len(users)))
    assert torch.equal(u, users) and torch.equal(i, items)
    pos = torch.randperm(len(users), generator=torch.Generator().manual_seed(3))[:97]
    u, i = inter.take(pos)
    assert torch.equal(u, users[pos]) and torch.equal(i, items[pos])
    with pytest.raises(IndexError):
        inter.take(torch.tensor([len(users)]))


def test_missing_partition_directory_is_one_clear_error(ray_cluster, tmp_path):
    with pytest.raises(UserError, match=r"graph shard 0 on node \S+: partition directory .* does not exist"):
        create_graph_shards(tmp_path / "nope", 1, timeout_s=60)


def _wait_until_dead(actor, timeout_s: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get(actor.ready.remote(), timeout=5)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.1)
    raise AssertionError(f"actor still alive {timeout_s}s after ray.kill")


def test_dead_graph_shard_is_a_clear_error(ray_cluster, root, book):
    shards = create_graph_shards(root, 2, timeout_s=60)
    sampler = DistributedNeighborSampler(shards, book, local_parts=[0], timeout_s=20)
    ray.kill(shards[1])
    _wait_until_dead(shards[1])  # ray.kill is asynchronous: a call racing it could still succeed
    with pytest.raises(cluster.RayCallError, match=r"GraphShard 1\b.*died"):
        sampler.sample_neighbors(_seeds(book), 2)
    ray.kill(shards[0])


def test_a_crashed_graph_shard_restarts_and_serves_the_same_edges(ray_cluster, root, book):
    """GraphShards hold nothing that changes: Ray restarts a crashed one (it reloads its partition
    files, under a new generation) and the sampler's calls go on; a trainer that maps the
    restarted shard's partition gets the new incarnation's CSC object."""
    import time

    shards = create_graph_shards(root, 2, timeout_s=60)
    try:
        remote = DistributedNeighborSampler(shards, book, local_parts=[], timeout_s=60)
        seeds = _seeds(book)
        before = _edge_set(*remote.sample_neighbors(seeds, -1))
        old = ray.get(shards[1].info.remote(), timeout=30)
        ray.kill(shards[1], no_restart=False)  # a crash: Ray may restart it
        deadline = time.monotonic() + 60
        while True:
            try:
                info = ray.get(shards[1].info.remote(), timeout=10)
                if info["generation"] == 1:
                    break
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                pass
            assert time.monotonic() < deadline, "the GraphShard was not restarted"
            time.sleep(0.2)
        assert info["pid"] != old["pid"] and info["num_edges"] == old["num_edges"]
        assert _edge_set(*remote.sample_neighbors(seeds, -1)) == before
        mapped = DistributedNeighborSampler(shards, book, local_parts=[1], timeout_s=60)
        assert _edge_set(*mapped.sample_neighbors(seeds, -1)) == before
        assert mapped.counters()["local_edges"] > 0
    finally:
        for a in shards:
            ray.kill(a)


def test_shards_of_a_partition_share_a_placement_group_bundle(ray_cluster, root, book):
    from ray.util.placement_group import remove_placement_group

    from distgnn.ray_runtime.ps import create_ps_shards

    pg = cluster.placement_group([{"CPU": 1}, {"CPU": 1}], strategy="PACK", timeout_s=60)
    try:
        strategies = [cluster.bundle_strategy(pg, p) for p in range(2)]
        gs = create_graph_shards(root, 2, scheduling_strategies=strategies, timeout_s=60)
        ps = create_ps_shards(book, 4, scheduling_strategies=strategies, timeout_s=60)
        infos = cluster.get_with_deadline([a.info.remote() for a in gs + ps], 30, "info")
        assert [i["part_id"] for i in infos] == [0, 1, 0, 1]
        table = ray.util.placement_group_table(pg)
        assert table["state"] == "CREATED"
        for a in gs + ps:
            ray.kill(a)
        # more bundles than the cluster has CPUs: a clear error at the deadline, not a hang
        with pytest.raises(UserError, match="could not reserve 3 bundles"):
            cluster.placement_group([{"CPU": 1}] * 3, timeout_s=2)
    finally:
        remove_placement_group(pg)


def test_workers_cover_every_partition_once():
    from distgnn.ray_runtime.worker import assigned_parts

    for num_parts in (1, 2, 5, 8):
        for workers in range(1, num_parts + 1):
            got = [assigned_parts(r, workers, num_parts) for r in range(workers)]
            assert sorted(p for parts in got for p in parts) == list(range(num_parts))
            assert all(got), "every worker trains something"
            assert max(map(len, got)) - min(map(len, got)) <= 1


def test_workers_take_the_partitions_held_on_their_node():
    """Ray Train places workers without regard to the shards: each worker takes the partition
    group whose shards are on its node; on one node (or with no match) rank r keeps group r."""
    from distgnn.ray_runtime.worker import assigned_parts, node_groups

    assert node_groups(["a", "a", "a"], ["a", "a", "a"]) == [0, 1, 2]
    assert node_groups(["b", "a"], ["a", "b"]) == [1, 0]           # ranks swapped across nodes
    assert node_groups(["c", "b", "a", "d"], ["a", "b", "c", "d"]) == [2, 1, 0, 3]
    assert node_groups(["x", "y"], [None, None]) == [0, 1]         # unknown placement: identity
    # 2 workers over 4 partitions, groups {0, 2} and {1, 3}: shards 1 and 3 live on rank 0's node
    group = node_groups(["n1", "n0"], ["n0", "n1", "n0", "n1"])
    assert [assigned_parts(g, 2, 4) for g in group] == [[1, 3], [0, 2]]
    for nodes in (["a", "b", "a"], ["b", "b", "a"], ["a", "a", "a"]):  # always a permutation
        assert sorted(node_groups(nodes, ["a", "b", "a", "b", "a"])) == [0, 1, 2]


def test_a_partition_owning_every_node_samples_blocks_like_the_local_store(ray_cluster, tmp_path):
    """One partition (the single-machine case): the worker's sampler takes DGL's fused path
    (``PartitionCSC.sample_block``, D34) and keeps the contract: dst nodes first, real and
    non-excluded in-neighbours, at most k per seed, every neighbour with k = -1, the local store's
    CSC format, reproducible from the seed, the zero-copy mapped arrays, and counters."""
    root1 = make_partitions(tmp_path, layouts=((1, "random"),), interactions=5000)[(1, "random")]
    book1 = fmt.PartitionBook.from_manifest(fmt.load_manifest(root1))
    local1 = LocalGraphStore(root1)
    shards1 = create_graph_shards(root1, 1, timeout_s=60)
    try:
        sampler = DistributedNeighborSampler(shards1, book1, local_parts=[0], timeout_s=60)
        csc = sampler.local[0]
        assert csc.owns_all and csc.fused is not None
        indptr_t, indices_t, _ = csc.fused.g.adj_tensors("csc")
        assert indptr_t.data_ptr() == csc.indptr.ctypes.data  # the same mapped pages, no copy
        assert indices_t.data_ptr() == csc.indices.ctypes.data
        seeds = _seeds(book1, n=200, seed=3)
        users, items = local1.train_interactions()
        exclude = (users[:300], items[:300])
        allowed = _local_edges(local1, seeds, -1, exclude)
        k = 3
        block, src_gids = sampler.sample_block(seeds, k, exclude, rng_seed=11)
        assert "csc" in block.formats()["created"]
        assert block.num_dst_nodes() == len(seeds) and torch.equal(src_gids[:len(seeds)], seeds)
        assert len(torch.unique(src_gids)) == len(src_gids)
        assert block.srcdata["_ID"].equal(src_gids) and block.dstdata["_ID"].equal(seeds)
        u, v = block.edges()
        got = _edge_set(src_gids[u], seeds[v])
        assert len(got) == block.num_edges() > 0 and got <= allowed
        assert np.bincount(v.numpy(), minlength=len(seeds)).max() <= k
        again, src2 = sampler.sample_block(seeds, k, exclude, rng_seed=11)
        assert torch.equal(src2, src_gids) and all(torch.equal(a, b) for a, b in zip(again.edges(), block.edges()))
        other, other_src = sampler.sample_block(seeds, k, exclude, rng_seed=12)
        ou, ov = other.edges()
        assert _edge_set(other_src[ou], seeds[ov]) != got
        full, full_src = sampler.sample_block(seeds, -1, exclude)
        fu, fv = full.edges()
        assert _edge_set(full_src[fu], seeds[fv]) == allowed and full.num_edges() == len(allowed)
        c = sampler.counters()
        assert c["remote_requests"] == 0 and c["local_seeds"] == 4 * len(seeds)
        # the shard runs at the driver's niceness, not Ray's 15 (cluster.workload_env, D34)
        pid = ray.get(shards1[0].info.remote())["pid"]
        assert os.getpriority(os.PRIO_PROCESS, pid) == os.getpriority(os.PRIO_PROCESS, 0)
        assert c["local_edges"] == sum(b.num_edges() for b in (block, again, other, full))
    finally:
        for a in shards1:
            ray.kill(a)
