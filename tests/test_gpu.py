"""The GPU path: flags checked on every machine; the whole Ray path on CUDA where CUDA exists.

The CUDA tests need ``torch.cuda.is_available()`` *and* a DGL build with CUDA (the package
index's dgl wheel is CPU-only; README 'Installing on a GPU cluster'); elsewhere they are skipped
with a reason that says which of the two is missing.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distgnn.device import HostToDevice, ray_worker_device
from distgnn.errors import UserError
from tests.train_cfg import small_config
from tests.train_data import partitioned

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(600)


def _cuda_skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "needs CUDA: torch.cuda.is_available() is False on this machine"
    try:
        import dgl
        dgl.graph(([0], [1])).to("cuda")
    except Exception as exc:  # noqa: BLE001 - the reason is the finding
        return f"needs DGL with CUDA support: this dgl cannot use the GPU ({type(exc).__name__}: {exc})"
    return None


CUDA_SKIP = _cuda_skip_reason()
needs_cuda = pytest.mark.skipif(CUDA_SKIP is not None, reason=CUDA_SKIP or "")


def _train(*args: str, timeout: float = 540):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run([sys.executable, "-m", "distgnn.cli", "train", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=ROOT)


def test_worker_device_rules():
    assert ray_worker_device("auto", 0) == "cpu"
    assert ray_worker_device("cpu", 0) == "cpu"
    assert ray_worker_device("auto", 1) == "cuda"
    assert ray_worker_device("cuda", 0.5) == "cuda"
    with pytest.raises(UserError, match="--gpus-per-worker"):
        ray_worker_device("cpu", 1)
    with pytest.raises(UserError, match="no GPU"):
        ray_worker_device("cuda:0", 0)


@pytest.mark.parametrize("args, needle", [
    (["--gpus-per-worker", "1", "--set", "train.device=cpu"], "train.device is 'cpu' but --gpus-per-worker 1"),
    (["--set", "train.device=cuda"], "the Ray workers get no GPU"),
])
def test_contradicting_device_flags_are_one_error_line(tmp_path, args, needle):
    cfg = small_config(tmp_path, tmp_path / "no-partitions-needed")
    r = _train("--config", str(cfg), "--backend", "ray", "--out", str(tmp_path / "run"), *args, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert not (tmp_path / "run").exists()


def test_host_to_device_is_free_on_cpu():
    h2d = HostToDevice(torch.device("cpu"))
    t = torch.randn(5, 3)
    assert h2d.rows(t) is t and h2d.tensor(t) is t and h2d.blocks([1]) == [1]


@needs_cuda
def test_pinned_rows_reach_the_gpu():
    h2d = HostToDevice(torch.device("cuda"))
    for n in (10, 40, 20):  # the staging buffer grows and is reused
        t = torch.randn(n, 8)
        out = h2d.rows(t)
        assert out.is_cuda and torch.equal(out.cpu(), t)
    assert h2d._pinned.is_pinned()


@needs_cuda
def test_ray_training_on_cuda(tmp_path):
    parts = partitioned(tmp_path, num_parts=2, num_users=120, num_items=80)
    cfg = small_config(tmp_path, parts, train={"device": "auto", "eval_every": 1})
    r = _train("--config", str(cfg), "--backend", "ray", "--num-workers", "1", "--gpus-per-worker", "1",
               "--max-steps", "4", "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["run_dir"] == str(tmp_path / "run")
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "device: auto" in saved
    from distgnn.metrics import read_metrics

    records = read_metrics(tmp_path / "run").records
    assert any(r["type"] == "train" and r["loss"] == r["loss"] for r in records)  # finite, not NaN
