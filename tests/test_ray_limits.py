"""`distgnn train --backend ray` refuses what cannot run, in one line with exit 2, before any work
(issue #9 section 4): more workers than CPU slots, a partition a node cannot read, a memory
estimate beyond the nodes' memory. The estimate's arithmetic is checked by hand here too.

One local Ray instance (2 CPUs) for the module; a failing test's report carries the Ray workers'
logs (distgnn.ray_runtime.testing)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from distgnn import format as fmt
from distgnn.cli import main
from distgnn.ray_runtime import estimate
from tests.train_cfg import small_config
from tests.train_data import partitioned

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("raylimits")
    parts = partitioned(tmp, num_parts=3, num_users=150, num_items=90)
    return {"tmp": tmp, "parts": parts, "cfg": small_config(tmp, parts, train={"max_steps": 2})}


def _train(data, out: Path, *extra: str) -> int:
    return main(["train", "--config", str(data["cfg"]), "--backend", "ray", "--out", str(out), *extra])


def _our_lines(capsys) -> list[str]:
    """stderr lines of the CLI itself; a traceback among them fails the test. The test cluster
    also forwards its actors' output, each line prefixed with '(ActorName pid=N)', which is Ray's
    business (its placement-group cleaner logs tracebacks of its own at shutdown), not the CLI's."""
    import re

    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in capsys.readouterr().err.splitlines()]
    ours = [line for line in lines if not re.match(r"\s*\(\S+ pid=\d+", line)]
    assert not any("Traceback" in line for line in ours), "\n".join(ours)
    return [line for line in ours if line.startswith("distgnn ")]


