"""`distgnn train --backend ray`: 2 workers over 2 partitions, restarts after a crash, clear errors.

Multi-process tests: each has a deadline (pytest-timeout), and a failing test's report carries the
tails of the Ray workers' stdout/stderr (distgnn.ray_runtime.testing).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from distgnn import checkpoint as ckpt
from distgnn.cli import main
from distgnn.metrics import read_metrics
from distgnn.ray_runtime import faults
from distgnn.ray_runtime.faults import fault_line
from tests.train_cfg import small_config
from tests.train_data import move_test_split_away, partitioned

pytestmark = pytest.mark.timeout(600)

EPOCHS = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("raytrain")
    parts = partitioned(tmp, num_parts=2, method="metis", num_users=200, num_items=120)
    cfg = small_config(tmp, parts, train={"epochs": EPOCHS, "batch_size": 128, "log_every": 2,
                                          "eval_every": 1, "patience": 0, "lr_decay": 0.9})
    return {"tmp": tmp, "parts": parts, "cfg": cfg}


def _train(data, run, *extra):
    return main(["train", "--config", str(data["cfg"]), "--backend", "ray", "--num-workers", "2",
                 "--out", str(run), *extra])


def _evaluate(run, capsys) -> dict:
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def uninterrupted(ray_cluster, data):
    """Also the relative-path case: Ray workers do not run in the driver's working directory."""
    old = os.getcwd()
    os.chdir(data["tmp"])
    try:
        assert main(["train", "--config", str(data["cfg"]), "--partitions", "parts", "--backend", "ray",
                     "--num-workers", "2", "--out", "run-ok"]) == 0
    finally:
        os.chdir(old)
    return data["tmp"] / "run-ok"


def test_two_workers_train_end_to_end(uninterrupted, capsys):
    run = uninterrupted
    last = ckpt.latest(run)
    assert last is not None and ckpt.read_meta(last)["epoch"] == EPOCHS
    recs = read_metrics(run).records
    train = [r for r in recs if r["type"] == "train"]
    assert {r["rank"] for r in train} == {0, 1}, "both workers must log"
    # every worker ran the same number of steps (DDP all-reduces line up)
    steps = {rank: max(r["step"] for r in train if r["rank"] == rank) for rank in (0, 1)}
    assert steps[0] == steps[1]
    traffic = train[-1]["traffic"]
    assert traffic["pull_rows_local"] > 0 and traffic["pull_rows_remote"] > 0
    # own-partition rows went through the shard's shared memory, not calls; none left behind
    assert traffic["pull_rows_mapped"] == traffic["pull_rows_local"] > 0
    assert traffic["push_rows_mapped"] == traffic["push_rows_local"] > 0
    # workers at the driver's niceness, not Ray's 15 (cluster.workload_env, D34)
    assert {r["niceness"] for r in train} == {os.nice(0)}
    # (other jobs on this machine may have their own /dev/shm/distgnn-* directories: look for
    # files of this run's shards, named by their pids, recorded in the run's layout)
    pids = {s["pid"] for s in faults.read_layout(run)["ps"]}
    assert len(pids) == 2
    ours = [f for f in Path("/dev/shm").glob("distgnn-*/ps*")
            if int(f.name.split(".")[0].rsplit("-", 1)[1]) in pids]
    assert not ours, "shared rows left behind"
    assert traffic["remote_requests"] > 0 and traffic["push_bytes_remote"] > 0
    assert set(train[-1]["stage_seconds"]) >= {"sample_local", "sample_remote", "pull", "forward",
                                               "backward", "push", "all_reduce"}
    assert sum(r["stage_seconds"]["all_reduce"] for r in train) > 0, "DDP's all-reduce was not timed"
    # the same loop as the local backend: rank 0 validates every epoch and marks the best checkpoint
    valid = [r for r in recs if r["type"] == "valid"]
    assert [r["epoch"] for r in valid] == list(range(1, EPOCHS + 1))
    assert ckpt.for_inference(run) is not None
    # the PS snapshot in the checkpoint holds every user and item row, one file pair per shard
    rows = sum(pq.read_metadata(p).num_rows for p in (last / "embeddings").glob("*.parquet"))
    assert rows >= 200 + 100
    assert ckpt.read_meta(last)["version"] == 2 and ckpt.verify(last) == 2 * 2 + 2
    # Ray Train was given no checkpoint: it keeps no second copy of the embeddings (or anything)
    assert (run / "ray").is_dir(), "Ray Train's storage moved: this check would be vacuous"
    copies = [p for p in (run / "ray").rglob("*") if p.suffix == ".parquet" or p.name == "dense.pt"]
    assert not copies, copies
    metrics = _evaluate(run, capsys)
    assert metrics["recall@20"] > 0.1


