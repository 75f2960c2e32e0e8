"""The partitioner's scratch workspace: memory-mapped stage outputs, resumable stages, cleanup.

Out-of-core partitioning keeps its intermediate arrays (id maps, bucketed interactions, the
user-side and item-side CSR, the assignment) as plain ``.npy`` files in one scratch directory,
``.<out-name>.partition-scratch`` beside ``--out`` (or inside ``--tmp-dir``). Its rules:

* A stage's outputs become *checkpointed* when the stage commits: a small JSON marker
  (``stage-<name>.json``) lists every file with its size and sha256, plus the run's input
  fingerprint. ``--resume`` reuses a committed stage only if the fingerprint and every checksum
  match; anything else is recomputed.
* On failure, everything that is not a committed stage output is removed, and the error line names
  the directory, so a ``--resume`` rerun can pick up after the last completed stage.
* On success the whole directory is removed.
* ``DISTGNN_FAIL_WRITE_AFTER_BYTES=N`` (a test hook) makes every scratch or output write raise
  ``ENOSPC`` once N bytes have been written, so a full disk is testable without filling one.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from distgnn import format as fmt
from distgnn.atomic import pid_alive
from distgnn.errors import UserError

SCRATCH_MARKER = "scratch.json"
FAIL_ENV = "DISTGNN_FAIL_WRITE_AFTER_BYTES"
_written = [0]


def charge_write(nbytes: int, what: str) -> None:
    """Account ``nbytes`` about to be written; raise ENOSPC when the test hook's budget is spent."""
    limit = os.environ.get(FAIL_ENV)
    _written[0] += int(nbytes)
    if limit is not None and _written[0] > int(limit):
        raise OSError(errno.ENOSPC, f"No space left on device (injected by {FAIL_ENV})", what)


def reset_write_budget() -> None:
    _written[0] = 0


def disk_error(exc: OSError, where: Path) -> UserError:
    """A full disk or quota as one line naming the place and the fix."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(f"no space left on the device holding {where} ({exc.filename or where}); "
                         f"free space, or point --out/--tmp-dir at a larger disk")
    return UserError(f"cannot write under {where}: {exc.strerror or exc}; check the path and permissions")


class Scratch:
    """One run's scratch directory (see the module docstring)."""

    def __init__(self, root: Path, fingerprint: str, resume: bool):
        self.root = root
        self.fingerprint = fingerprint
        marker = root / SCRATCH_MARKER
        if root.exists():
            if not marker.is_file():
                raise UserError(f"scratch directory {root} exists but was not made by distgnn; "
                                f"remove it yourself or pass another --tmp-dir")
            owner = _owner_pid(marker)
            if owner and owner != os.getpid() and pid_alive(owner):
                raise UserError(f"another 'distgnn partition create' (pid {owner}) is using {root}; wait "
                                f"for it, or write to another --out")
            if not resume:
                shutil.rmtree(root)  # ours (marker checked) and its owner is gone: leftovers
        root.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"made_by": "distgnn partition create", "pid": os.getpid()}))

    def path(self, name: str) -> Path:
        return self.root / name

    # ---- arrays -------------------------------------------------------------------------
    def save(self, name: str, arr: np.ndarray) -> Path:
        path = self.path(name)
        charge_write(arr.nbytes, str(path))
        np.save(path, arr, allow_pickle=False)
        return path

    def load(self, name: str, mmap: bool = False) -> np.ndarray:
        return np.load(self.path(name), mmap_mode="r" if mmap else None, allow_pickle=False)

    # ---- stages -------------------------------------------------------------------------
    def _stage_marker(self, stage: str) -> Path:
        return self.path(f"stage-{stage}.json")

    def commit(self, stage: str, files: list[str], info: dict[str, Any]) -> None:
        """Checkpoint a completed stage: its files' sizes and sha256, written atomically."""
        entries = {}
        for name in files:
            p = self.path(name)
            entries[name] = {"bytes": p.stat().st_size, "sha256": fmt.sha256_file(p)}
        tmp = self._stage_marker(stage).with_suffix(".tmp")
        tmp.write_text(json.dumps({"fingerprint": self.fingerprint, "files": entries, "info": info}))
        os.replace(tmp, self._stage_marker(stage))

    def completed(self, stage: str) -> dict[str, Any] | None:
        """The stage's ``info`` if it was committed for this input and its files are intact."""
        marker = self._stage_marker(stage)
        if not marker.is_file():
            return None
        try:
            data = json.loads(marker.read_text())
        except ValueError:
            return None
        if data.get("fingerprint") != self.fingerprint:
            return None
        for name, meta in data["files"].items():
            p = self.path(name)
            if not p.is_file() or p.stat().st_size != meta["bytes"] or fmt.sha256_file(p) != meta["sha256"]:
                return None
        return data["info"]

    def committed_files(self) -> set[str]:
        keep = {SCRATCH_MARKER}
        for marker in self.root.glob("stage-*.json"):
            try:
                data = json.loads(marker.read_text())
            except ValueError:
                continue
            keep.add(marker.name)
            keep.update(data.get("files", {}))
        return keep

    def keep_only_committed(self) -> bool:
        """After a failure: remove everything but committed stage outputs. True if any remain."""
        if not self.root.exists():
            return False
        keep = self.committed_files()
        for p in self.root.iterdir():
            if p.name not in keep:
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
        if keep == {SCRATCH_MARKER}:
            shutil.rmtree(self.root, ignore_errors=True)
            return False
        return True

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _owner_pid(marker: Path) -> int | None:
    try:
        return int(json.loads(marker.read_text()).get("pid"))
    except (OSError, ValueError, TypeError):
        return None


def free_bytes(path: Path) -> int:
    p = path
    while not p.exists():
        p = p.parent
    st = os.statvfs(p)
    return st.f_bavail * st.f_frsize


def iter_row_chunks(indptr: np.ndarray, max_entries: int) -> Iterator[tuple[int, int]]:
    """Row ranges ``[r0, r1)`` of a CSR whose entries total at most ``max_entries`` (a row longer
    than that is its own chunk), found by binary search on ``indptr``."""
    n = len(indptr) - 1
    r0 = 0
    while r0 < n:
        target = int(indptr[r0]) + max_entries
        r1 = int(np.searchsorted(indptr, target, side="right")) - 1
        r1 = max(r1, r0 + 1)
        r1 = min(r1, n)
        yield r0, r1
        r0 = r1
