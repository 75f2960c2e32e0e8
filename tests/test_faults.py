"""Fault records (``distgnn.ray_runtime.faults``) and how the driver shows records: no Ray needed.

The end-to-end cases (a worker, a PS shard mid-push or idle, a node) are in tests/test_ray_train.py
and tests/test_node_loss.py; here, what the chief composes from a failed attempt's evidence, and
the driver printing every record exactly once, whichever rank wrote it and in which order."""
from __future__ import annotations

import time

from distgnn import metrics
from distgnn.errors import StaleGenerationError
from distgnn.ray_runtime import faults


def _layout(ps_nodes, ps_gens, graph_nodes, graph_gens, rank_nodes, loaded=None):
    return {"ranks": [{"rank": r, "node_id": n, "pid": 100 + r} for r, n in enumerate(rank_nodes)],
            "ps": [{"generation": g, "node_id": n, "loaded_from": (loaded or {}).get(p)}
                   for p, (n, g) in enumerate(zip(ps_nodes, ps_gens))],
            "graph": [{"generation": g, "node_id": n} for n, g in zip(graph_nodes, graph_gens)]}


def test_a_lost_node_names_what_it_held_and_what_was_re_placed(tmp_path):
    before = _layout(["aaaa1111", "bbbb2222"], [0, 0], ["aaaa1111", "bbbb2222"], [0, 0],
                     ["aaaa1111", "bbbb2222"])
    now = _layout(["aaaa1111", "cccc3333"], [0, 1], ["aaaa1111", "cccc3333"], [0, 1],
                  ["aaaa1111", "cccc3333"], loaded={1: "step-000000009"})
    faults.error_note(tmp_path, 0, RuntimeError(
        "Got the following error when running the callback: RuntimeError: [pair.cc:534] Connection "
        "closed by peer [127.0.0.1]:5\n\nAt:\n  /x.py"), step=12)
    rec = faults.compose(before, now, {"aaaa1111", "cccc3333"}, faults.read_notes(tmp_path),
                         "step-000000009", ckpt_step=9, last_step=12)
    assert rec == {
        "type": "fault",
        "what": "node bbbb2222 was lost with rank 1, PSShard 1, GraphShard 1; PSShard 1 restarted "
                "(generation 0 -> 1, re-placed from node bbbb2222 to cccc3333, rows from "
                "step-000000009); GraphShard 1 restarted (generation 0 -> 1, re-placed from node "
                "bbbb2222 to cccc3333)",
        "detected_by": "worker error (rank 0: RuntimeError: [pair.cc:534] Connection closed by peer "
                       "[127.0.0.1]:5)",
        "rolled_back_to": "step-000000009", "steps_redone": 3}
    assert faults.fault_line(rec) == (f"fault recovered: {rec['what']}; detected by {rec['detected_by']}; "
                                      f"rolled back to step-000000009, 3 steps redone")


def test_the_health_check_and_fenced_calls_are_named_as_the_detection(tmp_path):
    layout = _layout(["n1", "n2"], [0, 0], ["n1", "n2"], [0, 0], ["n1", "n2"])
    restarted = _layout(["n1", "n2"], [1, 0], ["n1", "n2"], [0, 0], ["n1", "n2"], loaded={0: "step-000000004"})
    faults.write_note(tmp_path, "ps0", what="injected fault: PSShard 0 killed while idle")
    faults.error_note(tmp_path, 1, RuntimeError("Connection closed by peer"), step=8)  # a bystander
    faults.error_note(tmp_path, 0, StaleGenerationError("health check before checkpoint: PSShard 0 "
                                                        "is generation 1"), step=8)
    rec = faults.compose(layout, restarted, {"n1", "n2"}, faults.read_notes(tmp_path),
                         "step-000000004", ckpt_step=4, last_step=8)
    assert rec["what"] == ("PSShard 0 restarted (generation 0 -> 1, rows from step-000000004); "
                           "injected fault: PSShard 0 killed while idle")
    assert rec["detected_by"] == ("health check (rank 0: StaleGenerationError: health check before "
                                  "checkpoint: PSShard 0 is generation 1)")
    faults.clear(tmp_path, keep_layout=True)
    assert faults.read_notes(tmp_path) == []