def test_every_process_reports_its_peak_rss(uninterrupted):
    """Issue 9: the driver, each worker, each GraphShard and each PS shard report their own peak
    RSS; the driver appends one ``processes`` record (its own file, read last) with their sum."""
    from distgnn.metrics import driver_path
    from distgnn.stages import process_memory

    read = read_metrics(uninterrupted)
    procs = read.of_type("processes")
    assert len(procs) == 1 and read.records[-1] is procs[0], "one record, from the driver's file, last"
    assert driver_path(uninterrupted).is_file()
    rec = procs[0]
    assert rec["missing"] == []
    # this test process was the job's driver (the CLI ran in it)
    assert rec["driver"]["pid"] == os.getpid()
    assert 50 * 2**20 < rec["driver"]["peak_rss_bytes"] <= process_memory()["peak_rss_bytes"]
    assert [w["rank"] for w in rec["workers"]] == [0, 1]
    assert [g["part_id"] for g in rec["graph_shards"]] == [0, 1] == [q["part_id"] for q in rec["ps_shards"]]
    everyone = [rec["driver"], *rec["workers"], *rec["graph_shards"], *rec["ps_shards"]]
    assert len({e["pid"] for e in everyone}) == rec["num_processes"] == 7, "each process reports itself"
    assert all(e["peak_rss_bytes"] > 20 * 2**20 and e["node_id"] for e in everyone)
    assert rec["total_peak_rss_bytes"] == sum(e["peak_rss_bytes"] for e in everyone)
    # a worker's figure is its last train record's; its records carry pid, node, peak and CPU time
    train = read.of_type("train")
    for w in rec["workers"]:
        mine = [r for r in train if r["rank"] == w["rank"]]
        assert w["peak_rss_bytes"] == mine[-1]["peak_rss_bytes"] and w["pid"] == mine[-1]["pid"]
        assert all(a["peak_rss_bytes"] <= b["peak_rss_bytes"] and a["cpu_seconds"] <= b["cpu_seconds"]
                   for a, b in zip(mine, mine[1:]))
        assert mine[-1]["cpu_seconds"] > 0


def test_process_report_survives_a_dead_shard(ray_cluster, tmp_path):
    """A shard that cannot answer is listed in ``missing``; the report is still written."""
    import ray

    from distgnn.stages import process_memory
    from launch.job import format_processes, process_report

    @ray.remote(num_cpus=0)
    class Shard:
        def counters(self):
            return {"part_id": 9, "node_id": "n", **process_memory()}

    alive, dead = Shard.remote(), Shard.remote()
    ray.get([alive.__ray_ready__.remote(), dead.__ray_ready__.remote()], timeout=60)
    ray.kill(dead)
    # ray.kill is asynchronous: a call sent right after it can still be served (a flake in CI),
    # so wait, with a deadline, until the actor is gone
    deadline = time.monotonic() + 60
    while True:
        try:
            ray.get(dead.__ray_ready__.remote(), timeout=10)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            break
        assert time.monotonic() < deadline, "the killed actor still answers after 60 s"
        time.sleep(0.2)
    rec = process_report(tmp_path, [alive, dead], [], timeout_s=20)
    assert [g["part_id"] for g in rec["graph_shards"]] == [0]
    assert len(rec["missing"]) == 1 and "GraphShard 1" in rec["missing"][0]
    assert read_metrics(tmp_path).of_type("processes") == [rec]
    text = format_processes(rec)
    assert "graph shard 0" in text and "not reported: GraphShard 1" in text


