"""`distgnn bench overhead`: the throughput arithmetic and its input checks (the run itself is a
benchmark, not a test)."""
from __future__ import annotations

import pytest

from distgnn.bench.overhead import steady_edges_per_s
from distgnn.cli import main
from distgnn.metrics import append


def _write(run, records):
    run.mkdir()
    for r in records:
        append(run, 0, r)


def test_throughput_skips_warmup_and_weights_by_time(tmp_path):
    _write(tmp_path / "r", [
        {"type": "train", "edges": 100, "edges_per_s": 1.0},      # warm-up: excluded
        {"type": "checkpoint", "epoch": 1},
        {"type": "train", "edges": 1000, "edges_per_s": 100.0},   # 10 s
        {"type": "train", "edges": 3000, "edges_per_s": 300.0},   # 10 s
    ])
    eps, used = steady_edges_per_s(tmp_path / "r")
    assert used == 2 and eps == pytest.approx(4000 / 20)


def test_too_few_steps_is_one_line(tmp_path, capsys):
    assert main(["bench", "overhead", "--config", "configs/demo.yaml", "--train", str(tmp_path),
                 "--steps", "10", "--log-every", "10"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--steps 10" in err[0]
