"""Prefetch (sampling on a background thread) must not change what is sampled or trained."""
import itertools

import pytest
import torch

from distgnn.config import load_config
from distgnn.prefetch import prefetched, sample_step, sampling_thread
from distgnn.trainer import Trainer
from tests.test_checkpoint import _assert_same, _final_state
from tests.train_cfg import small_config
from tests.train_data import partitioned


@pytest.fixture(scope="module")
def parts_dir(tmp_path_factory):
    return partitioned(tmp_path_factory.mktemp("prefetch"), num_parts=2, num_users=150, num_items=100)


def _same_batch(a, b) -> None:
    assert a.seed == b.seed
    for name in ("user_gid", "pos_item_gid", "neg_item_gid", "seed_gids", "input_gids"):
        assert torch.equal(getattr(a.mb, name), getattr(b.mb, name)), name
    for ba, bb in zip(a.mb.blocks, b.mb.blocks):
        ea, eb = ba.edges(), bb.edges()
        assert torch.equal(ea[0], eb[0]) and torch.equal(ea[1], eb[1])
    for wa, wb in zip(a.edge_weights, b.edge_weights):
        assert torch.equal(wa, wb)


def test_prefetched_batches_equal_inline_sampling(tmp_path, parts_dir):
    cfg = load_config(small_config(tmp_path, parts_dir, train={"batch_size": 32}))
    t = Trainer(cfg, tmp_path / "run")
    ahead = list(itertools.islice(prefetched(t, 0, t.sampler.batches(0), 3), 6))
    inline = list(itertools.islice(prefetched(t, 0, t.sampler.batches(0), 0), 6))
    assert [s for s, _, _ in ahead] == [s for s, _, _ in inline] == list(range(6))
    for (step, idx, a), (_, _, b) in zip(ahead, inline):
        _same_batch(a, b)
        _same_batch(a, sample_step(t, 0, step, idx))  # what run_step samples without prefetch
    # and the check can fail: the next step's minibatch is another one
    _, idx1, _ = ahead[1]
    assert not torch.equal(sample_step(t, 0, 1, idx1).mb.input_gids, sample_step(t, 0, 2, idx1).mb.input_gids)


def _losses(run_dir):
    from distgnn.metrics import read_metrics

    return [r["loss"] for r in read_metrics(run_dir).records if r["type"] == "train"]


def test_training_and_resume_identical_with_prefetch(tmp_path, parts_dir):
    cfg_path = small_config(tmp_path, parts_dir, model={"dropout": 0.1},
                            train={"log_every": 1, "max_steps": 8, "lr_decay": 0.5})
    Trainer(load_config(cfg_path, ["train.prefetch=0"]), tmp_path / "inline").train()
    Trainer(load_config(cfg_path, ["train.prefetch=3"]), tmp_path / "ahead").train()
    assert _losses(tmp_path / "inline") == _losses(tmp_path / "ahead")
    assert len(_losses(tmp_path / "inline")) == 8
    _assert_same(_final_state(tmp_path / "inline"), _final_state(tmp_path / "ahead"))
    # stopped after 3 steps (the prefetch thread had sampled further), then resumed
    Trainer(load_config(cfg_path, ["train.prefetch=2", "train.max_steps=3"]), tmp_path / "resumed").train()
    Trainer(load_config(cfg_path, ["train.prefetch=2"]), tmp_path / "resumed").train(resume=True)
    assert _losses(tmp_path / "resumed") == _losses(tmp_path / "inline")
    _assert_same(_final_state(tmp_path / "inline"), _final_state(tmp_path / "resumed"))


def test_errors_reach_the_loop_at_their_step(tmp_path, parts_dir):
    cfg = load_config(small_config(tmp_path, parts_dir, train={"batch_size": 32}))
    t = Trainer(cfg, tmp_path / "run")
    bad = torch.tensor([10 ** 9])  # no such interaction: sampling it fails on the sampling thread

    def batches():
        yield from itertools.islice(t.sampler.batches(0), 2)
        yield 2, bad

    it = prefetched(t, 0, batches(), 3)
    assert next(it)[0] == 0 and next(it)[0] == 1
    with pytest.raises(IndexError):
        next(it)


def test_close_bounds_the_work_ahead(tmp_path, parts_dir):
    cfg = load_config(small_config(tmp_path, parts_dir, train={"batch_size": 16}))
    t = Trainer(cfg, tmp_path / "run")
    taken = []

    def endless():
        for s in itertools.count():
            taken.append(s)
            yield s, torch.arange(16)

    it = prefetched(t, 0, endless(), 2)
    next(it)
    assert len(taken) == 1 + 2      # the step's minibatch and `depth` more, no further
    it.close()
    assert sampling_thread().submit(lambda: "idle").result(timeout=30) == "idle"
    assert len(taken) == 3
