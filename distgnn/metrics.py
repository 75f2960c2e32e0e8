"""A run's metrics: one JSON-lines file per rank, and the one reader that merges them.

```
RUN_DIR/metrics/rank-00000.jsonl    records of rank 0 (the local backend; the Ray chief)
RUN_DIR/metrics/rank-00001.jsonl    records of Ray Train world rank 1, ...
RUN_DIR/metrics/driver.jsonl        records of the Ray job's driver (``processes``: per-process
                                    peak RSS, written once the workers have finished)
RUN_DIR/metrics.jsonl               older runs: one file shared by every rank (still read)
```
Why one file per rank: each file has exactly one writer, so appends never interleave, which
concurrent appends to one shared file on NFS do not guarantee. Records are written as one
``write`` of one line each.

``read_metrics(run_dir)`` is the only reader (driver progress, ``bench overhead``, the "already
holds a run" guards, ``plot``, ``bench scaling``): it returns every complete, valid record, the
legacy file's first, then rank 0's, rank 1's, ..., then the driver's, each in file order, so the records of one rank (and the chief's
``valid``/``checkpoint`` records) keep their order and a re-read only ever adds records. A line
that is not valid JSON, or a last line still being written, is skipped and counted in
``torn_lines``, never fatal.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METRICS_DIR = "metrics"
LEGACY_FILE = "metrics.jsonl"
DRIVER_FILE = "driver.jsonl"
_RANK_FILE = re.compile(r"^rank-(\d{5,})\.jsonl$")


def rank_path(run_dir: str | Path, rank: int) -> Path:
    """The file rank ``rank`` appends to."""
    return Path(run_dir) / METRICS_DIR / f"rank-{rank:05d}.jsonl"


def driver_path(run_dir: str | Path) -> Path:
    """The file the Ray job's driver appends to (its own: the workers' files keep one writer)."""
    return Path(run_dir) / METRICS_DIR / DRIVER_FILE


def append(run_dir: str | Path, rank: int | None, record: dict[str, Any]) -> None:
    """Append one record to rank ``rank``'s file, or the driver's with ``rank=None`` (one line,
    one write)."""
    path = driver_path(run_dir) if rank is None else rank_path(run_dir, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


@dataclass
class MetricsRead:
    """What ``read_metrics`` found: records of every rank, and how many lines were unreadable."""

    records: list[dict[str, Any]] = field(default_factory=list)
    torn_lines: int = 0
    files: list[Path] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)  # records of each of ``files``, in that order

    def by_file(self) -> list[tuple[Path, list[dict[str, Any]]]]:
        """``(file, its records)`` in read order: a reader that shows records as they come keeps
        one count per file, since a rank's file only ever grows but the merged list is not
        append-only (rank 0's new records come before rank 1's old ones)."""
        out, start = [], 0
        for path, n in zip(self.files, self.counts):
            out.append((path, self.records[start:start + n]))
            start += n
        return out

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("type") == kind]


def metric_files(run_dir: str | Path) -> list[Path]:
    """The run's metrics files: the legacy single file first, then the rank files by rank, then
    the driver's."""
    run_dir = Path(run_dir)
    files = [run_dir / LEGACY_FILE] if (run_dir / LEGACY_FILE).is_file() else []
    d = run_dir / METRICS_DIR
    if d.is_dir():
        ranked = [(int(m.group(1)), p) for p in d.iterdir() if (m := _RANK_FILE.match(p.name))]
        files += [p for _, p in sorted(ranked)]
        if (d / DRIVER_FILE).is_file():
            files.append(d / DRIVER_FILE)
    return files


def read_metrics(run_dir: str | Path) -> MetricsRead:
    """Every complete record of the run (all ranks merged, see the module doc)."""
    out = MetricsRead()
    for path in metric_files(run_dir):
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # removed between listing and reading
            continue
        out.files.append(path)
        before = len(out.records)
        lines = data.split(b"\n")
        if lines[-1]:  # no newline at the end: a record being written (or cut off by a crash)
            out.torn_lines += 1
        for line in lines[:-1]:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                out.torn_lines += 1
                continue
            if isinstance(rec, dict):
                out.records.append(rec)
            else:
                out.torn_lines += 1
        out.counts.append(len(out.records) - before)
    return out
