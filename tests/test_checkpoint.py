import pytest
import torch

from distgnn import checkpoint as ckpt
from distgnn.config import load_config
from distgnn.trainer import Trainer
from tests.train_cfg import small_config
from tests.train_data import partitioned


@pytest.fixture(scope="module")
def parts_dir(tmp_path_factory):
    return partitioned(tmp_path_factory.mktemp("ckpt"), num_parts=2, num_users=150, num_items=100)


def _final_state(run_dir):
    path = ckpt.latest(run_dir)
    dense = torch.load(path / "dense.pt", weights_only=True)   # no pickle of arbitrary objects
    import pyarrow.parquet as pq
    emb = {f.name: pq.read_table(f).to_pydict() for f in sorted((path / "embeddings").glob("*.parquet"))}
    assert sorted(emb) == ["item-00000.parquet", "item-00001.parquet", "user-00000.parquet", "user-00001.parquet"]
    return dense, emb, ckpt.read_meta(path)


def _assert_same(a, b):
    da, ea, ma = a
    db, eb, mb = b
    assert ma["global_step"] == mb["global_step"]
    for k in da["model"]:
        assert torch.equal(da["model"][k], db["model"][k]), k
    assert ea == eb
    sa, sb = da["optimizer"]["state"], db["optimizer"]["state"]
    for k in sa:
        for name in sa[k]:
            assert torch.equal(sa[k][name], sb[k][name])


@pytest.mark.parametrize("first_leg", [{"train.epochs": 1}, {"train.max_steps": 3}])
def test_resume_equals_uninterrupted(tmp_path, parts_dir, first_leg):
    cfg_path = small_config(tmp_path, parts_dir, model={"dropout": 0.1}, train={"lr_decay": 0.5})
    full = load_config(cfg_path)
    Trainer(full, tmp_path / "a").train()
    overrides = [f"{k}={v}" for k, v in first_leg.items()]
    Trainer(load_config(cfg_path, overrides), tmp_path / "b").train()
    mid = _final_state(tmp_path / "b")
    assert mid[2]["global_step"] < _final_state(tmp_path / "a")[2]["global_step"]
    Trainer(load_config(cfg_path), tmp_path / "b").train(resume=True)
    _assert_same(_final_state(tmp_path / "a"), _final_state(tmp_path / "b"))


def test_different_seed_differs(tmp_path, parts_dir):
    """The equality check above can fail: another seed gives other weights."""
    cfg_path = small_config(tmp_path, parts_dir, train={"epochs": 1})
    Trainer(load_config(cfg_path), tmp_path / "a").train()
    Trainer(load_config(cfg_path, ["train.seed=5"]), tmp_path / "b").train()
    da, _, _ = _final_state(tmp_path / "a")
    db, _, _ = _final_state(tmp_path / "b")
    assert not all(torch.equal(da["model"][k], db["model"][k]) for k in da["model"])


def test_uncommitted_checkpoint_is_ignored(tmp_path, parts_dir):
    cfg_path = small_config(tmp_path, parts_dir, train={"epochs": 1})
    Trainer(load_config(cfg_path), tmp_path / "r").train()
    good = ckpt.latest(tmp_path / "r")
    fake = good.parent / "step-999999999"
    fake.mkdir()
    (fake / "meta.json").write_text("{}")
    assert ckpt.latest(tmp_path / "r") == good
    assert (good / ckpt.MARKER).is_file()


def test_mid_epoch_checkpoints_resume_exactly(tmp_path, parts_dir):
    """``train.checkpoint_every_steps`` writes checkpoints inside an epoch; resuming from one (as
    after a crash there) continues with the next minibatch and ends where the uninterrupted run
    ends."""
    import shutil

    cfg_path = small_config(tmp_path, parts_dir, model={"dropout": 0.1},
                            train={"checkpoint_every_steps": 2, "keep_checkpoints": 50})
    Trainer(load_config(cfg_path), tmp_path / "a").train()
    metas = [ckpt.read_meta(p) for p in ckpt.committed(tmp_path / "a")]
    mid = [m for m in metas if m["step_in_epoch"] > 0]
    assert mid and all(m["global_step"] % 2 == 0 for m in mid)
    first = ckpt.committed(tmp_path / "a")[0]
    assert ckpt.read_meta(first)["step_in_epoch"] == 2
    shutil.copytree(tmp_path / "a", tmp_path / "c")
    for p in ckpt.committed(tmp_path / "c")[1:]:  # as if the run had crashed after its first one
        shutil.rmtree(p)
    assert ckpt.latest(tmp_path / "c").name == first.name
    Trainer(load_config(cfg_path), tmp_path / "c").train(resume=True)
    _assert_same(_final_state(tmp_path / "a"), _final_state(tmp_path / "c"))