def test_worker_crash_restarts_from_last_checkpoint(uninterrupted, data, capsys):
    """Workers resume from the run's own latest checkpoint (not Ray Train's): here the run
    directory first held a finished older run (with later checkpoints and a started marker),
    which --overwrite removes before the job starts, so the restart finds only this run's."""
    import shutil

    from distgnn import format as fmt
    from distgnn.ray_runtime.worker import STARTED_MARKER, steps_per_epoch

    run = data["tmp"] / "run-crash"
    shutil.copytree(uninterrupted, run)
    assert (run / STARTED_MARKER).exists() and ckpt.read_meta(ckpt.latest(run))["epoch"] == EPOCHS
    assert _train(data, run, "--overwrite", "--set", "train.fault.worker=1", "--set", "train.fault.step=2",
                  "--set", "train.fault.epoch=1") == 0
    assert list(run.glob(".fault-injected-*")), "the fault was not injected"
    last = ckpt.latest(run)
    assert ckpt.read_meta(last)["epoch"] == EPOCHS
    steps = steps_per_epoch(fmt.load_manifest(data["parts"]), 128)
    steps0 = [r["step"] for r in read_metrics(run).records if r["type"] == "train" and r["rank"] == 0]
    rerun = [b for a, b in zip(steps0, steps0[1:]) if b <= a]
    assert rerun, "no restart: steps were never re-run"
    assert all(steps < b <= 2 * steps for b in rerun), ("not resumed from the epoch-1 checkpoint", rerun)
    # loud, not silent: one fault record, and one driver line for it
    err = capsys.readouterr().err
    (fault,) = read_metrics(run).of_type("fault")
    assert "injected fault: rank 1 exited at epoch 1 step 2" in fault["what"], fault
    assert fault["rolled_back_to"] == f"step-{steps:09d}" and fault["steps_redone"] == 2, fault
    assert fault["detected_by"], fault
    assert _fault_lines(err) == [fault_line(fault)], err
    ok, crashed = _evaluate(uninterrupted, capsys), _evaluate(run, capsys)
    assert abs(ok["recall@20"] - crashed["recall@20"]) < 0.05, (ok, crashed)


def _fault_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("fault recovered:")]


def test_parameter_server_crash_restarts_from_last_checkpoint(uninterrupted, data, capsys):
    """A PS shard dies mid-epoch 1: Ray restarts it, the workers fail over to the last checkpoint,
    which reloads every shard, and the run finishes with the same quality."""
    from distgnn import format as fmt
    from distgnn.ray_runtime.worker import steps_per_epoch

    steps = steps_per_epoch(fmt.load_manifest(data["parts"]), 128)
    run = data["tmp"] / "run-ps-crash"
    # worker 0 pushes to shard 1 every step (worker 1 updates it through shared memory): crash in
    # the middle of epoch 1 (0-based)
    capsys.readouterr()
    assert _train(data, run, "--set", "train.fault.ps_shard=1",
                  "--set", f"train.fault.ps_after_pushes={steps + steps // 2}") == 0
    err = capsys.readouterr().err
    recs = read_metrics(run).records
    steps0 = [r["step"] for r in recs if r["type"] == "train" and r["rank"] == 0]
    assert any(b <= a for a, b in zip(steps0, steps0[1:])), "no restart: steps were never re-run"
    assert ckpt.read_meta(ckpt.latest(run))["epoch"] == EPOCHS
    # the restarted shard came back as generation 1 with the epoch-1 checkpoint's rows; the
    # fault is recorded and printed
    (fault,) = read_metrics(run).of_type("fault")
    first = f"step-{steps:09d}"
    assert f"injected fault: PSShard 1 exited after {steps + steps // 2} pushes" in fault["what"], fault
    assert f"PSShard 1 restarted (generation 0 -> 1" in fault["what"] and f"rows from {first}" in fault["what"]
    assert fault["rolled_back_to"] == first and 0 < fault["steps_redone"] < steps, fault
    assert _fault_lines(err) == [fault_line(fault)], err
    ok, crashed = _evaluate(uninterrupted, capsys), _evaluate(run, capsys)
    assert abs(ok["recall@20"] - crashed["recall@20"]) < 0.05, (ok, crashed)


