"""Losing a node mid-epoch: a three-raylet Ray cluster on this machine (``ray.cluster_utils.Cluster``),
2 training workers over 2 partitions, and one worker node killed (every process of it, raylet
included, SIGKILL) in the middle of the second epoch. The job finishes on the two surviving nodes:
Ray restarts the lost node's GraphShard and PS shard elsewhere (the PS shard reloads the last
checkpoint under a new generation), Ray Train restarts the worker group there, the workers roll
back to that checkpoint, and the chief records the fault. The final Recall@20 is within 0.005 of
an uninterrupted run with the same seed on the same cluster (with ``embedding.ordered_pushes`` a
run is reproducible, and the rollback is exact, so in practice they are equal).

Multi-process: a deadline on the test and on each wait; a failing test's report carries the tails
of every node's worker logs (``distgnn.ray_runtime.testing.multi_node_cluster``).
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time

import pytest

from distgnn import checkpoint as ckpt
from distgnn import format as fmt
from distgnn.cli import main
from distgnn.metrics import read_metrics
from distgnn.ray_runtime import faults
from distgnn.ray_runtime.testing import multi_node_cluster
from distgnn.ray_runtime.worker import steps_per_epoch
from tests.train_cfg import small_config
from tests.train_data import partitioned

pytestmark = pytest.mark.timeout(540)

EPOCHS = 2
BATCH = 64


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nodeloss")
    parts = partitioned(tmp, num_parts=2, method="metis", num_users=200, num_items=120)
    # ordered pushes: without them two identical uninterrupted runs differed by up to 0.008 in
    # Recall@20 (the workers' pushes race), more than the bound this test checks
    cfg = small_config(tmp, parts, train={"epochs": EPOCHS, "batch_size": BATCH, "log_every": 1,
                                          "eval_every": 0, "threads": 1},
                       embedding={"ordered_pushes": True})
    return {"tmp": tmp, "parts": parts, "cfg": cfg,
            "steps": steps_per_epoch(fmt.load_manifest(parts), BATCH, 2)}


def _train(data, cluster, run) -> int:
    return main(["train", "--config", str(data["cfg"]), "--backend", "ray", "--num-workers", "2",
                 "--address", cluster.address, "--out", str(run)])


def _recall(run, capsys) -> float:
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--json"]) == 0
    return json.loads(capsys.readouterr().out)["recall@20"]


class NodeKiller(threading.Thread):
    """Once the metrics show the second epoch under way, kills the (non-head) node that runs a
    training worker, preferring one that also holds shards: every process of it at once, as a
    machine or raylet crash would, never a graceful drain.

    An epoch of this small job takes about a second, less than noticing the step and killing a
    node's processes: so both training workers are paused (SIGSTOP) the moment the step is seen,
    the node is killed, and the survivor resumes (SIGCONT). That pins the loss to the middle of
    the epoch; it changes nothing else (the pause is invisible to the computation)."""

    def __init__(self, cluster, run, step: int, timeout_s: float = 300):
        super().__init__(daemon=True, name="node-killer")
        self.cluster, self.run_dir, self.step, self.timeout_s = cluster, run, step, timeout_s
        self.victim: str | None = None
        self.layout: dict | None = None
        self.killed_at_step: int | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not self.stop.is_set() and time.monotonic() < deadline:
            train = read_metrics(self.run_dir).of_type("train")
            layout = faults.read_layout(self.run_dir)
            reached = max((r["step"] for r in train), default=0)
            if layout and reached >= self.step:
                self._kill(layout, reached)
                return
            time.sleep(0.1)

    def _kill(self, layout: dict, reached: int) -> None:
        nodes = {n.node_id: n for n in self.cluster.worker_nodes}  # never the head (driver's node)
        held = faults.processes_per_node(layout, nodes)
        self.victim = max(held, key=held.get)
        self.layout, self.killed_at_step = layout, reached
        pids = [r["pid"] for r in layout["ranks"]]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        try:
            self.cluster.remove_node(nodes[self.victim], allow_graceful=False)
            # a simulated node's worker exits only once it notices its raylet is gone, and a
            # paused one would run on after SIGCONT (a CI run saw it finish the epoch): a lost
            # machine takes its processes with it, so kill the victim's ranks outright
            for r in layout["ranks"]:
                if r["node_id"] == self.victim:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(r["pid"], signal.SIGKILL)
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)


def test_job_finishes_on_the_survivors_after_losing_a_node(request, data, capsys):
    steps = data["steps"]
    assert steps >= 6, "too few steps per epoch to kill a node in the middle of one"
    with multi_node_cluster(request, nodes=3) as cluster:
        reference = data["tmp"] / "run-reference"
        assert _train(data, cluster, reference) == 0
        assert not read_metrics(reference).of_type("fault")

        run = data["tmp"] / "run-node-lost"
        killer = NodeKiller(cluster, run, step=steps + 2)  # 2 steps into the second epoch
        killer.start()
        try:
            capsys.readouterr()
            rc = _train(data, cluster, run)
            err = capsys.readouterr().err
        finally:
            killer.stop.set()
            killer.join(timeout=30)
        assert killer.victim is not None, "the node was never killed"
        print(f"killed node {killer.victim[:8]} at step {killer.killed_at_step}; layout before "
              f"{json.dumps(killer.layout)}")
        assert rc == 0, err
        before = killer.layout
        after = faults.read_layout(run)
        alive = {n.node_id for n in [cluster.head_node, *cluster.worker_nodes]}
        assert killer.victim not in alive and len(alive) == 2

    # the job finished every epoch, on the two surviving nodes
    assert ckpt.read_meta(ckpt.latest(run))["epoch"] == EPOCHS
    assert {r["node_id"] for r in after["ranks"]} <= alive and len(after["ranks"]) == 2
    # the actors of the lost node were re-placed on the survivors, under a new generation
    for key in ("ps", "graph"):
        for p, (old, new) in enumerate(zip(before[key], after[key])):
            assert new["node_id"] in alive, (key, p, new)
            if old["node_id"] == killer.victim:
                assert new["generation"] > old["generation"], (key, p, old, new)
    # the fault is recorded and printed once, naming the node, the checkpoint and the redone steps
    recs = read_metrics(run).of_type("fault")
    assert len(recs) == 1, recs
    fault = recs[0]
    assert f"node {killer.victim[:8]} was lost" in fault["what"], fault
    assert fault["rolled_back_to"] == f"step-{steps:09d}", fault
    assert 0 < fault["steps_redone"] <= steps, fault
    assert fault["detected_by"], fault
    assert [line for line in err.splitlines() if line.startswith("fault recovered: node")] == [
        faults.fault_line(fault)], err
    # and the model is as good as the uninterrupted run's
    ok, lost = _recall(reference, capsys), _recall(run, capsys)
    print(f"recall@20: uninterrupted {ok:.4f}, node lost {lost:.4f}; fault: {faults.fault_line(fault)}")
    assert abs(ok - lost) <= 0.005, (ok, lost)
