import math

import pytest
import torch

from distgnn.evaluation import csr_by_user, rank_topk, ranking_metrics


def _csr(pairs, num_users):
    u = torch.tensor([p[0] for p in pairs])
    i = torch.tensor([p[1] for p in pairs])
    return csr_by_user(u, i, num_users)


def test_hand_computed_metrics():
    # user 0: held-out {1, 5}; top-3 = [1, 2, 5] -> hits at ranks 0 and 2
    # user 1: held-out {4};    top-3 = [0, 3, 2] -> no hit
    top = torch.tensor([[1, 2, 5], [0, 3, 2]])
    indptr, items = _csr([(0, 1), (0, 5), (1, 4)], 2)
    m = ranking_metrics(top, indptr, items, torch.tensor([0, 1]), 3, num_items=6,
                        item_degree=torch.tensor([4, 2, 1, 1, 1, 8]), num_users=8)
    dcg0 = 1 + 1 / math.log2(4)
    idcg0 = 1 + 1 / math.log2(3)
    assert m["recall@3"] == pytest.approx((1.0 + 0.0) / 2)
    assert m["precision@3"] == pytest.approx((2 / 3 + 0) / 2)
    assert m["ndcg@3"] == pytest.approx((dcg0 / idcg0 + 0) / 2)
    assert m["hit_rate@3"] == pytest.approx(0.5)
    assert m["mrr@3"] == pytest.approx((1.0 + 0) / 2)
    assert m["coverage@3"] == pytest.approx(5 / 6)   # items 0,1,2,3,5
    pops = {0: 4 / 8, 1: 2 / 8, 2: 1 / 8, 3: 1 / 8, 5: 8 / 8}
    nov = sum(-math.log2(pops[int(i)]) for i in top.flatten()) / 6
    assert m["novelty@3"] == pytest.approx(nov)
    assert m["num_users"] == 2


def test_ndcg_ideal_uses_min_k_and_heldout_count():
    # 5 held-out items, K=2, both top-2 hit -> NDCG 1 (IDCG over min(K, 5) = 2 positions); recall 2/5
    top = torch.tensor([[0, 1]])
    indptr, items = _csr([(0, i) for i in range(5)], 1)
    m = ranking_metrics(top, indptr, items, torch.tensor([0]), 2, num_items=10)
    assert m["ndcg@2"] == pytest.approx(1.0)
    assert m["recall@2"] == pytest.approx(0.4)


def test_mrr_second_rank():
    top = torch.tensor([[3, 7, 1]])
    indptr, items = _csr([(0, 7)], 1)
    m = ranking_metrics(top, indptr, items, torch.tensor([0]), 3, num_items=10)
    assert m["mrr@3"] == pytest.approx(0.5)
    assert m["ndcg@3"] == pytest.approx(1 / math.log2(3))


def test_rank_topk_excludes_training_items_and_is_blocked():
    user_emb = torch.tensor([[1.0], [2.0], [-1.0]])
    item_emb = torch.tensor([[3.0], [2.0], [1.0], [0.0]])
    indptr, items = _csr([(0, 0), (1, 0), (1, 1)], 3)
    for ub in (1, 2, 10):
        top, score = rank_topk(user_emb, item_emb, indptr, items, torch.arange(3), 2, user_batch=ub)
        assert top.tolist() == [[1, 2], [2, 3], [3, 2]]
        assert score[0].tolist() == [2.0, 1.0]
