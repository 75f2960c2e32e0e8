"""Model and schedule options of issue 10: the cosine contrastive loss (SimpleX), the learning rate
reduced on a validation plateau, and uniform attention (the ablation of learned attention)."""
from __future__ import annotations

from distgnn.metrics import read_metrics

import json

import pytest
import torch

from distgnn.cli import main
from distgnn.config import ModelConfig, TrainConfig, load_config
from distgnn.model import GATRec, ccl_loss, make_loss
from distgnn.trainer import Trainer
from tests.train_cfg import small_config
from tests.train_data import partitioned


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return partitioned(tmp_path_factory.mktemp("quality"), num_parts=2, num_users=150, num_items=100)


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# --- the cosine contrastive loss ---------------------------------------------------------------

def test_ccl_loss_by_hand():
    pos = torch.tensor([1.0, 0.5])
    neg = torch.tensor([[0.95, 0.0], [0.5, 0.92]])
    # row 0: (1 - 1) + 10 * mean(0.05, 0) = 0.25; row 1: (1 - 0.5) + 10 * mean(0, 0.02) = 0.6
    assert ccl_loss(pos, neg, margin=0.9, negative_weight=10.0).item() == pytest.approx(0.425)
    bound = make_loss(TrainConfig(loss="ccl", ccl_margin=0.9, ccl_negative_weight=10.0))
    assert bound(pos, neg).item() == pytest.approx(0.425)


@pytest.mark.parametrize("sets, words", [
    (["train.loss=ccl", "model.score=cosine"], ["ccl_margin and ccl_negative_weight", "train.ccl_margin: 0.9"]),
    (["train.loss=ccl", "model.score=cosine", "train.ccl_margin=0.9"], ["needs ccl_negative_weight"]),
    (["train.loss=ccl", "train.ccl_margin=0.9", "train.ccl_negative_weight=150"], ["model.score: cosine"]),
    (["train.lr_schedule=plateau", "train.eval_every=0"], ["eval_every"]),
])
def test_loss_options_missing_is_one_line(parts, tmp_path, capsys, sets, words):
    cfg = small_config(tmp_path, parts)
    args = ["train", "--config", str(cfg), "--out", str(tmp_path / "run")]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 2
    line = _err_line(capsys)
    assert all(w in line for w in words), line
    assert not (tmp_path / "run").exists()


def test_ccl_trains(parts, tmp_path):
    """Many shared negatives, cosine scores: the loss falls and validation beats a random ranking."""
    cfg = load_config(small_config(tmp_path, parts, model={"score": "cosine"},
                                   train={"epochs": 4, "eval_every": 4, "loss": "ccl", "ccl_margin": 0.5,
                                          "ccl_negative_weight": 20.0, "num_negatives": 64,
                                          "shared_negatives": True, "log_every": 1}))
    Trainer(cfg, tmp_path / "run").train()
    recs = read_metrics(tmp_path / "run").records
    losses = [r["loss"] for r in recs if r["type"] == "train"]
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    valid = [r for r in recs if r["type"] == "valid"][-1]
    assert valid["recall@20"] > 2 * 20 / 100, valid  # random: about K / items


# --- learning rate reduced on a validation plateau ------------------------------------------------

def test_plateau_schedule_reduces_after_non_improving_validations(parts, tmp_path):
    cfg = load_config(small_config(tmp_path, parts, embedding={"lr": 0.2},
                                   train={"epochs": 10, "eval_every": 1, "patience": 0,
                                          "lr_schedule": "plateau", "lr_plateau_factor": 0.1,
                                          "lr_plateau_patience": 1}))
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.train()
    valid = read_metrics(tmp_path / "run").records
    valid = [r for r in valid if r["type"] == "valid"]
    best, scale, reductions = -1.0, 1.0, 0
    for r in valid:
        if r["recall@20"] > best:
            best = r["recall@20"]
        else:
            scale *= 0.1
            reductions += 1
        assert r["lr_scale"] == pytest.approx(scale), (r, valid)
    assert reductions >= 1, [r["recall@20"] for r in valid]
    # applied: the learning rates of the last epoch carry every reduction but the last validation's
    applied = valid[-2]["lr_scale"]
    assert trainer.p.emb.lr == pytest.approx(0.2 * applied)
    assert trainer.dense_opt.param_groups[0]["lr"] == pytest.approx(cfg.train.dense_lr * applied)


def test_fixed_schedule_never_reduces(parts, tmp_path):
    cfg = load_config(small_config(tmp_path, parts, train={"epochs": 3, "eval_every": 1, "patience": 0}))
    Trainer(cfg, tmp_path / "run").train()
    recs = read_metrics(tmp_path / "run").records
    assert {r["lr_scale"] for r in recs if r["type"] == "valid"} == {1.0}


# --- uniform attention ---------------------------------------------------------------------------

def test_uniform_attention_weights_every_neighbour_equally():
    import dgl

    model = GATRec(ModelConfig(dim=4, hidden=4, heads=2, layers=1, transform="learned",
                               attention="uniform", attn_init="xavier", layer_combine="last"))
    conv = model.convs[0]
    assert not conv.attn_l.requires_grad and not conv.attn_r.requires_grad
    assert conv.fc.weight.requires_grad
    # dst 0 has 3 in-neighbours, dst 1 has 1: each gets 1/deg on every head, whatever the features
    g = dgl.graph((torch.tensor([1, 2, 3, 4]), torch.tensor([0, 0, 0, 1])), num_nodes=5)
    _, att = conv(g, torch.randn(5, 4), get_attention=True)
    assert torch.allclose(att.squeeze(-1), torch.tensor([[1 / 3] * 2] * 3 + [[1.0] * 2]))
    learned = GATRec(ModelConfig(dim=4, hidden=4, heads=2, layers=1, transform="learned",
                                 attn_init="xavier", layer_combine="last")).convs[0]
    _, att = learned(g, torch.randn(5, 4), get_attention=True)
    assert not torch.allclose(att[:3], torch.full_like(att[:3], 1 / 3))


def test_uniform_attention_stays_uniform_in_training(parts, tmp_path):
    cfg = load_config(small_config(tmp_path, parts, model={"attention": "uniform", "transform": "learned"},
                                   train={"epochs": 1}))
    trainer = Trainer(cfg, tmp_path / "run")
    fc0 = trainer.p.model.convs[0].fc.weight.detach().clone()
    trainer.train()
    conv = trainer.p.model.convs[0]
    assert torch.count_nonzero(conv.attn_l) == 0 and torch.count_nonzero(conv.attn_r) == 0
    assert not torch.equal(conv.fc.weight, fc0)  # the rest of the GAT did learn