def test_parameter_server_idle_crash_is_found_before_the_checkpoint(uninterrupted, data, capsys):
    """A PS shard is killed while idle at the end of epoch 1 (after validation, before the
    checkpoint): no call fails, Ray restarts it (it reloads the epoch-1 checkpoint as generation
    1). The health check before the epoch-2 checkpoint finds it, so that checkpoint is never
    written with the restarted shard's rows; the job rolls back to epoch 1's and finishes."""
    from distgnn import format as fmt
    from distgnn.ray_runtime.worker import steps_per_epoch

    steps = steps_per_epoch(fmt.load_manifest(data["parts"]), 128)
    run = data["tmp"] / "run-ps-idle"
    capsys.readouterr()
    assert _train(data, run, "--set", "train.fault.ps_shard=0", "--set", "train.fault.ps_idle_epoch=1") == 0
    err = capsys.readouterr().err
    assert list(run.glob(".fault-injected-ps0-idle-epoch1")), "the fault was not injected"
    (fault,) = read_metrics(run).of_type("fault")
    first = f"step-{steps:09d}"
    assert "injected fault: PSShard 0 killed while idle at the end of epoch 1" in fault["what"], fault
    assert f"PSShard 0 restarted (generation 0 -> 1" in fault["what"] and f"rows from {first}" in fault["what"]
    assert fault["detected_by"].startswith("health check (rank 0: StaleGenerationError: health check "
                                           "before checkpoint: PSShard 0 is generation 1"), fault
    assert fault["rolled_back_to"] == first and fault["steps_redone"] == steps, fault
    assert _fault_lines(err) == [fault_line(fault)], err
    # epoch 2's checkpoint was written once, after the rollback; the run finished
    checkpoints = [r["step"] for r in read_metrics(run).of_type("checkpoint")]
    assert checkpoints == [steps, 2 * steps, 3 * steps], checkpoints
    assert ckpt.read_meta(ckpt.latest(run))["epoch"] == EPOCHS
    ok, crashed = _evaluate(uninterrupted, capsys), _evaluate(run, capsys)
    assert abs(ok["recall@20"] - crashed["recall@20"]) < 0.05, (ok, crashed)


def test_full_shared_memory_is_a_warning_in_the_metrics_and_on_the_driver(ray_cluster, data, tmp_path,
                                                                          capsys, monkeypatch):
    """A PS shard whose node has no room in /dev/shm keeps its rows private (a test hook makes
    the shards see 0 bytes free); the trainers then pull and push their own rows by call, and
    say so: a warning record per rank naming the shard's reason, printed by the driver."""
    from distgnn.ray_runtime.ps import SHM_FREE_ENV

    monkeypatch.setenv(SHM_FREE_ENV, "0")  # forwarded by the driver to the shards
    run = tmp_path / "run"
    capsys.readouterr()
    assert _train(data, run, "--max-steps", "2", "--set", "train.eval_every=0") == 0
    err = capsys.readouterr().err
    warnings = read_metrics(run).of_type("warning")
    assert len(warnings) == 2, warnings
    for rank, w in enumerate(sorted(warnings, key=lambda w: w["message"])):
        assert w["message"].startswith(f"rank {rank}: the parameter-server rows of partition(s) [{rank}] "
                                       f"are not in shared memory"), w
        assert f"PSShard {rank}: /dev/shm/distgnn-" in w["message"] and "has 0.0 MiB free" in w["message"], w
        assert f"warning: {w['message']}" in err.splitlines(), err
    train = read_metrics(run).of_type("train")
    assert train and all(r["traffic"]["pull_rows_mapped"] == 0 for r in train)
    assert all(r["traffic"]["pull_rows_local"] > 0 for r in train)


