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
    """stderr lines of the CLI itself (the test cluster also forwards Ray workers' output);
    a traceback anywhere fails the test."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("distgnn ")]


# --- the arithmetic -----------------------------------------------------------------------------
def _manifest(rows: list[int], edges: list[int], interactions: list[int]) -> dict:
    parts, start = [], 0
    for r, e, i in zip(rows, edges, interactions):
        parts.append({"gid_start": start, "item_gid_start": start + r // 2, "gid_end": start + r,
                      "num_edges": e, "num_train_interactions": i})
        start += r
    return {"parts": parts, "num_interactions": sum(interactions)}


def test_estimate_arithmetic():
    m = _manifest([1000, 3000], [10_000, 50_000], [5000, 25_000])
    node = estimate.NodeMemory("a", 64 * 2**30, 2)
    est = estimate.estimate(m, dim=8, optimizer="adam", num_workers=2, nodes=[node])
    row = 8 * 4 * 3 + 8  # weight + exp_avg + exp_avg_sq + step
    assert est.embedding_bytes == 4000 * row
    assert est.graph_bytes == 8 * (1001 + 3001) + 8 * 60_000
    assert est.worker_bytes == 32 * 30_000 + 2 * estimate.WORKER_RUNTIME_BYTES
    assert est.validation_bytes == 0 and est.fits
    assert est.per_node_bytes == est.total_bytes  # one node holds everything
    # adagrad keeps one slot and no step counter
    assert estimate.estimate(m, 8, "adagrad", 2, [node]).embedding_bytes == 4000 * 8 * 4 * 2
    # two nodes: each holds the larger partition at most, and the workers that fit its CPUs
    two = [estimate.NodeMemory("a", 2**40, 1), estimate.NodeMemory("b", 2**40, 1)]
    est2 = estimate.estimate(m, 8, "adam", 2, two)
    big_part = 3000 * row + 8 * 3001 + 8 * 50_000
    assert est2.parts_per_node == 1 and est2.workers_per_node == 1
    assert est2.per_node_bytes == big_part + 32 * 25_000 + estimate.WORKER_RUNTIME_BYTES
    # validation on rank 0 holds the whole graph and (layers + 1) embedding tables, twice
    est3 = estimate.estimate(m, 8, "adam", 2, [node], layers=2, validation=True)
    assert est3.validation_bytes == 48 * 2 * 30_000 + 24 * 4000 + 2 * 3 * 4000 * 8 * 4
    # the refusal names the estimate, the node's memory and the fixes
    small = estimate.estimate(m, 8, "adam", 2, [estimate.NodeMemory("a", 2**30, 2)])
    with pytest.raises(estimate.UserError, match=r"needs about 4\.0 GiB .* has 1\.0 GiB .*model\.dim"):
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
    """dim 2^23 on this graph's ~240 nodes needs ~25 GiB of PS rows per Adam row set: more than
    this machine (24 GB) has; refused before any actor starts or any file is written."""
    out = data["tmp"] / "run-dim"
    num_nodes = fmt.PartitionBook.from_manifest(fmt.load_manifest(data["parts"])).num_nodes
    dim = 2 ** 23
    assert num_nodes * dim * 12 > 24e9
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
                 "--num-workers", "2", "--out", str(out)]) == 2
    lines = _our_lines(capsys)
    assert len(lines) == 1, lines
    assert "graph shard 1 on node" in lines[0] and "cannot read" in lines[0] and "edges.parquet" in lines[0]
    assert not out.exists(), "the run directory was written before the shards were checked"


def test_a_job_that_fits_prints_its_estimate_and_trains(ray_cluster, data, capsys):
    out = data["tmp"] / "run-ok"
    assert _train(data, out, "--num-workers", "2") == 0
    lines = _our_lines(capsys)
    assert any(line.startswith("distgnn train: memory estimate: ") for line in lines), lines
    assert (out / "run.json").is_file()
