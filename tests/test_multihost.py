"""``launch.multihost`` (``make test-multihost``, docs/architecture.md D33): the two-host run itself
needs root, ~10 minutes and the machine's network, so ``make test`` checks only its front door:
the help carries an example, and a machine that cannot build the hosts gets one line and exit 2."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch.multihost", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=env)


def test_help_has_an_example():
    p = _run("--help")
    assert p.returncode == 0, p.stderr
    assert "example:" in p.stdout and "launch.multihost --workdir" in p.stdout


def test_missing_tools_are_one_line_and_exit_2(tmp_path):
    # a PATH with only this Python's directory: no unshare / nsenter / ip (or not root)
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    p = _run("--workdir", str(tmp_path / "mh"), env=env)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("launch.multihost: error: cannot build the hosts here:"), lines
    assert "Traceback" not in p.stderr and not (tmp_path / "mh").exists()


def test_a_workdir_with_someone_elses_files_is_refused_and_left_alone(tmp_path):
    from launch.multihost import CannotRun, claim_workdir

    (tmp_path / "mine.txt").write_text("user data")
    with pytest.raises(CannotRun, match="did not write"):
        claim_workdir(tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "user data" and len(list(tmp_path.iterdir())) == 1
    new = tmp_path / "new"
    claim_workdir(new)
    claim_workdir(new)  # an earlier run's directory is ours
    assert (new / ".distgnn-multihost").is_file()


def test_too_few_interactions_is_one_line_and_exit_2(tmp_path):
    p = _run("--workdir", str(tmp_path / "mh"), "--interactions", "10")
    assert p.returncode == 2 and "--interactions 10 is too few" in p.stderr, p.stderr
    assert not (tmp_path / "mh").exists()
