"""distgnn.atomic: atomic files and directories, the "is this ours?" rule, the stale sweep."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distgnn import atomic
from distgnn.errors import UserError


def _dead_pid() -> int:
    """A pid that belonged to a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_write_helpers_leave_only_the_target(tmp_path):
    atomic.write_text(tmp_path / "a.txt", "hello")
    atomic.write_json(tmp_path / "b.json", {"x": 1})
    atomic.write_table(tmp_path / "c.parquet", pa.table({"v": [1, 2, 3]}))
    atomic.write_text(tmp_path / "a.txt", "again")  # replaces
    assert (tmp_path / "a.txt").read_text() == "again"
    assert json.loads((tmp_path / "b.json").read_text()) == {"x": 1}
    assert pq.read_table(tmp_path / "c.parquet").column("v").to_pylist() == [1, 2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json", "c.parquet"]


def test_failed_file_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "t.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_file(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["t.txt"]


def test_atomic_dir_builds_replaces_and_cleans_up(tmp_path):
    out = tmp_path / "out"
    with atomic.AtomicDir(out) as d:
        assert d.name.startswith(".out.tmp-") and d.parent == tmp_path
        (d / "f").write_text("1")
    assert (out / "f").read_text() == "1"
    with pytest.raises(RuntimeError):  # a failed rebuild leaves the old tree and no temporary
        with atomic.AtomicDir(out, overwrite=True) as d:
            (d / "f").write_text("2")
            raise RuntimeError("crash")
    assert (out / "f").read_text() == "1"
    with pytest.raises(FileExistsError):  # without overwrite an existing tree is never replaced
        with atomic.AtomicDir(out) as d:
            (d / "f").write_text("2")
    assert (out / "f").read_text() == "1"
    with atomic.AtomicDir(out, overwrite=True) as d:
        (d / "g").write_text("3")
    assert sorted(p.name for p in out.iterdir()) == ["g"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no .tmp- or .old- sibling left


def test_check_replaceable_dir(tmp_path):
    ours = atomic.json_marker("m.json", format="x")
    out = tmp_path / "d"
    assert atomic.check_replaceable(out, ours, False, what="'t'") is False  # absent
    out.mkdir()
    assert atomic.check_replaceable(out, ours, True, what="'t'") is False  # empty
    (out / "data.csv").write_text("user data")
    for overwrite in (False, True):
        with pytest.raises(UserError, match="did not write.*m.json") as err:
            atomic.check_replaceable(out, ours, overwrite, what="'t'")
        assert "\n" not in str(err.value) and str(out) in str(err.value)
    (out / "m.json").write_text('{"format": "y"}')  # a marker of another writer is not ours
    with pytest.raises(UserError, match="did not write"):
        atomic.check_replaceable(out, ours, True, what="'t'")
    (out / "m.json").write_text('{"format": "x"}')
    assert atomic.check_replaceable(out, ours, True, what="'t'") is True
    with pytest.raises(UserError, match="data.csv"):  # ours, but holding a foreign entry
        atomic.check_replaceable(out, ours, True, what="'t'", own_entry={"m.json"}.__contains__)
    with pytest.raises(UserError, match="--overwrite"):
        atomic.check_replaceable(out, ours, False, what="'t'")
    assert (out / "data.csv").read_text() == "user data"


def test_check_replaceable_file(tmp_path):
    f = tmp_path / "f.txt"
    f.write_text("mine")
    with pytest.raises(UserError, match="not written by"):
        atomic.check_replaceable(f, lambda p: False, True, what="'t'", kind="file")
    with pytest.raises(UserError, match="--overwrite"):
        atomic.check_replaceable(f, lambda p: True, False, what="'t'", kind="file")
    assert atomic.check_replaceable(f, lambda p: True, True, what="'t'", kind="file") is True
    with pytest.raises(UserError, match="is a directory"):
        atomic.check_replaceable(tmp_path, lambda p: True, True, what="'t'", kind="file")


def test_sweep_removes_only_our_dead_leftovers(tmp_path):
    dead, host = _dead_pid(), atomic._HOST
    stale_dir = tmp_path / f".out.tmp-{dead}-{host}"
    stale_dir.mkdir()
    (stale_dir / "x").write_text("x")
    stale_old = tmp_path / f".out.old-{dead}-{host}"
    stale_old.write_text("x")
    alive = tmp_path / f".out.tmp-{os.getpid()}-{host}"  # this process: in use
    alive.mkdir()
    other_host = tmp_path / f".out.tmp-{dead}-otherhost"  # its pid means nothing here
    other_host.mkdir()
    legacy_new = tmp_path / f".out.tmp-{dead}"  # untagged, recent: could be another host's
    legacy_new.mkdir()
    legacy_old = tmp_path / f".cfg.yaml.tmp-{dead}"
    legacy_old.write_text("x")
    old = time.time() - 2 * atomic.LEGACY_MIN_AGE_S
    os.utime(legacy_old, (old, old))
    spared = tmp_path / f".stage.tmp-{dead}-{host}"
    spared.mkdir()
    user = [tmp_path / "out.tmp-1", tmp_path / ".hidden", tmp_path / f"data.tmp-{dead}",
            tmp_path / f".notes.tmp-{dead}-{host}.txt"]
    for u in user:
        u.write_text("user")
    removed = atomic.sweep_stale(tmp_path, spare=lambda p: p.name.startswith(".stage."))
    assert sorted(removed) == sorted([stale_dir, stale_old, legacy_old])
    for kept in [alive, other_host, legacy_new, spared, *user]:
        assert kept.exists(), kept
    assert atomic.sweep_stale(tmp_path / "missing") == []


def test_sweep_shm_removes_only_stale_dirs_of_dead_shards(tmp_path):
    import os
    import subprocess
    import time

    from distgnn.atomic import sweep_shm

    p = subprocess.Popen(["true"])  # a pid that has surely exited
    p.wait()
    old = time.time() - 600

    def make(name: str, pid: int, age: float | None = old):
        d = tmp_path / name
        d.mkdir()
        for f in ("weight", "exp_avg", "lock"):
            (d / f"ps0-{pid}.{f}").write_bytes(b"x")
        if age is not None:
            os.utime(d, (age, age))
        return d

    stale = make("distgnn-aaaa", p.pid)
    live = make("distgnn-bbbb", os.getpid())
    young = make("distgnn-cccc", p.pid, age=None)
    other = make("not-ours", p.pid)
    assert sweep_shm(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and young.exists() and other.exists()
