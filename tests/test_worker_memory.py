"""A Ray training worker holds no array over all nodes (issue #9): negatives through the item
ranges, edge weights from the minibatch's degrees, id maps only when used.

Each check compares with what the former all-node structures gave (the item gid array, the
per-node sqrt-degree table), so the results are shown to be unchanged, not just plausible.
The Ray tests share one local Ray instance (2 CPUs) and carry the workers' logs on failure.
"""
from __future__ import annotations

import numpy as np
import pytest
import ray
import torch

from distgnn import format as fmt
from distgnn.config import load_config
from distgnn.graph_store import LocalGraphStore
from distgnn.prefetch import sample_step, sym_edge_weights
from distgnn.sampler import EdgeMinibatchSampler, ItemRanges, NegativeSampler
from distgnn.trainer import Trainer, load_id_maps
from tests.train_cfg import small_config
from tests.train_data import partitioned

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def parts_dir(tmp_path_factory):
    return partitioned(tmp_path_factory.mktemp("wmem"), num_parts=3, num_users=200, num_items=120)


@pytest.fixture(scope="module")
def book(parts_dir):
    return fmt.PartitionBook.from_manifest(fmt.load_manifest(parts_dir))


def _old_sqrt_deg(root) -> torch.Tensor:
    """The per-node table the trainer used to build: sqrt(max(deg, 1)) of every gid."""
    g = LocalGraphStore(root)
    return g.degrees(torch.arange(g.num_nodes)).clamp(min=1).to(torch.float32).sqrt()


def _old_edge_weights(sqrt_deg: torch.Tensor, mb) -> list[torch.Tensor]:
    out = []
    for block, src in zip(mb.blocks, mb.block_gids):
        sd = sqrt_deg[src]
        u, v = block.edges()
        out.append(sd[v] / sd[u])
    return out


def _assert_same_weights(new: list[torch.Tensor], old: list[torch.Tensor]) -> None:
    assert len(new) == len(old) > 0
    for a, b in zip(new, old):
        assert a.dtype == b.dtype and torch.equal(a, b)


