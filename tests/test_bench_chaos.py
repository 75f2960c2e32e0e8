"""``distgnn bench chaos`` (docs/architecture.md D32): the fault schedule, the checkpoint writer's
ENOSPC hook, the independent row comparison, and one short end-to-end run on a multi-node Ray
cluster (a PS shard killed mid-run and a full disk under a checkpoint, each against the fault-free
reference: survived, detected, no update lost, same Recall@20).

The end-to-end case has a deadline on the test and on every job (the bench's own ``--timeout``). It
runs three Ray Train jobs (reference, kill_ps, enospc): 140 s on 2 idle cores, about 10 minutes
when they were shared with another training job (load average 9-10: each job then spends about 2
minutes starting); the other cases take 2 seconds (``-k 'not two_faults'``)."""
from __future__ import annotations

import errno
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distgnn import checkpoint as ckpt
from distgnn.bench import chaos


def test_ten_faults_cover_every_type_and_the_schedule_is_seeded():
    ckpts = chaos.checkpoint_steps(2, 20, 6)
    assert ckpts == [6, 12, 18, 20, 24, 30, 36, 40]
    for seed in range(20):
        plan = chaos.schedule(10, seed, 40, ckpts, workers=2, parts=2)
        assert len(plan) == 10
        assert set(f.type for f in plan) == set(chaos.FAULT_TYPES), seed
        for f in plan:
            if f.type == "enospc":
                assert f.step in ckpts
            else:
                assert 2 <= f.step <= 37
            assert 0 <= f.target < 2
            assert (f.pause_what in ("ps", "trainer")) == (f.type == "pause")
    a = chaos.schedule(10, 7, 40, ckpts, 2, 2)
    assert a == chaos.schedule(10, 7, 40, ckpts, 2, 2)  # seeded
    assert a != chaos.schedule(10, 8, 40, ckpts, 2, 2)
    few = chaos.schedule(2, 0, 40, ckpts, 2, 2, types=("kill_ps", "enospc"))
    assert sorted(f.type for f in few) == ["enospc", "kill_ps"]
    with pytest.raises(Exception, match="choose from"):
        chaos.schedule(3, 0, 40, ckpts, 2, 2, types=("kill_everything",))


def _write_ckpt_files(d, rows=4, dim=3, step=None, weight=None):
    d.mkdir(parents=True, exist_ok=True)
    (d / "COMMITTED").write_text("x")
    e = d / "embeddings"
    e.mkdir(exist_ok=True)
    for ntype in ("user", "item"):
        w = np.arange(rows * dim, dtype=np.float32).reshape(rows, dim) if weight is None else weight
        cols = {"orig_id": pa.array(np.arange(rows, dtype=np.int64)[::-1].copy())}  # not sorted: keyed
        for name in ("weight", "exp_avg", "exp_avg_sq"):
            cols[name] = pa.FixedSizeListArray.from_arrays(pa.array(w.reshape(-1)), dim)
        cols["step"] = pa.array(np.full(rows, 5, np.int64) if step is None else step)
        pq.write_table(pa.table(cols), e / f"{ntype}-00000.parquet")


def test_the_row_comparison_counts_lost_and_extra_updates_and_changed_values(tmp_path):
    _write_ckpt_files(tmp_path / "ref")
    _write_ckpt_files(tmp_path / "same")
    same = chaos.compare_checkpoints(tmp_path / "same", tmp_path / "ref")
    assert same == {"rows": 8, "lost_updates": 0, "extra_updates": 0, "mismatched_rows": 0, "max_abs_diff": 0.0}
    _write_ckpt_files(tmp_path / "lost", step=np.array([5, 3, 5, 6], np.int64))
    lost = chaos.compare_checkpoints(tmp_path / "lost", tmp_path / "ref")
    assert (lost["lost_updates"], lost["extra_updates"], lost["mismatched_rows"]) == (4, 2, 4)  # 2 ntypes
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    w[1, 2] += 1e-2
    _write_ckpt_files(tmp_path / "moved", weight=w)
    moved = chaos.compare_checkpoints(tmp_path / "moved", tmp_path / "ref")
    assert moved["mismatched_rows"] == 2 and moved["lost_updates"] == 0
    assert moved["max_abs_diff"] == pytest.approx(1e-2, rel=1e-3)


