"""``distgnn bench train``: both sides run and the ratio is printed, and a config whose loss the
plain-DGL reference does not train (the quality config: CCL, cosine, shared negatives) is refused
with one line instead of comparing unlike work."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train_data import partitioned

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return partitioned(tmp_path_factory.mktemp("bt"), num_parts=1, num_users=300, num_items=200)


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distgnn.cli", "bench", "train", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_both_sides_run_and_the_ratio_is_printed(parts):
    p = _bench("--config", "configs/bench_gat.yaml", "--partitions", str(parts), "--steps", "2",
               "--warmup", "1", "--rounds", "1", "--set", "train.batch_size=64", "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)
    assert out["ratio"] > 0 and len(out["round_ratios"]) == 1, out
    assert out["ours_settings"]["loss"] == "bpr" and out["reference_settings"], out


def test_a_loss_the_reference_does_not_train_is_one_line(parts):
    p = _bench("--config", "configs/gowalla_gat.yaml", "--partitions", str(parts), "--steps", "2")
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "configs/bench_gat.yaml" in lines[0] and "'ccl'" in lines[0], lines
    assert "Traceback" not in p.stderr