# --- negatives ----------------------------------------------------------------------------------
def test_item_ranges_map_positions_like_the_item_array(book):
    items = torch.from_numpy(book.item_gids())
    ranges = ItemRanges.from_book(book)
    assert len(ranges) == len(items)
    pos = torch.randint(len(items), (5000,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(ranges.gids(pos), items[pos])
    assert torch.equal(ranges.all_gids(), items)
    # empty ranges (a partition without items) are skipped, in any position
    r = ItemRanges(np.array([5, 9, 9, 20, 30]), np.array([8, 9, 12, 20, 31]))
    assert torch.equal(r.all_gids(), torch.tensor([5, 6, 7, 9, 10, 11, 30]))
    assert torch.equal(r.gids(torch.tensor([[6, 0], [3, 2]])), torch.tensor([[30, 5], [9, 7]]))


@pytest.mark.parametrize("pop, local", [(0.0, 0.0), (0.5, 0.0), (0.25, 0.5)])
def test_negatives_are_the_draws_of_the_item_array(book, pop, local):
    """The same generator gives the same negatives as indexing the array of all item gids."""
    items = torch.from_numpy(book.item_gids())
    deg = torch.arange(len(items)) % 7  # any popularity
    local_parts = [2, 0]
    local_gids = torch.cat([torch.arange(int(book.item_gid_start[p]), int(book.gid_end[p])) for p in local_parts])
    old = NegativeSampler(items, deg, 8, pop, 0.75, local_gids, local)
    new = NegativeSampler(ItemRanges.from_book(book), deg if pop else None, 8, pop, 0.75,
                          ItemRanges.from_book(book, local_parts), local)
    a = old.sample(300, torch.Generator().manual_seed(3))
    b = new.sample(300, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert not torch.equal(a, new.sample(300, torch.Generator().manual_seed(4)))  # the check can fail
    assert (new.cdf is not None) == (pop > 0)  # the per-item table only with popularity negatives


def test_popularity_negatives_need_item_degrees(book):
    with pytest.raises(ValueError, match="one degree per item"):
        NegativeSampler(ItemRanges.from_book(book), None, 4, 0.5)


# --- local backend: unchanged -------------------------------------------------------------------
def test_local_trainer_edge_weights_and_lazy_id_maps(tmp_path, parts_dir):
    cfg = load_config(small_config(tmp_path, parts_dir, train={"batch_size": 32}))
    assert cfg.model.edge_norm == "sym"
    t = Trainer(cfg, tmp_path / "run")
    assert not t.p.id_maps_loaded, "building a trainer must not read the id maps"
    sqrt_deg = _old_sqrt_deg(parts_dir)
    for step, idx in list(t.sampler.batches(0))[:3]:
        prepared = sample_step(t, 0, step, idx)
        _assert_same_weights(prepared.edge_weights, _old_edge_weights(sqrt_deg, prepared.mb))
    # the id maps are read on first use (checkpoints by original id), and are the directory's
    maps = t.p.id_maps
    assert t.p.id_maps_loaded
    want = load_id_maps(parts_dir)
    for ntype in fmt.NTYPES:
        assert np.array_equal(maps[ntype][0], want[ntype][0]) and maps[ntype][1].equals(want[ntype][1])


# --- Ray store ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shards(ray_cluster, parts_dir, book):
    from distgnn.ray_runtime.graph_shard import create_graph_shards
    from distgnn.ray_runtime.ps import create_ps_shards

    gs = create_graph_shards(parts_dir, book.num_parts, timeout_s=60)
    ps = create_ps_shards(book, 16, "adam", seed=0, timeout_s=60)
    yield gs, ps
    for a in gs + ps:
        ray.kill(a)


def test_ray_degrees_come_from_the_owners_one_call_per_remote_partition(shards, parts_dir, book):
    from distgnn.ray_runtime.graph_shard import RayGraphStore

    rg = RayGraphStore(parts_dir, shards[0], local_parts=[1], timeout_s=60)
    full = LocalGraphStore(parts_dir).degrees(torch.arange(book.num_nodes))
    gids = torch.randint(book.num_nodes, (400,), generator=torch.Generator().manual_seed(0))  # repeats too
    before = rg.sampler.counters()
    assert torch.equal(rg.degrees(gids), full[gids])
    after = rg.sampler.counters()
    remote = int((torch.from_numpy(book.part_of(gids.numpy())) != 1).sum())
    assert after["degree_requests"] - before["degree_requests"] == 2  # parts 0 and 2, one call each
    assert after["degree_nodes_remote"] - before["degree_nodes_remote"] == remote
    only_local = torch.arange(int(book.gid_start[1]), int(book.gid_end[1]))
    assert torch.equal(rg.degrees(only_local), full[only_local])
    assert rg.sampler.counters()["degree_requests"] == after["degree_requests"]  # no call at all
    assert torch.equal(rg.degrees(torch.arange(book.num_nodes)), full)


def test_ray_worker_builds_nothing_over_all_nodes_and_weights_are_unchanged(shards, tmp_path, parts_dir, book):
    """A trainer over the Ray stores (as in a worker): no degree of any node is asked for while it
    is built, no id map is read, and each minibatch's edge weights equal the former table's."""
    from distgnn.ray_runtime.graph_shard import RayGraphStore
    from distgnn.ray_runtime.ps import RayEmbeddingStore

    gs, ps = shards
    cfg = load_config(small_config(tmp_path, parts_dir, train={"batch_size": 32}))
    rg = RayGraphStore(parts_dir, gs, local_parts=[0], timeout_s=60)
    emb = RayEmbeddingStore(ps, book, 16, "adam", local_parts=[0], timeout_s=60)
    t = Trainer(cfg, tmp_path / "run", graph=rg, backend="ray", emb=emb)
    assert rg.sampler.counters()["degree_requests"] == 0, "building the trainer asked for degrees"
    assert not t.p.id_maps_loaded
    assert isinstance(t.negatives.items, ItemRanges) and t.negatives.cdf is None
    assert not any(torch.is_tensor(v) and v.numel() >= book.num_nodes for v in vars(t).values())
    sqrt_deg = _old_sqrt_deg(parts_dir)
    for step, idx in list(t.sampler.batches(0))[:3]:
        before = rg.sampler.counters()
        prepared = sample_step(t, 0, step, idx)
        after = rg.sampler.counters()
        mb = prepared.mb
        _assert_same_weights(prepared.edge_weights, _old_edge_weights(sqrt_deg, mb))
        # one batched call per remote partition the minibatch touches, for its nodes only
        remote_parts = set(book.part_of(mb.input_gids.numpy()).tolist()) - {0}
        assert after["degree_requests"] - before["degree_requests"] == len(remote_parts) > 0
        assert after["degree_nodes_remote"] - before["degree_nodes_remote"] <= len(mb.input_gids)
    # one degrees call serves every block because block sources are prefixes of the input nodes;
    # where they are not (input order scrambled here), the weights are still right
    import dataclasses

    scrambled = dataclasses.replace(mb, input_gids=mb.input_gids.flip(0))
    _assert_same_weights(sym_edge_weights(rg, scrambled), _old_edge_weights(sqrt_deg, mb))


def test_ray_popularity_negatives_match_the_local_store(shards, tmp_path, parts_dir, book):
    from distgnn.ray_runtime.graph_shard import RayGraphStore
    from distgnn.trainer import negative_sampler

    cfg = load_config(small_config(tmp_path, parts_dir, train={"popularity_negatives": 0.5,
                                                               "num_negatives": 4}))
    rg = RayGraphStore(parts_dir, shards[0], local_parts=[2], timeout_s=60)
    ray_neg, local_neg = negative_sampler(cfg, rg), negative_sampler(cfg, LocalGraphStore(parts_dir))
    assert ray_neg.cdf is not None and torch.equal(ray_neg.cdf, local_neg.cdf)
    g = torch.Generator
    assert torch.equal(ray_neg.sample(50, g().manual_seed(1)), local_neg.sample(50, g().manual_seed(1)))
