import numpy as np
import pytest
import torch

from distgnn import format as fmt
from distgnn.graph_store import LocalGraphStore
from distgnn.sampler import EdgeMinibatchSampler, NegativeSampler
from tests.train_data import partitioned


@pytest.fixture(scope="module")
def parts_dir(tmp_path_factory):
    return partitioned(tmp_path_factory.mktemp("sampler"), num_parts=3, num_users=200, num_items=120)


def _edge_set(src, dst):
    return set(zip(src.tolist(), dst.tolist()))


def _block_edges(block, src_gids):
    u, v = block.edges()
    return src_gids[u], src_gids[:block.num_dst_nodes()][v]


@pytest.mark.parametrize("parts", [None, [1]])
def test_no_leakage_of_batch_positives_or_test_targets(parts_dir, parts):
    g = LocalGraphStore(parts_dir, parts)
    tu, ti = fmt.read_targets(parts_dir, "test")
    test_pairs = _edge_set(tu, ti) | _edge_set(ti, tu)
    assert len(test_pairs) > 0
    items = torch.from_numpy(g.book.item_gids())
    neg = NegativeSampler(items, g.degrees(items), 3, 0.5)
    s = EdgeMinibatchSampler(g, [-1, -1], 64, neg, seed=0)   # fanout -1: every edge but the excluded
    gen = torch.Generator().manual_seed(0)
    checked = 0
    for _, idx in s.batches(0):
        mb = s.sample(idx, gen)
        batch_pairs = _edge_set(mb.user_gid, mb.pos_item_gid) | _edge_set(mb.pos_item_gid, mb.user_gid)
        for block, src in zip(mb.blocks, mb.block_gids):
            es = _edge_set(*_block_edges(block, src))
            assert not (es & batch_pairs)
            assert not (es & test_pairs)
            checked += len(es)
        # dst nodes of each block are its first src nodes; the last block's dst are the seeds
        assert torch.equal(mb.block_gids[-1][:mb.blocks[-1].num_dst_nodes()], mb.seed_gids)
        assert torch.equal(mb.seed_gids[mb.user_pos], mb.user_gid)
        assert torch.equal(mb.seed_gids[mb.neg_pos], mb.neg_item_gid)
    assert checked > 1000


def test_exclusion_is_what_removes_the_positive(parts_dir):
    """The leakage test can fail: without exclusion the batch's own edges do show up."""
    g = LocalGraphStore(parts_dir)
    u, i = g.train_interactions()
    block, src = g.sample_block(u[:32], -1, None)
    es = _edge_set(*_block_edges(block, src))
    assert set(zip(i[:32].tolist(), u[:32].tolist())) <= es
    block, src = g.sample_block(u[:32], -1, (u[:32], i[:32]))
    assert not (set(zip(i[:32].tolist(), u[:32].tolist())) & _edge_set(*_block_edges(block, src)))


def test_single_partition_store_uses_lids_inside_gids_outside(parts_dir):
    full = LocalGraphStore(parts_dir)
    one = LocalGraphStore(parts_dir, [2])
    gids, owned = fmt.read_part_nodes(parts_dir, 2)
    # lid order is the nodes.parquet row order
    assert torch.equal(one.lid_to_gid(torch.arange(len(gids))), torch.from_numpy(np.array(gids)))
    seeds = torch.from_numpy(gids[owned][:20])
    b1, s1 = one.sample_block(seeds, -1)
    b2, s2 = full.sample_block(seeds, -1)
    assert _edge_set(*_block_edges(b1, s1)) == _edge_set(*_block_edges(b2, s2))
    assert torch.equal(one.degrees(seeds), full.degrees(seeds))


def test_negatives_are_items_and_popularity_follows_degree():
    items = torch.tensor([10, 11, 12, 13])
    deg = torch.tensor([1, 1, 1, 97])
    ns = NegativeSampler(items, deg, k=4, pop_fraction=1.0, alpha=1.0)
    out = ns.sample(5000, torch.Generator().manual_seed(0))
    assert out.shape == (5000, 4)
    frac = (out == 13).float().mean().item()
    assert 0.95 < frac < 0.99
    uni = NegativeSampler(items, deg, k=2, pop_fraction=0.0).sample(4000, torch.Generator().manual_seed(0))
    assert set(uni.unique().tolist()) == {10, 11, 12, 13}
    assert 0.2 < (uni == 13).float().mean().item() < 0.3


def test_fanout_bounds_in_degree(parts_dir):
    g = LocalGraphStore(parts_dir)
    u, _ = g.train_interactions()
    seeds = torch.unique(u)[:50]
    block, _ = g.sample_block(seeds, 3)
    assert int(block.in_degrees().max()) <= 3
    assert int(block.in_degrees().min()) >= 1


def test_shared_negatives_are_one_row_for_the_batch(parts_dir):
    g = LocalGraphStore(parts_dir)
    items = torch.from_numpy(g.book.item_gids())
    s = EdgeMinibatchSampler(g, [5], 32, NegativeSampler(items, g.degrees(items), 16), seed=0,
                             shared_negatives=True)
    mb = s.sample(torch.arange(32), torch.Generator().manual_seed(0))
    assert mb.neg_item_gid.shape == (1, 16) and mb.neg_pos.shape == (1, 16)
    assert torch.equal(mb.seed_gids[mb.neg_pos], mb.neg_item_gid)


def test_partition_local_negatives_come_from_the_local_items():
    import torch

    from distgnn.sampler import NegativeSampler

    items = torch.arange(100, 200)
    local = torch.arange(150, 160)
    gen = torch.Generator().manual_seed(0)
    neg = NegativeSampler(items, torch.ones(100), k=8, local_item_gids=local, local_fraction=0.5).sample(500, gen)
    assert neg.shape == (500, 8)
    assert ((neg[:, 4:] >= 150) & (neg[:, 4:] < 160)).all(), "local share must come from the local items"
    outside = (neg[:, :4] < 150) | (neg[:, :4] >= 160)
    assert outside.float().mean() > 0.8, "the rest stays uniform over the catalogue"
    plain = NegativeSampler(items, torch.ones(100), k=8).sample(500, gen)
    assert ((plain < 150) | (plain >= 160)).float().mean() > 0.8
