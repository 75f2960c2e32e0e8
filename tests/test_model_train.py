import pytest
import torch
import torch.nn.functional as F

from distgnn.config import load_config
from distgnn.evaluation import Evaluator, rank_topk, ranking_metrics
from distgnn.trainer import Trainer, load_for_inference
from distgnn.evaluation import infer_all
from tests.train_cfg import small_config
from tests.train_data import partitioned


def popularity_recall(ev: Evaluator, k: int) -> float:
    user_emb = torch.ones(ev.num_users, 1)
    item_emb = ev.item_degree.to(torch.float32).unsqueeze(1)
    top, _ = rank_topk(user_emb, item_emb, ev.train_indptr, ev.train_items, ev.eval_users, k)
    return ranking_metrics(top, ev.test_indptr, ev.test_items, ev.eval_users, k, ev.num_items)[f"recall@{k}"]


@pytest.mark.parametrize("variant", [
    {"train": {"num_negatives": 4}},
    {"train": {"num_negatives": 32, "shared_negatives": True, "loss": "softmax", "temperature": 0.2},
     "model": {"score": "cosine"}},
])
def test_planted_communities_are_learned(tmp_path, variant):
    parts = partitioned(tmp_path, num_parts=2, num_users=400, num_items=300, communities=6,
                        per_user=15, valid=True)
    cfg = load_config(small_config(tmp_path, parts, train={"epochs": 6, "eval_every": 2,
                                                           **variant["train"]},
                                   model=variant.get("model", {}), eval={"split": "valid"}))
    Trainer(cfg, tmp_path / "run").train()
    p, _ = load_for_inference(tmp_path / "run", cfg)
    ev = Evaluator(p.graph, "test")
    m = ev.evaluate(infer_all(p.model, p.graph, p.emb), 20)
    pop = popularity_recall(ev, 20)
    assert m["recall@20"] > 2 * pop and m["recall@20"] > pop + 0.2, (m["recall@20"], pop)


def test_gradients_reach_only_the_batch_rows(tmp_path):
    parts = partitioned(tmp_path, num_parts=2, num_users=100, num_items=80)
    cfg = load_config(small_config(tmp_path, parts, train={"batch_size": 16}))
    t = Trainer(cfg, tmp_path / "run")
    before = t.p.emb.pull(torch.arange(t.p.graph.num_nodes)).clone()
    dense_before = {k: v.clone() for k, v in t.p.model.state_dict().items()}
    idx = torch.arange(16)
    # sample the same minibatch the step will use, to know its input nodes
    from distgnn.prefetch import sample_step
    mb = sample_step(t, 0, 0, idx).mb
    t.run_step(idx, {})
    after = t.p.emb.pull(torch.arange(t.p.graph.num_nodes))
    changed = (after != before).any(1)
    touched = torch.zeros_like(changed)
    touched[mb.input_gids] = True
    assert changed[touched].float().mean() > 0.8      # the batch's rows moved (a zero grad may not)
    assert not changed[~touched].any()                # nothing else did
    assert torch.equal(t.p.emb.step > 0, touched)     # optimizer state: exactly the pushed rows
    assert (~touched).any()
    # dense weights (attention) got gradients too
    assert any(not torch.equal(dense_before[k], v) for k, v in t.p.model.state_dict().items())


def test_link_scores_and_softmax_loss():
    from distgnn.model import bpr_loss, link_scores, softmax_loss
    hu, hp = torch.randn(3, 4), torch.randn(3, 4)
    hn_shared = torch.randn(5, 4)
    pos, neg = link_scores(hu, hp, hn_shared)
    assert torch.allclose(neg, hu @ hn_shared.T) and torch.allclose(pos, (hu * hp).sum(1))
    pos2, neg2 = link_scores(hu, hp, hn_shared.expand(3, 5, 4))
    assert torch.allclose(neg, neg2)
    pc, nc = link_scores(hu, hp, hn_shared, cosine=True)
    assert torch.allclose(pc, F.cosine_similarity(hu, hp))
    p, n = torch.tensor([2.0]), torch.tensor([[1.0, 0.0]])
    import math
    expected = math.log1p(math.exp(-10.0) + math.exp(-20.0))   # -log(e^20 / (e^20 + e^10 + e^0))
    assert softmax_loss(p, n, 0.1).item() == pytest.approx(expected, rel=1e-3)
    assert torch.allclose(bpr_loss(p, n), -(F.logsigmoid(torch.tensor(1.0)) + F.logsigmoid(torch.tensor(2.0))) / 2)