def test_a_silent_worker_exit_and_progress(tmp_path):
    layout = _layout(["n1"], [0], ["n1"], [0], ["n1", "n1"])
    faults.write_layout(tmp_path / "fresh-run", layout)  # the first thing written in a run
    assert faults.read_layout(tmp_path / "fresh-run") == layout
    p0, p1 = faults.Progress(tmp_path, 0), faults.Progress(tmp_path, 1)
    p0.set(123456)
    p0.set(17)  # rewritten in place: a shorter number leaves no digits behind
    p1.set(16)
    assert faults.max_progress(tmp_path) == 17
    rec = faults.compose(layout, layout, {"n1"}, [], "the initial state (no checkpoint yet)", 0, 17)
    assert rec["what"] == "a training worker process exited"
    assert rec["detected_by"] == "Ray Train: a worker process exited; it restarted the worker group"
    assert rec["steps_redone"] == 17
    faults.write_layout(tmp_path, layout)
    faults.clear(tmp_path)
    assert faults.read_layout(tmp_path) is None and faults.max_progress(tmp_path) is None


class _FakeTrainer:
    """Stands in for Ray Train's TorchTrainer: ``fit`` writes records as two ranks would, rank 1's
    warning first (it sorts after every rank-0 record in the merged list)."""

    def __init__(self, run_dir):
        self.run_dir = run_dir

    def fit(self):
        w = lambda rank, rec: (metrics.append(self.run_dir, rank, rec), time.sleep(1.3))  # noqa: E731
        w(1, {"type": "warning", "message": "rank 1: slower path"})
        w(0, {"type": "checkpoint", "epoch": 1, "step": 5, "loss": 0.5})
        w(0, {"type": "fault", "what": "PSShard 1 restarted", "detected_by": "health check",
              "rolled_back_to": "step-000000005", "steps_redone": 2})
        metrics.append(self.run_dir, 0, {"type": "valid", "epoch": 2, "split": "valid", "recall@20": 0.5})
        return "done"  # right after its last record: the driver must still show it


def test_the_driver_shows_every_rank_s_records_once(tmp_path, capsys):
    from launch.job import _fit_with_watchdog

    metrics.append(tmp_path, 0, {"type": "warning", "message": "from an earlier job"})
    assert _fit_with_watchdog(_FakeTrainer(tmp_path), tmp_path, epochs=2, stall_timeout_s=60) == "done"
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == ["warning: rank 1: slower path",
                     "fault recovered: PSShard 1 restarted; detected by health check; rolled back to "
                     "step-000000005, 2 steps redone",
                     "epoch 2: valid recall@20 0.5000"], lines


def test_by_file_splits_the_merged_records(tmp_path):
    metrics.append(tmp_path, 1, {"type": "a"})
    metrics.append(tmp_path, 0, {"type": "b"})
    metrics.append(tmp_path, 0, {"type": "c"})
    got = [(p.name, [r["type"] for r in recs]) for p, recs in metrics.read_metrics(tmp_path).by_file()]
    assert got == [("rank-00000.jsonl", ["b", "c"]), ("rank-00001.jsonl", ["a"])]


def test_processes_per_node_counts_only_nodes_with_a_rank():
    """The node the node-loss test and the chaos bench kill: the one holding most of the job,
    among the given nodes that run a training rank (shards alone on a node do not count it)."""
    layout = {"ranks": [{"node_id": "a"}, {"node_id": "b"}],
              "ps": [{"node_id": "a"}, {"node_id": "c"}], "graph": [{"node_id": "a"}, {"node_id": "b"}]}
    assert faults.processes_per_node(layout, {"a", "b", "c"}) == {"a": 3, "b": 2}
    assert faults.processes_per_node(layout, {"b", "c"}) == {"b": 2}
