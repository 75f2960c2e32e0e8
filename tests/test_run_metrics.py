"""distgnn.metrics: one file per rank, one reader that merges them and survives torn lines."""
from __future__ import annotations

import json

from distgnn import metrics


def test_ranks_merge_in_order_and_torn_lines_are_counted(tmp_path):
    for step in (1, 2):
        metrics.append(tmp_path, 1, {"type": "train", "rank": 1, "step": step})
        metrics.append(tmp_path, 0, {"type": "train", "rank": 0, "step": step})
    metrics.append(tmp_path, 0, {"type": "valid", "epoch": 1})
    assert metrics.rank_path(tmp_path, 1).name == "rank-00001.jsonl"
    with open(metrics.rank_path(tmp_path, 1), "a") as f:
        f.write('{"type": "train", "rank": 1, "st')  # a record being written: not fatal
    read = metrics.read_metrics(tmp_path)
    assert [(r.get("rank"), r.get("step")) for r in read.records] == [
        (0, 1), (0, 2), (None, None), (1, 1), (1, 2)]
    assert read.torn_lines == 1 and read.of_type("valid") == [{"type": "valid", "epoch": 1}]
    with open(metrics.rank_path(tmp_path, 1), "a") as f:  # completed: read next time, after the rest
        f.write('ep": 3}\nnot json\n[1]\n')
    read = metrics.read_metrics(tmp_path)
    assert read.records[-1] == {"type": "train", "rank": 1, "step": 3} and read.torn_lines == 2


def test_driver_file_is_read_after_the_ranks(tmp_path):
    metrics.append(tmp_path, None, {"type": "processes"})
    metrics.append(tmp_path, 1, {"type": "train", "rank": 1})
    metrics.append(tmp_path, 0, {"type": "train", "rank": 0})
    assert metrics.driver_path(tmp_path).name == "driver.jsonl"
    assert [r.get("rank", "driver") for r in metrics.read_metrics(tmp_path).records] == [0, 1, "driver"]


def test_old_single_file_runs_still_read(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"type": "train", "step": 1}) + "\n")
    metrics.append(tmp_path, 0, {"type": "train", "step": 2})
    read = metrics.read_metrics(tmp_path)
    assert [r["step"] for r in read.records] == [1, 2] and read.torn_lines == 0
    assert metrics.read_metrics(tmp_path / "none").records == []


def test_run_ownership(tmp_path):
    """A run is ours by run.json, or (older runs) config.yaml beside metrics.jsonl; never by a
    lone config.yaml, and never with a foreign entry."""
    import pytest

    from distgnn import rundir
    from distgnn.errors import UserError

    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.yaml").write_text("model: {}\n")
    with pytest.raises(UserError, match="did not write"):
        rundir.check_out(legacy, True, False)
    (legacy / "metrics.jsonl").write_text("")
    (legacy / "checkpoints").mkdir()
    assert rundir.check_out(legacy, True, False) is True
    with pytest.raises(UserError, match="--resume"):
        rundir.check_out(legacy, False, False)
    assert rundir.check_out(legacy, False, True) is False  # --resume deletes nothing
    new = tmp_path / "new"
    rundir.write_marker(new, "local")
    assert rundir.holds_run(new) and rundir.check_out(new, True, False) is True
    (new / "plot.png").write_text("x")
    with pytest.raises(UserError, match="plot.png"):
        rundir.check_out(new, True, False)
