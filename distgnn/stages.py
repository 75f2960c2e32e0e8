"""Per-stage wall time and peak resident memory, for reports and benchmarks.

Peak RSS per stage is sampled by a background thread (``ru_maxrss`` only gives the lifetime peak
of the process, which hides which stage needed the memory). ``process_memory`` gives the
lifetime peak of the calling process: what each Ray process of a training job reports.
"""
from __future__ import annotations

import os
import resource
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Iterator

import psutil


@dataclass
class StageRecord:
    name: str
    seconds: float
    peak_rss_bytes: int


@dataclass
class StageTimer:
    """Collects one ``StageRecord`` per ``with timer.stage(name):`` block."""

    interval_s: float = 0.02
    records: list[StageRecord] = field(default_factory=list)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        proc = psutil.Process()
        peak = [proc.memory_info().rss]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(self.interval_s):
                peak[0] = max(peak[0], proc.memory_info().rss)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        start = time.perf_counter()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            peak[0] = max(peak[0], proc.memory_info().rss)
            self.records.append(StageRecord(name, time.perf_counter() - start, peak[0]))

    @property
    def total_seconds(self) -> float:
        return sum(r.seconds for r in self.records)

    @property
    def peak_rss_bytes(self) -> int:
        return max((r.peak_rss_bytes for r in self.records), default=0)

    def as_dicts(self) -> list[dict]:
        return [asdict(r) for r in self.records]


def process_memory() -> dict[str, int]:
    """The calling process's ``pid``, lifetime ``peak_rss_bytes``, current ``rss_bytes`` and the
    part of it that is shared pages (``rss_shared_bytes``: file-backed and shared memory).

    The peak is the kernel's high-water mark (``VmHWM`` in /proc/self/status), else
    ``ru_maxrss`` (KiB on Linux, bytes on macOS): no sampling thread, so nothing is missed between
    samples. Shared pages (object-store mappings, the PS rows in /dev/shm) are counted in every
    process that touches them, which is why a sum of processes' peaks is an upper bound."""
    out = {"pid": os.getpid()}
    fields: dict[str, int] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS", "RssFile", "RssShmem"):
                    fields[key] = int(value.split()[0]) * 1024  # "kB"
    except OSError:
        pass
    if "VmHWM" in fields:
        out["peak_rss_bytes"] = fields["VmHWM"]
    else:
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["peak_rss_bytes"] = int(maxrss if sys.platform == "darwin" else maxrss * 1024)
    if "VmRSS" in fields:
        out["rss_bytes"] = fields["VmRSS"]
        out["rss_shared_bytes"] = fields.get("RssFile", 0) + fields.get("RssShmem", 0)
    return out


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
