"""The evaluation protocol: selection on validation, training without the test split, masking of
known interactions (the LightGCN protocol on a train/valid/test split), and what evaluate reports."""
from __future__ import annotations

from distgnn.metrics import read_metrics

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from distgnn.cli import main
from distgnn.evaluation import Evaluator, IdSpace
from distgnn.graph_store import LocalGraphStore
from distgnn.trainer import load_id_maps
from tests.train_cfg import small_config
from tests.train_data import move_test_split_away, partitioned


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture(scope="module")
def no_test_run(tmp_path_factory):
    """Trained to the end with eval.split valid while targets/test.parquet was moved away."""
    tmp = tmp_path_factory.mktemp("protocol")
    parts = partitioned(tmp, num_parts=2, num_users=150, num_items=100)
    away = move_test_split_away(parts, tmp)
    cfg = small_config(tmp, parts, train={"epochs": 3, "eval_every": 1, "patience": 0})
    run = tmp / "run"
    assert main(["train", "--config", str(cfg), "--out", str(run)]) == 0
    return {"tmp": tmp, "parts": parts, "run": run, "away": away, "cfg": cfg}


def test_training_runs_to_the_end_without_the_test_split(no_test_run):
    recs = read_metrics(no_test_run["run"]).records
    valid = [r for r in recs if r["type"] == "valid"]
    assert [r["epoch"] for r in valid] == [1, 2, 3] and {r["split"] for r in valid} == {"valid"}
    assert json.loads((no_test_run["run"] / "checkpoints" / "best.json").read_text())["split"] == "valid"


def test_evaluate_on_test_says_the_file_is_missing(no_test_run, capsys):
    capsys.readouterr()
    assert main(["evaluate", "--run", str(no_test_run["run"])]) == 2
    line = _err_line(capsys)
    assert "targets/test.parquet is missing" in line and "'test' split" in line


def test_evaluate_reports_the_selected_checkpoint(no_test_run, capsys, tmp_path):
    parts = tmp_path / "parts"
    shutil.copytree(no_test_run["parts"], parts)
    shutil.copy(no_test_run["away"], parts / "targets" / "test.parquet")
    capsys.readouterr()
    assert main(["evaluate", "--run", str(no_test_run["run"]), "--partitions", str(parts), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    best = json.loads((no_test_run["run"] / "checkpoints" / "best.json").read_text())
    assert out["protocol"] == "full-ranking, selected on valid"
    assert Path(out["checkpoint"]).name == best["checkpoint"]
    assert out["selected_on"] == {"split": "valid", "metric": "recall@20", "value": best["value"]}
    valid = read_metrics(no_test_run["run"]).records
    best_epoch = max((r for r in valid if r["type"] == "valid"), key=lambda r: r["recall@20"])["epoch"]
    assert out["checkpoint_epoch"] == best_epoch
    assert out["split"] == "test" and out["masked"] == ["train", "valid"]
    # the text form names the checkpoint, its epoch and the validation metric
    assert main(["evaluate", "--run", str(no_test_run["run"]), "--partitions", str(parts)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert best["checkpoint"] in first and f"epoch {best_epoch}" in first and "selected on valid recall@20" in first


def test_selecting_on_valid_without_a_valid_split_is_one_line(tmp_path, capsys):
    parts = partitioned(tmp_path, num_parts=2, num_users=60, num_items=40, valid=False)
    cfg = small_config(tmp_path, parts, train={"epochs": 1, "eval_every": 1})
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    line = _err_line(capsys)
    assert "no 'valid' held-out split" in line and "--valid" in line


# --- masking ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two users, six items; user 10: train {100}, valid {101}, test {102}; user 11: train {103},
    valid {104}, test {105}. Items 106..107 only make up the catalogue (trained by user 12)."""
    tmp = tmp_path_factory.mktemp("mask")

    def write(name, rows):
        u, i = zip(*rows)
        pq.write_table(pa.table({"user_id": pa.array(u, pa.int64()), "item_id": pa.array(i, pa.int64())}),
                       tmp / f"{name}.parquet")
        return str(tmp / f"{name}.parquet")

    from partition.pipeline import CreateOptions, create

    train = write("train", [(10, 100), (11, 103), (12, 106), (12, 107), (12, 101), (12, 102),
                            (12, 104), (12, 105)])
    valid = write("valid", [(10, 101), (11, 104)])
    test = write("test", [(10, 102), (11, 105)])
    create(CreateOptions(train=train, valid=valid, test=test, out=str(tmp / "parts"), num_parts=1,
                         method="random", progress=False))
    graph = LocalGraphStore(tmp / "parts")
    maps = load_id_maps(tmp / "parts")

    def gid(ntype, orig):
        gids, origs = maps[ntype]
        return int(gids[origs.to_pylist().index(orig)])

    return graph, gid


def _scores_preferring(graph, gid, orders: dict[int, list[int]]) -> torch.Tensor:
    """Embeddings under which user u scores the items ``orders[u]`` (orig ids) best first, every
    other item 0: one dimension per user, so each user has a ranking of its own."""
    emb = torch.zeros(graph.num_nodes, len(orders))
    for d, (user, order) in enumerate(orders.items()):
        emb[gid("user", user), d] = 1.0
        for rank, item in enumerate(order):
            emb[gid("item", item), d] = float(len(order) - rank)
    return emb


def test_test_ranking_masks_train_and_valid(tiny):
    graph, gid = tiny
    ev = Evaluator(graph, "test")
    assert ev.masked_splits == ("valid",)
    # each user's training and validation items would rank first; masked, the test item is top-1
    emb = _scores_preferring(graph, gid, {10: [100, 101, 102], 11: [104, 103, 105]})
    m = ev.evaluate(emb, k=1)
    assert m["num_users"] == 2 and m["recall@1"] == 1.0
    # the mask is exactly train + valid: a test item is never masked
    ids = IdSpace.from_book(graph.book)
    u10 = int(ids.user_index(torch.tensor([gid("user", 10)])))
    masked = set(ev.train_items[ev.train_indptr[u10]:ev.train_indptr[u10 + 1]].tolist())
    assert masked == {int(ids.item_index(torch.tensor([gid("item", i)]))) for i in (100, 101)}


def test_valid_ranking_masks_train_only(tiny):
    graph, gid = tiny
    ev = Evaluator(graph, "valid")
    assert ev.masked_splits == ()
    # the training item would rank first; masked, the validation item is top-1
    emb = _scores_preferring(graph, gid, {10: [100, 101, 102], 11: [103, 104, 105]})
    assert ev.evaluate(emb, k=1)["recall@1"] == 1.0
    # a test item is not masked when validating (it is not known yet): ranked above the
    # validation item, it takes the first slot
    emb = _scores_preferring(graph, gid, {10: [100, 102, 101], 11: [103, 105, 104]})
    m = ev.evaluate(emb, k=2)
    assert m["recall@2"] == 1.0 and m["mrr@2"] == 0.5 and ev.evaluate(emb, k=1)["recall@1"] == 0.0
