"""The train/evaluate/recommend commands end to end, and one clear line + exit 2 on bad input."""
import json

import pyarrow.parquet as pq
import pytest

from distgnn.cli import main
from distgnn.metrics import read_metrics
from tests.train_cfg import small_config
from tests.train_data import partitioned


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    parts = partitioned(tmp, num_parts=2, num_users=150, num_items=100, string_ids=True)
    cfg = small_config(tmp, parts)
    run = tmp / "run"
    assert main(["train", "--config", str(cfg), "--out", str(run), "--epochs", "1"]) == 0
    return {"tmp": tmp, "parts": parts, "cfg": cfg, "run": run}


def _err_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_train_writes_run_dir(trained):
    run = trained["run"]
    assert (run / "config.yaml").is_file()
    recs = read_metrics(run).records
    assert recs and all("loss" in r and "edges_per_s" in r for r in recs if r["type"] == "train")
    assert set(recs[0]["stage_seconds"]) == {"sample", "pull", "forward", "backward", "push", "dense_step"}


def test_evaluate_json(trained, capsys):
    assert main(["evaluate", "--run", str(trained["run"]), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0 <= out["recall@20"] <= 1 and 0 <= out["ndcg@20"] <= 1
    assert out["num_users"] > 0


def test_recommend_uses_orig_ids(trained, tmp_path, capsys):
    out = tmp_path / "recs.parquet"
    assert main(["recommend", "--run", str(trained["run"]), "--k", "5", "--out", str(out)]) == 0
    t = pq.read_table(out)
    assert t.column_names == ["user_id", "rank", "item_id", "score"]
    users = set(t.column("user_id").to_pylist())
    assert all(u.startswith("u") for u in users) and len(users) == 150
    assert t.num_rows == 150 * 5
    assert all(i.startswith("i") for i in t.column("item_id").to_pylist())
    # no training or validation item is recommended
    train = pq.read_table(trained["tmp"] / "raw" / "train.parquet").to_pylist()
    valid = pq.read_table(trained["tmp"] / "raw" / "valid.parquet").to_pylist()
    assert valid
    seen = {(r["user_id"], r["item_id"]) for r in train + valid}
    assert not any((r["user_id"], r["item_id"]) in seen for r in t.to_pylist())
    emb = pq.read_table(tmp_path / "recs.user_embeddings.parquet")
    assert emb.column_names == ["user_id", "embedding"] and emb.num_rows == 150


def test_bad_config_key(trained, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(trained["cfg"].read_text() + "extra_section: {a: 1}\n")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "r")]) == 2
    line = _err_line(capsys)
    assert "bad.yaml" in line and "extra_section" in line
    assert not (tmp_path / "r").exists()


def test_bad_config_value_via_set(trained, tmp_path, capsys):
    assert main(["train", "--config", str(trained["cfg"]), "--set", "embedding.lr=-1",
                 "--out", str(tmp_path / "r")]) == 2
    assert "embedding.lr: Input should be greater than 0" in _err_line(capsys)
    assert not (tmp_path / "r").exists()


def test_ordered_and_async_pushes_contradict(trained, tmp_path, capsys):
    assert main(["train", "--config", str(trained["cfg"]), "--set", "embedding.ordered_pushes=true",
                 "--set", "embedding.async_pushes=2", "--out", str(tmp_path / "r")]) == 2
    line = _err_line(capsys)
    assert "ordered_pushes waits for every push" in line and "set one of them" in line, line
    assert not (tmp_path / "r").exists()


def test_missing_partition_dir(trained, tmp_path, capsys):
    assert main(["train", "--config", str(trained["cfg"]), "--partitions", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "r")]) == 2
    assert "does not exist" in _err_line(capsys)
    assert not (tmp_path / "r").exists()


def test_incomplete_partition_dir(trained, tmp_path, capsys):
    half = tmp_path / "half"
    half.mkdir()
    (half / "part-00000").mkdir()
    assert main(["train", "--config", str(trained["cfg"]), "--partitions", str(half),
                 "--out", str(tmp_path / "r")]) == 2
    assert "manifest.json" in _err_line(capsys)
    assert not (tmp_path / "r").exists()


def test_incompatible_checkpoint(trained, capsys):
    assert main(["train", "--config", str(trained["cfg"]), "--out", str(trained["run"]), "--resume",
                 "--set", "model.heads=4", "--epochs", "2"]) == 2
    line = _err_line(capsys)
    assert "model.heads" in line and "checkpoint" in line


def test_existing_run_needs_resume(trained, capsys):
    assert main(["train", "--config", str(trained["cfg"]), "--out", str(trained["run"])]) == 2
    assert "--resume" in _err_line(capsys)


@pytest.mark.parametrize("cmd", [["evaluate", "--k", "0"], ["recommend", "--k", "-3", "--out", "x.parquet"]])
def test_k_must_be_positive(trained, capsys, cmd):
    assert main([cmd[0], "--run", str(trained["run"])] + cmd[1:]) == 2
    assert "--k must be a positive integer" in _err_line(capsys)


def test_evaluate_not_a_run(tmp_path, capsys):
    assert main(["evaluate", "--run", str(tmp_path)]) == 2
    assert "not a run directory" in _err_line(capsys)


def test_damaged_partition_dir(trained, tmp_path, capsys):
    import shutil
    copy = tmp_path / "parts"
    shutil.copytree(trained["parts"], copy)
    edges = copy / "part-00001" / "edges.parquet"
    edges.write_bytes(edges.read_bytes()[:-10])
    assert main(["train", "--config", str(trained["cfg"]), "--partitions", str(copy),
                 "--out", str(tmp_path / "r")]) == 2
    assert "edges.parquet" in _err_line(capsys)
    assert not (tmp_path / "r").exists()


def test_overwrite_starts_afresh(trained, tmp_path):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    assert main(["train", "--config", str(trained["cfg"]), "--out", str(run), "--max-steps", "2",
                 "--overwrite"]) == 0
    assert read_metrics(run).records[-1]["step"] == 2
