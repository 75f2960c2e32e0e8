"""Output safety and loud fallbacks (issue 11): --overwrite replaces only distgnn's own output,
after validation; stale temporaries are swept; Ray-only settings and a corrupt best.json warn;
'distgnn plot' draws validation curves."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from distgnn import atomic
from distgnn import checkpoint as ckpt
from distgnn.cli import main
from distgnn.metrics import read_metrics
from tests.train_cfg import small_config
from tests.train_data import partitioned

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("safety")
    parts = partitioned(tmp, num_parts=2, num_users=150, num_items=100)
    (tmp / "nv").mkdir()
    no_valid = partitioned(tmp / "nv", num_parts=2, valid=False, num_users=150, num_items=100)
    cfg = small_config(tmp, parts, train={"epochs": 2, "eval_every": 1, "patience": 0})
    run = tmp / "run"
    assert main(["train", "--config", str(cfg), "--out", str(run)]) == 0
    return {"tmp": tmp, "parts": parts, "no_valid": no_valid, "cfg": cfg, "run": run}


def _err_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line]
    assert len(err) == 1, err
    return err[0]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _foreign_dir(path):
    path.mkdir()
    (path / "thesis.tex").write_text("years of work")
    return path / "thesis.tex"


# --- train ----------------------------------------------------------------------------------------
def test_run_marker_and_per_rank_metrics(trained):
    run = trained["run"]
    marker = json.loads((run / "run.json").read_text())
    assert marker["format"] == "distgnn-run" and marker["tool"] == "distgnn train"
    assert (run / "metrics" / "rank-00000.jsonl").is_file() and not (run / "metrics.jsonl").exists()
    read = read_metrics(run)
    assert read.torn_lines == 0 and len(read.of_type("valid")) == 2


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_train_overwrite_refuses_a_foreign_directory(trained, tmp_path, capsys, backend):
    precious = _foreign_dir(tmp_path / "data")
    assert main(["train", "--config", str(trained["cfg"]), "--backend", backend,
                 "--out", str(tmp_path / "data"), "--overwrite"]) == 2
    line = _err_line(capsys)
    assert str(tmp_path / "data") in line and "did not write" in line
    assert precious.read_text() == "years of work"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["thesis.tex"]


def test_train_refuses_a_run_holding_a_foreign_file(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    (run / "notes.md").write_text("mine")
    assert main(["train", "--config", str(trained["cfg"]), "--out", str(run), "--overwrite"]) == 2
    assert "notes.md" in _err_line(capsys)
    assert (run / "notes.md").exists() and ckpt.latest(run) is not None


@pytest.mark.parametrize("backend", ["local", "ray"])
@pytest.mark.parametrize("bad, needle", [(["--partitions", "no-such-parts"], "no-such-parts"),
                                         (["--partitions", "NO_VALID"], "no 'valid' held-out split")])
def test_validation_runs_before_deletion(trained, tmp_path, capsys, backend, bad, needle):
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    before = sorted(p.name for p in run.rglob("*"))
    bad = [str(trained["no_valid"]) if a == "NO_VALID" else a for a in bad]
    assert main(["train", "--config", str(trained["cfg"]), "--backend", backend, "--out", str(run),
                 "--overwrite", *bad]) == 2
    assert needle in _err_line(capsys)
    assert sorted(p.name for p in run.rglob("*")) == before


def test_train_overwrite_replaces_our_run_and_sweeps_stale_temporaries(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    dead = _dead_pid()
    stale = [tmp_path / f".run.tmp-{dead}-{atomic._HOST}",
             run / "checkpoints" / f".step-000000009.tmp-{dead}-{atomic._HOST}"]
    for s in stale:
        s.mkdir()
    keep = tmp_path / f"mine.tmp-{dead}"
    keep.write_text("not ours")
    assert main(["train", "--config", str(trained["cfg"]), "--out", str(run), "--max-steps", "2",
                 "--overwrite"]) == 0
    assert read_metrics(run).records[-1]["step"] == 2
    assert ckpt.read_meta(ckpt.latest(run))["global_step"] == 2
    assert not any(s.exists() for s in stale) and keep.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.tmp-" + str(dead), "run"]


def test_train_without_overwrite_refuses_an_existing_run(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    assert main(["train", "--config", str(trained["cfg"]), "--out", str(run)]) == 2
    assert "--resume" in _err_line(capsys)


# --- gen --------------------------------------------------------------------------------------
def test_gen_overwrite_refuses_foreign_and_replaces_own(tmp_path, capsys):
    precious = _foreign_dir(tmp_path / "g")
    args = ["gen", "--interactions", "2000", "--out", str(tmp_path / "g"), "--overwrite"]
    assert main(args) == 2
    assert "did not write" in _err_line(capsys) and precious.read_text() == "years of work"
    out = tmp_path / "own"
    assert main(["gen", "--interactions", "2000", "--seed", "1", "--out", str(out)]) == 0
    first = json.loads((out / "gen.json").read_text())["counts"]
    assert main(["gen", "--interactions", "3000", "--seed", "1", "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "gen.json").read_text())["counts"]["interactions"] != first["interactions"]


# --- recommend ------------------------------------------------------------------------------------
def test_recommend_refuses_foreign_and_existing_files(trained, tmp_path, capsys):
    run = str(trained["run"])
    foreign = tmp_path / "recs.parquet"
    foreign.write_text("someone's file")
    for extra in ([], ["--overwrite"]):
        assert main(["recommend", "--run", run, "--k", "3", "--out", str(foreign), *extra]) == 2
        assert str(foreign) in _err_line(capsys)
    assert foreign.read_text() == "someone's file"
    assert not (tmp_path / "recs.user_embeddings.parquet").exists()
    # a foreign file where an embedding file goes is protected too
    out = tmp_path / "r2.parquet"
    (tmp_path / "r2.item_embeddings.parquet").write_text("mine")
    assert main(["recommend", "--run", run, "--k", "3", "--out", str(out), "--overwrite"]) == 2
    assert "r2.item_embeddings.parquet" in _err_line(capsys) and not out.exists()


def test_recommend_replaces_its_own_output_only_with_overwrite(trained, tmp_path, capsys):
    run, out = str(trained["run"]), tmp_path / "recs.parquet"
    assert main(["recommend", "--run", run, "--k", "3", "--out", str(out)]) == 0
    assert pq.read_table(out).num_rows == 150 * 3
    assert b"distgnn.output" in pq.read_schema(tmp_path / "recs.user_embeddings.parquet").metadata
    capsys.readouterr()
    assert main(["recommend", "--run", run, "--k", "4", "--out", str(out)]) == 2
    assert "--overwrite" in _err_line(capsys) and pq.read_table(out).num_rows == 150 * 3
    assert main(["recommend", "--run", run, "--k", "4", "--out", str(out), "--overwrite"]) == 0
    assert pq.read_table(out).num_rows == 150 * 4
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "recs.item_embeddings.parquet", "recs.parquet", "recs.user_embeddings.parquet"]


# --- loud, not silent -------------------------------------------------------------------------------
def test_local_backend_warns_about_ray_only_settings(trained, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", str(trained["cfg"]), "--out", str(run), "--max-steps", "1",
                 "--set", "embedding.async_pushes=4", "--set", "train.local_negatives=0.5",
                 "--max-failures", "3"]) == 0
    err = capsys.readouterr().err
    assert "embedding.async_pushes=4 only applies to --backend ray" in err
    assert "train.local_negatives=0.5" in err and "--max-failures 3" in err
    warnings = read_metrics(run).of_type("warning")
    assert len(warnings) == 3 and all("--backend ray" in w["message"] for w in warnings)


def test_corrupt_best_json_warns_and_uses_latest(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    (run / "checkpoints" / "best.json").write_text("{not json")
    capsys.readouterr()
    assert ckpt.for_inference(run) == ckpt.latest(run)
    err = capsys.readouterr().err
    assert "warning" in err and "best.json" in err and "latest checkpoint" in err


# --- plot ---------------------------------------------------------------------------------------
def test_plot_writes_a_png(trained, tmp_path, capsys):
    out = tmp_path / "curves.png"
    other = tmp_path / "other-run"
    shutil.copytree(trained["run"], other)
    for x in ("minutes", "epoch"):
        assert main(["plot", "--runs", str(trained["run"]), str(other), "--metric", "ndcg@20",
                     "--x", x, "--out", str(out), "--overwrite"]) == 0
        assert out.read_bytes()[:8] == PNG_MAGIC
    from PIL import Image
    with Image.open(out) as img:
        img.verify()
    assert main(["plot", "--runs", str(trained["run"]), "--out", str(out)]) == 2  # exists: refuse
    assert "--overwrite" in _err_line(capsys)


def test_plot_bad_input_is_one_line(trained, tmp_path, capsys):
    out = tmp_path / "c.png"
    assert main(["plot", "--runs", str(trained["run"]), "--metric", "recall@7", "--out", str(out)]) == 2
    line = _err_line(capsys)
    assert "recall@7" in line and "recall@20" in line
    no_valid = tmp_path / "r"
    no_valid.mkdir()
    assert main(["plot", "--runs", str(no_valid), "--out", str(out)]) == 2
    assert "no validation records" in _err_line(capsys)
    foreign = tmp_path / "photo.png"
    foreign.write_bytes(PNG_MAGIC + b"not ours")
    assert main(["plot", "--runs", str(trained["run"]), "--out", str(foreign), "--overwrite"]) == 2
    assert "not written by" in _err_line(capsys) and foreign.read_bytes() == PNG_MAGIC + b"not ours"
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["photo.png", "r"]


def test_plot_curve_continues_across_a_resume(tmp_path):
    """A resumed invocation restarts wall_seconds at 0: minutes keep counting; a redone epoch
    keeps its later record."""
    from distgnn.commands.plot import curve
    from distgnn.metrics import append

    for epoch, wall, value in [(1, 60, 0.1), (2, 120, 0.2), (2, 50, 0.25), (3, 110, 0.3)]:
        append(tmp_path, 0, {"type": "valid", "split": "valid", "epoch": epoch, "wall_seconds": wall,
                             "recall@20": value})
    xs, ys, split = curve(tmp_path, "recall@20", "minutes")
    assert xs == [1.0, 170 / 60, 230 / 60] and ys == [0.1, 0.25, 0.3] and split == "valid"
    assert curve(tmp_path, "recall@20", "epoch")[0] == [1.0, 2.0, 3.0]


def test_driver_progress_survives_a_torn_line(tmp_path, capsys):
    """The Ray driver's progress printer reads through read_metrics: a torn line from one rank is
    skipped, the job is not ended by it, and the chief's records are still shown."""
    import time

    from distgnn.metrics import append, rank_path
    from launch.job import _fit_with_watchdog

    class Fit:  # stands in for Ray Train's TorchTrainer: the workers' side of the metrics files
        def fit(self):
            time.sleep(1.5)
            rank_path(tmp_path, 1).parent.mkdir(parents=True, exist_ok=True)
            rank_path(tmp_path, 1).write_text('{"type": "train", "ra\ngarbage\n')
            append(tmp_path, 0, {"type": "valid", "split": "valid", "epoch": 1, "recall@20": 0.125})
            append(tmp_path, 0, {"type": "checkpoint", "epoch": 1, "step": 4, "loss": 0.5})
            time.sleep(2.5)
            return "done"

    assert _fit_with_watchdog(Fit(), tmp_path, epochs=1, stall_timeout_s=60) == "done"
    assert "epoch 1: valid recall@20 0.1250" in capsys.readouterr().err