def test_enospc_at_a_checkpoint_commits_nothing_and_fires_once(tmp_path, monkeypatch):
    run = tmp_path / "run"
    section = {"num_shards": 1}

    def save(d):
        files = {}
        for ntype in ("user", "item"):
            rel = ckpt.shard_relpath(ntype, 0)
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_bytes(b"rows")
            files[rel] = ckpt.file_record(d, rel, None)
        return files

    monkeypatch.setenv(ckpt.ENOSPC_ENV, "12")
    ckpt.write(run, 6, {"global_step": 6}, {}, save, keep=10, embeddings=section)  # another step: written
    with pytest.raises(OSError) as info:
        ckpt.write(run, 12, {"global_step": 12}, {}, save, keep=10, embeddings=section)
    assert info.value.errno == errno.ENOSPC
    assert [p.name for p in ckpt.committed(run)] == ["step-000000006"]
    assert chaos.uncommitted_entries(run) == []  # the half-written directory is gone
    assert ckpt.enospc_marker(run, 12).exists()
    ckpt.write(run, 12, {"global_step": 12}, {}, save, keep=10, embeddings=section)  # the retry commits
    assert [p.name for p in ckpt.committed(run)] == ["step-000000006", "step-000000012"]


def test_detection_is_classified_from_the_fault_record():
    assert chaos.detection_kind("failed call (rank 1: RayCallError: pull of 30 rows (PSShard 0) did not "
                                "answer within the 15s deadline)") == "deadline"
    assert chaos.detection_kind("worker error (rank 0: RuntimeError: [gloo] Timed out waiting 20000ms "
                                "for recv operation)") == "deadline"
    assert chaos.detection_kind("health check (rank 0: StaleGenerationError: ...)") == "health check"
    assert chaos.detection_kind("failed call (rank 0: RayCallError: push (PSShard 1) died or is "
                                "unreachable (deadline 15s): ...)") == "error"
    assert chaos.detection_kind("Ray Train: a worker process exited; it restarted the worker group") == \
        "Ray Train restart"


@pytest.mark.timeout(1500)
def test_two_faults_are_survived_with_nothing_lost(tmp_path, capsys):
    from distgnn.cli import main

    rc = main(["bench", "chaos", "--faults", "2", "--types", "kill_ps,enospc", "--seed", "3",
               "--interactions", "6000", "--timeout", "600", "--json", "--out", str(tmp_path / "chaos")])
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{"):])
    print(json.dumps(report["per_fault"], indent=1))
    assert report["faults"] == 2 and report["hangs"] == 0
    assert sorted(r["type"] for r in report["per_fault"]) == ["enospc", "kill_ps"]
    for r in report["per_fault"]:
        assert r["survived"] and r["detected"], r
        assert r["fault_records"] >= 1 and r["steps_redone"] >= 0, r
        assert r["checkpoints_compared"] >= 2, r
        assert r["lost_updates"] == r["extra_updates"] == r["mismatched_rows"] == 0, r
        assert r["recall_delta"] is not None and r["recall_delta"] <= 0.005, r
        assert r["uncommitted"] == [], r
    enospc = next(r for r in report["per_fault"] if r["type"] == "enospc")
    assert "ENOSPC" in enospc["detected_by"] or "No space left" in enospc["detected_by"], enospc
    assert report["survived"] == 2 and report["lost_updates"] == 0 and report["ok"], report
    assert rc == 0
    assert json.loads((tmp_path / "chaos" / "chaos.json").read_text())["faults"] == 2
    assert not os.environ.get(ckpt.ENOSPC_ENV)
