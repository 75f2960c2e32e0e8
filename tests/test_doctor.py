"""``distgnn doctor``: real checks in a subprocess (a broken install is made by shadowing DGL)."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _doctor(*args: str, pythonpath: str | None = None, timeout: float = 240):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, str(ROOT), env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", "distgnn.cli", "doctor", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=ROOT)


def test_doctor_reports_a_working_install():
    import dgl
    import torch

    r = _doctor("--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    facts = out["facts"]
    assert facts["torch"] == torch.__version__ and facts["dgl"] == dgl.__version__
    assert facts["dgl_cpu"] == "ok" and facts["can_train"] is True
    assert facts["ray_cpus"] >= 1 and facts["ray_nodes"] >= 1
    assert "shm_free_gib" in facts
    if not torch.cuda.is_available():  # CPU-only is a warning, not a failure
        assert facts["dgl_gpu"].startswith("no")
        assert any(p["severity"] == "warning" and "CUDA" in p["problem"] for p in out["problems"])
    assert all(p["severity"] != "broken" for p in out["problems"])


def test_doctor_fails_on_a_broken_dgl(tmp_path):
    fake = tmp_path / "dgl"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('libdgl.so: cannot open shared object file')\n")
    r = _doctor("--skip-ray", pythonpath=str(tmp_path))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "broken: DGL does not import" in r.stdout and "advice:" in r.stdout
    assert "Traceback" not in r.stderr


def test_doctor_fails_on_an_unreachable_cluster():
    r = _doctor("--address", "127.0.0.1:9", timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "broken: Ray:" in r.stdout and "check --address" in r.stdout