# --- the arithmetic -----------------------------------------------------------------------------
def _manifest(rows: list[int], edges: list[int], interactions: list[int]) -> dict:
    parts, start = [], 0
    for r, e, i in zip(rows, edges, interactions):
        parts.append({"gid_start": start, "item_gid_start": start + r // 2, "gid_end": start + r,
                      "num_edges": e, "num_train_interactions": i})
        start += r
    return {"parts": parts, "num_interactions": sum(interactions),
            "num_nodes": {"user": sum(r // 2 for r in rows), "item": sum(r - r // 2 for r in rows)}}


def _cfg(**train):
    from distgnn.config import config_from_dict

    return config_from_dict({"data": {"partitions": "x"}, "model": {"dim": 8, "hidden": 8, "layers": 2},
                             "embedding": {"optimizer": "adam"},
                             "train": {"batch_size": 10, "num_negatives": 3, "fanouts": [4, 2],
                                       "eval_every": 0, **train}}, "test")


def test_estimate_arithmetic():
    m = _manifest([1000, 3000], [10_000, 50_000], [5000, 25_000])
    node = estimate.NodeMemory("a", 64 * 2**30, 2)
    cfg = _cfg()
    est = estimate.estimate(m, cfg, num_workers=2, nodes=[node])
    row = 8 * 4 * 3 + 8  # weight + exp_avg + exp_avg_sq + step
    A = estimate.ACTOR_BYTES
    # steady state: PS rows once (in shared memory), graph shards their CSC
    assert est.embedding_bytes == 4000 * row + 2 * A
    assert est.graph_bytes == 8 * (1001 + 3001) + 8 * 60_000 + 2 * A
    # minibatch: 10 x (2 + 3) = 50 seeds; hop fanout 2 -> 100 edges, 150 nodes; fanout 4 -> 600
    # edges, 750 input nodes
    batch = estimate.MINIBATCH_EDGE_BYTES * 700 + 16 * 8 * 750
    assert est.worker_bytes == 2 * (estimate.WORKER_BASE_BYTES + batch)
    assert est.validation_bytes == 0 and est.fits
    assert est.ray_bytes == estimate.RAY_BYTES
    # the three phases of one node holding everything: shards loading; PS rows built (twice) beside
    # the loaded CSCs; training
    load = 8 * (1001 + 3001) + (8 + estimate.GRAPH_LOAD_BYTES_PER_EDGE) * 60_000 + 2 * A
    build = 8 * (1001 + 3001) + 8 * 60_000 + 2 * A + 2 * 4000 * row + 2 * A
    assert est.phases == {"load": load, "build": build, "train": est.total_bytes}
    assert est.per_node_bytes == max(load, build, est.total_bytes)
    # the input layer never exceeds the graph's nodes
    assert estimate.minibatch_bytes(400, 10, 3, False, [4, 2], 8) == \
        estimate.MINIBATCH_EDGE_BYTES * (100 + 150 * 4) + 16 * 8 * 400
    # shared negatives: 2 x 10 + 3 seeds
    assert estimate.minibatch_bytes(10**6, 10, 3, True, [1], 8) == estimate.MINIBATCH_EDGE_BYTES * 23 + 16 * 8 * 46
    # adagrad keeps one slot and no step counter
    cfg_ada = _cfg()
    cfg_ada.embedding.optimizer = "adagrad"
    assert estimate.estimate(m, cfg_ada, 2, [node]).embedding_bytes == 4000 * 8 * 4 * 2 + 2 * A
    # two 1-CPU nodes: each holds one partition (the larger one assumed) and one worker
    two = [estimate.NodeMemory("a", 2**40, 1), estimate.NodeMemory("b", 2**40, 1)]
    est2 = estimate.estimate(m, cfg, 2, two)
    p1 = m["parts"][1]
    assert est2.parts_per_node == 1 and est2.workers_per_node == 1
    assert est2.phases["train"] == (estimate.ps_shard_bytes(p1, 8, "adam", building=False)
                                    + estimate.graph_shard_bytes(p1, loading=False)
                                    + estimate.WORKER_BASE_BYTES + batch + estimate.RAY_BYTES)
    # sharded validation (D29), per worker: item rows (under the budget), one score block (and
    # top-k's copy), one inference chunk of eval.node_batch nodes' in-edges; a worker's peak is
    # the larger of a minibatch and a validation
    est3 = estimate.estimate(m, _cfg(eval_every=1), 2, [node])
    chunk = int(estimate.MINIBATCH_EDGE_BYTES * 16384 * (2 * 30_000 / 4000))
    per_worker = 2000 * 8 * 4 + 2 * estimate.SCORE_BUDGET + chunk
    assert est3.validation_bytes == 2 * per_worker
    assert est3.worker_bytes == 2 * (estimate.WORKER_BASE_BYTES + max(batch, per_worker))
    # the refusal names the estimate, the node's memory and the fixes
    small = estimate.estimate(m, cfg, 2, [estimate.NodeMemory("a", 2**30, 2)])
    assert not small.fits
    with pytest.raises(estimate.UserError, match=r"needs about 5\.\d GiB .* has 1\.0 GiB .*model\.dim"):
        estimate.check(small)


# --- through the CLI ----------------------------------------------------------------------------
def test_more_workers_than_cpu_slots_is_one_line(ray_cluster, data, capsys):
    out = data["tmp"] / "run-cpus"
    assert _train(data, out, "--num-workers", "3") == 2
    lines = _our_lines(capsys)
    assert len(lines) == 1, lines
    assert "asked for 3 workers x 1 CPU, the cluster has 2 CPUs; lower --num-workers" in lines[0]
    assert not out.exists()


def test_memory_estimate_beyond_the_nodes_is_refused(ray_cluster, data, capsys):
    """dim 2^24 on this graph's ~240 nodes: one copy of the Adam rows alone is more than this
    machine's memory; refused before any actor starts or any file is written."""
    import psutil

    out = data["tmp"] / "run-dim"
    num_nodes = fmt.PartitionBook.from_manifest(fmt.load_manifest(data["parts"])).num_nodes
    dim = 2 ** 24
    assert num_nodes * dim * 12 > psutil.virtual_memory().total
    assert _train(data, out, "--num-workers", "2", "--set", f"model.dim={dim}",
                  "--set", f"model.hidden={dim}") == 2
    lines = _our_lines(capsys)
    assert len(lines) == 1, lines
    assert "on its busiest node but the smallest of the 1 node(s) has" in lines[0]
    assert "Ray's memory + object store" in lines[0] and "lower model.dim" in lines[0]
    assert not out.exists()


def test_node_memory_option_is_what_the_estimate_is_compared_with(ray_cluster, data, capsys):
    out = data["tmp"] / "run-nodemem"
    assert _train(data, out, "--num-workers", "2", "--node-memory", "1G") == 2
    lines = _our_lines(capsys)
    assert len(lines) == 1 and "has 1.0 GiB (--node-memory)" in lines[0], lines
    assert _train(data, out, "--num-workers", "2", "--node-memory", "lots") == 2
    assert "--node-memory 'lots' is not a positive size" in _our_lines(capsys)[0]
    assert not out.exists()


def test_unreadable_partition_on_a_node_is_one_line_before_training(ray_cluster, data, tmp_path, capsys):
    """A part file the driver's cheap check accepts (present, right size) but a graph shard cannot
    read (its bytes are damaged; a path only the driver sees fails the same way): exit 2, one line
    naming the shard and its node, and no run directory written."""
    parts = tmp_path / "parts"
    shutil.copytree(data["parts"], parts)
    edges = parts / fmt.edges_path(1)
    edges.write_bytes(b"\0" * edges.stat().st_size)
    out = tmp_path / "run"
    assert main(["train", "--config", str(data["cfg"]), "--partitions", str(parts), "--backend", "ray",
                 "--num-workers", "2", "--out", str(out),
                 # the node's memory as given: the test must not depend on what else runs here
                 "--node-memory", "64G"]) == 2
    lines = _our_lines(capsys)
    assert len(lines) == 1, lines
    # the shard's first open checks the file's sha256 against the manifest (docs/format.md)
    assert "graph shard 1 on node" in lines[0] and "edges.parquet" in lines[0]
    assert "does not match the sha256" in lines[0]
    assert not out.exists(), "the run directory was written before the shards were checked"


def test_a_job_that_fits_prints_its_estimate_and_trains(ray_cluster, data, capsys):
    out = data["tmp"] / "run-ok"
    assert _train(data, out, "--num-workers", "2", "--node-memory", "64G") == 0
    lines = _our_lines(capsys)
    assert any(line.startswith("distgnn train: memory estimate: ") for line in lines), lines
    assert (out / "run.json").is_file()
    # each worker reports its peak RSS and its remote degree requests (one per remote partition
    # touched by a minibatch: edge_norm sym is the default)
    from distgnn.metrics import read_metrics

    train = [r for r in read_metrics(out).records if r["type"] == "train"]
    assert {r["rank"] for r in train} == {0, 1}
    assert all(r["peak_rss_bytes"] > 100 * 2**20 for r in train)
    assert all(r["traffic"]["degree_requests"] > 0 for r in train)