def test_resume_continues_a_stopped_run(ray_cluster, data):
    run = data["tmp"] / "run-resume"
    assert _train(data, run, "--epochs", "1") == 0
    first = ckpt.read_meta(ckpt.latest(run))
    assert _train(data, run, "--epochs", "2", "--resume") == 0
    meta = ckpt.read_meta(ckpt.latest(run))
    assert meta["epoch"] == 2 and meta["global_step"] == 2 * first["global_step"]
    recs = read_metrics(run).records
    assert min(r["step"] for r in recs if r["type"] == "train" and r["epoch"] == 1) > first["global_step"]


def test_one_worker_trains_both_partitions(uninterrupted, data, capsys):
    """Fewer workers than partitions: worker r trains partitions r, r + N, ...; here one worker
    holds both, samples and updates all rows locally, and reaches the 2-worker run's quality."""
    run = data["tmp"] / "run-1worker"
    assert main(["train", "--config", str(data["cfg"]), "--backend", "ray", "--num-workers", "1",
                 "--out", str(run)]) == 0
    err = capsys.readouterr().err  # the per-process memory summary, for people
    assert "peak RSS per process (6 processes" in err
    for label in ("driver", "worker 0", "graph shard 1", "PS shard 1"):
        assert f"\n  {label} " in err, label
    recs = read_metrics(run).records
    train = [r for r in recs if r["type"] == "train"]
    assert {r["rank"] for r in train} == {0}
    t = train[-1]["traffic"]
    assert t["remote_requests"] == 0 and t["pull_rows_remote"] == 0 and t["pull_rows_local"] > 0
    assert t["pull_rows_mapped"] == t["pull_rows_local"]
    # one worker covers every training interaction each epoch: twice the steps of two workers
    from distgnn import format as fmt
    from distgnn.ray_runtime.worker import steps_per_epoch
    manifest = fmt.load_manifest(data["parts"])
    assert ckpt.read_meta(ckpt.latest(run))["global_step"] == EPOCHS * steps_per_epoch(manifest, 128, 1)
    ok, one = _evaluate(uninterrupted, capsys), _evaluate(run, capsys)
    assert abs(ok["recall@20"] - one["recall@20"]) < 0.05, (ok, one)


def test_more_workers_than_partitions_is_one_line(ray_cluster, data, tmp_path, capsys):
    assert main(["train", "--config", str(data["cfg"]), "--backend", "ray", "--num-workers", "3",
                 "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--num-workers 3" in err[0] and "between 1 and 2" in err[0]


def test_two_workers_train_without_the_test_split(ray_cluster, data, tmp_path):
    """Training (shards, workers, rank 0's validation) never needs targets/test.parquet."""
    import shutil

    parts = tmp_path / "parts"
    shutil.copytree(data["parts"], parts)
    move_test_split_away(parts, tmp_path)
    run = tmp_path / "run"
    assert main(["train", "--config", str(data["cfg"]), "--partitions", str(parts), "--backend", "ray",
                 "--num-workers", "2", "--epochs", "2", "--out", str(run)]) == 0
    recs = read_metrics(run).records
    assert [(r["epoch"], r["split"]) for r in recs if r["type"] == "valid"] == [(1, "valid"), (2, "valid")]
    assert ckpt.best(run) is not None
    assert not (parts / "targets" / "test.parquet").exists()
