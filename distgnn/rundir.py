"""The run directory's marker and ownership: what makes a directory "a distgnn run".

``RUN_DIR/run.json`` (``{"format": "distgnn-run", "tool": "distgnn train", "version", "backend",
"created"}``) is written when a run starts, before anything else of the run. It is the run's
ownership marker: ``distgnn train --overwrite`` replaces a directory only if it carries this marker
and holds nothing but entries a run writes (``RUN_ENTRIES``); anything else is refused before
anything is deleted (``distgnn.atomic.check_replaceable``). Runs written before the marker existed
are recognised by ``config.yaml`` beside ``metrics.jsonl``; ``--resume`` adds the marker.
"""
from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path

from distgnn import __version__
from distgnn import atomic
from distgnn.errors import UserError
from distgnn.metrics import LEGACY_FILE, METRICS_DIR, read_metrics

RUN_MARKER = "run.json"
RUN_FORMAT = "distgnn-run"
# Every entry a run writes: marker, resolved config, metrics, checkpoints, Ray Train's storage
# and the Ray backend's markers (".ray-started", ".fault-injected-...") and fault evidence
# (".faults", distgnn.ray_runtime.faults), our hidden temporaries.
RUN_ENTRIES = {RUN_MARKER, "config.yaml", LEGACY_FILE, METRICS_DIR, "checkpoints", "ray", ".ray-started",
               ".faults"}
_RUN_HIDDEN = re.compile(r"^\.(fault-injected-.*|.+\.(tmp|old)-\d+(-\w+)?)$")

_has_marker = atomic.json_marker(RUN_MARKER, format=RUN_FORMAT)


def is_run(path: Path) -> bool:
    """A run of ours: ``run.json``, or (written before the marker existed) ``config.yaml`` together
    with ``metrics.jsonl``; ``check_out`` also requires every entry to be a run's own."""
    return _has_marker(path) or ((path / "config.yaml").is_file() and (path / LEGACY_FILE).is_file())


is_run.marker = RUN_MARKER  # type: ignore[attr-defined]  # named in the refusal message


def own_entry(name: str) -> bool:
    """True for the names a run directory's own files have."""
    return name in RUN_ENTRIES or bool(_RUN_HIDDEN.match(name))


def write_marker(run_dir: Path, backend: str) -> None:
    """Write ``run.json`` (atomically) unless the run already has one."""
    if not (run_dir / RUN_MARKER).is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_json(run_dir / RUN_MARKER, {
            "format": RUN_FORMAT, "tool": "distgnn train", "version": __version__, "backend": backend,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})


def holds_run(run_dir: Path) -> bool:
    """True if ``run_dir`` already holds a run (marker, committed checkpoint or metrics)."""
    from distgnn import checkpoint as ckpt  # torch: not before the CLI has set the thread count
    return ((run_dir / RUN_MARKER).exists() or bool(ckpt.committed(run_dir))
            or bool(read_metrics(run_dir).files))


def check_out(out: Path, overwrite: bool, resume: bool) -> bool:
    """Before any validation-dependent work: may ``distgnn train`` use ``--out``? True if an
    existing run of ours is to be replaced (the caller discards it after validation)."""
    if resume:
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} is a file; --resume needs a run directory")
        return False
    return atomic.check_replaceable(
        out, is_run, overwrite, what="'distgnn train'", own_entry=own_entry,
        exists_hint=f"{out} already holds a run; pass --resume to continue it, --overwrite to "
                    f"replace it, or choose another --out")


def sweep(out: Path) -> list[Path]:
    """Our stale temporaries beside the run directory and inside it and its checkpoints."""
    return atomic.sweep_many([out.parent, out, out / "checkpoints"])
