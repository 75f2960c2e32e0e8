"""Durable, all-or-nothing output: the one helper every writer of distgnn uses.

Why: a reader (or a restarted job) must never see a half-written file or directory, and a crash or
power loss right after a rename must not leave the renamed name pointing at unwritten blocks. So
every output is built under a hidden temporary name *beside* its target (same filesystem, so the
rename is atomic), its data is fsynced, it is renamed into place, and the parent directory is
fsynced so the rename itself is durable.

API
---
Files:
- ``atomic_file(path)``: context manager yielding a temporary path to write (with any library:
  ``torch.save``, ``pq.ParquetWriter``); on success it is fsynced, renamed to ``path`` and the
  directory fsynced; on error it is removed and ``path`` is untouched.
- ``write_bytes``, ``write_text``, ``write_json``, ``write_table`` (a pyarrow Table to Parquet):
  one-call forms of the above.

Directories:
- ``AtomicDir(out, overwrite)``: context manager yielding an empty hidden sibling
  ``.NAME.tmp-<pid>-<host>`` to build ``out`` in. On success every file and directory in it is
  fsynced, an empty directory ``out`` is replaced, an existing ``out`` (only with ``overwrite``;
  else ``FileExistsError``) is renamed aside to
  ``.NAME.old-<pid>-<host>``, the new tree renamed to ``out``, the parent fsynced, and only then the
  old tree removed. On error the temporary tree is removed and ``out`` is untouched. Whether an
  existing ``out`` may be replaced at all is ``check_replaceable``'s decision, made before the work.
- ``discard(path)``: remove an output of ours that is being replaced in place (a run directory):
  renamed aside first, so an interruption leaves a sweepable ``.old-`` sibling, not a half-deleted
  output under its real name.

Ownership and clean-up:
- ``check_replaceable(path, marker, overwrite, what=...)``: the one "is this ours?" rule of every
  ``--overwrite``. An absent path or an empty directory is free; an existing output is replaced
  only when it carries its writer's marker (``run.json`` for runs, ``gen.json`` for gen,
  ``manifest.json`` with ``"format": "distgnn-partitions"`` for partitions, distgnn metadata in a
  Parquet file for ``recommend``) and ``overwrite`` is set. Anything else is one ``UserError`` line
  naming the path and the fix, before anything is deleted.
- ``sweep_stale(parent)``: remove our own leftovers in ``parent`` (names from ``temp_name`` /
  ``old_name`` whose owner process is dead on this host); never anything else.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from distgnn.errors import UserError

_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40] or "host"
# ".NAME.tmp-<pid>-<host>" / ".NAME.old-<pid>-<host>"; the legacy form without "-<host>" (written
# by earlier versions) is recognised too.
_STALE = re.compile(r"^\..+\.(tmp|old)-(\d+)(?:-([A-Za-z0-9_]+))?$")
LEGACY_MIN_AGE_S = 3600.0  # an untagged leftover may belong to another host: only sweep old ones


def temp_name(target: Path) -> Path:
    """The hidden sibling a new ``target`` is built under (this process, this host)."""
    return target.parent / f".{target.name}.tmp-{os.getpid()}-{_HOST}"


def old_name(target: Path) -> Path:
    """The hidden sibling an output being replaced is moved to before it is removed."""
    return target.parent / f".{target.name}.old-{os.getpid()}-{_HOST}"


# --- fsync ------------------------------------------------------------------------------------
def fsync_path(path: Path) -> None:
    """fsync one file or directory (a directory's fsync makes renames/creations inside it durable)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (children before their directory)."""
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            fsync_path(Path(dirpath) / name)
        fsync_path(Path(dirpath))


# --- files ------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it, rename it to ``path`` and
    fsync the directory. On error the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def write_table(path: str | os.PathLike, table, **kwargs: Any) -> None:
    """A pyarrow Table to Parquet (``kwargs`` go to ``pyarrow.parquet.write_table``)."""
    import pyarrow.parquet as pq

    with atomic_file(path) as tmp:
        pq.write_table(table, tmp, **kwargs)


# --- directories --------------------------------------------------------------------------------
class AtomicDir:
    """Build directory ``out`` under a hidden temporary sibling; rename it into place on success.

    ``with AtomicDir(out, overwrite) as tmp: ...write into tmp...``. An interrupted or failed build
    leaves no directory under ``out``'s name (only a ``.tmp-`` sibling that ``sweep_stale`` removes
    once its process is gone). An existing ``out`` is replaced only with ``overwrite`` (callers
    decide that with ``check_replaceable`` before the work); it is renamed aside and removed only
    after the new tree is in place.
    """

    def __init__(self, out: str | os.PathLike, overwrite: bool = False):
        self.out = Path(out)
        self.overwrite = overwrite
        self.tmp = temp_name(self.out)

    def __enter__(self) -> Path:
        if self.tmp.exists():  # our own pid's leftover (pid reuse): not anyone else's
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        try:
            fsync_tree(self.tmp)
            old = None
            if self.out.exists() or self.out.is_symlink():
                if self.overwrite:
                    old = old_name(self.out)
                    os.rename(self.out, old)
                elif not (self.out.is_dir() and not any(self.out.iterdir())):
                    # (rename replaces an empty directory atomically; anything else is refused)
                    raise FileExistsError(f"{self.out} appeared while it was being built")
            os.rename(self.tmp, self.out)
            fsync_path(self.out.parent)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        if old is not None:
            _remove(old)


def discard(path: Path) -> None:
    """Remove ``path`` (already judged ours by ``check_replaceable``): renamed aside, then deleted."""
    if not (path.exists() or path.is_symlink()):
        return
    aside = old_name(path)
    os.rename(path, aside)
    fsync_path(path.parent)
    _remove(aside)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


# --- ownership ----------------------------------------------------------------------------------
def json_marker(name: str, **fields: Any) -> Callable[[Path], bool]:
    """An ownership test for a directory output: ``DIR/name`` is a JSON object holding ``fields``."""
    def ours(directory: Path) -> bool:
        try:
            obj = json.loads((directory / name).read_text())
        except (OSError, ValueError):
            return False
        return isinstance(obj, dict) and all(obj.get(k) == v for k, v in fields.items())
    ours.marker = name  # type: ignore[attr-defined]  # named in the refusal message
    return ours


def check_replaceable(path: str | os.PathLike, is_ours: Callable[[Path], bool], overwrite: bool, *,
                      what: str, kind: str = "dir", option: str = "--out",
                      own_entry: Callable[[str], bool] | None = None,
                      exists_hint: str | None = None) -> bool:
    """The one rule of every ``--overwrite``: may ``path`` be (re)written? True if it exists and
    will be replaced, False if it is free; else ``UserError`` (nothing touched).

    ``is_ours(path)`` recognises the writer's own marker (``json_marker(...)`` for a directory, a
    metadata check for a file); ``kind`` is ``"dir"`` or ``"file"``; ``own_entry(name)``, if given,
    must accept every entry of the directory (gen refuses even its own output once a user added a
    file to it); ``what`` names the writer in messages (e.g. ``"'distgnn train'"``);
    ``exists_hint`` replaces the default fix when ``path`` is ours but ``overwrite`` is not set.
    """
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return False
    marker = getattr(is_ours, "marker", None)
    if kind == "dir":
        if not path.is_dir():
            raise UserError(f"{option} {path} is an existing file; choose a directory path")
        entries = sorted(p.name for p in path.iterdir())
        if not entries:
            return False
        if not is_ours(path):
            raise UserError(f"{option} {path} holds files {what} did not write"
                            + (f" (it has no {marker})" if marker else "") + f"; nothing was changed: "
                            f"choose a new or empty {option} (--overwrite only replaces {what}'s own output)")
        foreign = [e for e in entries if own_entry is not None and not own_entry(e)]
        if foreign:
            raise UserError(f"{option} {path} holds files {what} did not write (e.g. {foreign[0]!r}), so "
                            f"it will not be replaced; move them away or choose another {option}")
    else:
        if path.is_dir():
            raise UserError(f"{option} {path} is a directory; give a file path such as {path}/out.parquet")
        if not is_ours(path):
            raise UserError(f"{path} exists and was not written by {what}; nothing was changed: choose "
                            f"another {option} (--overwrite only replaces {what}'s own output)")
    if not overwrite:
        raise UserError(exists_hint or f"{option} {path} already holds output of {what}; pass "
                                       f"--overwrite to replace it, or choose another {option}")
    return True


# --- stale leftovers ----------------------------------------------------------------------------
def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def sweep_stale(parent: str | os.PathLike, spare: Callable[[Path], bool] | None = None) -> list[Path]:
    """Remove our own stale temporaries in ``parent`` and return what was removed.

    Ours: hidden ``.NAME.tmp-<pid>-<host>`` / ``.NAME.old-<pid>-<host>`` entries (``temp_name``,
    ``old_name``) of this host whose process is gone. Entries of another host are left alone (its
    pids mean nothing here; that host sweeps them). Untagged legacy ``.NAME.tmp-<pid>`` entries are
    removed only when their pid is dead and they are over an hour old, since they could be another
    host's. ``spare(path)`` keeps an entry regardless (resumable stage outputs). Nothing else in
    ``parent`` is ever touched."""
    parent = Path(parent)
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for entry in parent.iterdir():
        m = _STALE.match(entry.name)
        if not m or (spare is not None and spare(entry)):
            continue
        pid, host = int(m.group(2)), m.group(3)
        if host is not None and host != _HOST:
            continue
        if pid == os.getpid() or pid_alive(pid):
            continue
        if host is None:
            with contextlib.suppress(OSError):
                if time.time() - entry.lstat().st_mtime < LEGACY_MIN_AGE_S:
                    continue
        _remove(entry)
        removed.append(entry)
    return removed


def sweep_many(parents: Iterable[str | os.PathLike]) -> list[Path]:
    """``sweep_stale`` over several directories (an output's parent and the output itself)."""
    return [p for parent in parents for p in sweep_stale(parent)]


# --- shared-memory leftovers ---------------------------------------------------------------------
SHM_PREFIX = "distgnn-"
_SHM_OWNER = re.compile(r"-(\d+)\.[A-Za-z_]+$")
SHM_MIN_AGE_S = 120.0


def sweep_shm(root: str | os.PathLike = "/dev/shm", min_age_s: float = SHM_MIN_AGE_S) -> list[Path]:
    """Remove this node's stale parameter-server shared-memory directories and return them.

    A job's PS shards keep their rows in ``<root>/distgnn-<id>/ps<part>-<pid>.<name>`` on each node
    (``ray_runtime.ps``); the driver removes them at the end, but a driver killed with SIGKILL, or
    a node whose shards were killed, leaves them behind, holding RAM (tmpfs). Ours are recognised by
    the prefix; one is stale when it is older than ``min_age_s`` (a starting job's directory may
    still be empty) and no process named in its files (the shards that wrote them) is alive on
    this node. Called by the driver and by every PS shard at start, so every node is swept."""
    root = Path(root)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    now = time.time()
    for d in root.iterdir():
        if not d.name.startswith(SHM_PREFIX) or not d.is_dir():
            continue
        try:
            if now - d.stat().st_mtime < min_age_s:
                continue
            pids = {int(m.group(1)) for f in d.iterdir() if (m := _SHM_OWNER.search(f.name))}
        except OSError:
            continue
        if any(pid == os.getpid() or pid_alive(pid) for pid in pids):
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed
