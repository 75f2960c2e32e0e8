"""Recovered faults, made loud: what the restarted chief writes as a ``fault`` record.

Ray Train restarts a failed worker group from scratch, so the new chief knows nothing of the
failure unless the old attempt left evidence. Four kinds of evidence, under ``RUN/.faults/``:

- ``layout.json``: written by the chief when an attempt starts: which node and pid each rank runs
  on, and each PS shard's and GraphShard's generation and node. The next chief compares it with
  what it finds (a shard with a new generation restarted; a node no longer alive was lost).
- ``notes/*.json``: one per process that saw the failure and could still write: a worker's
  exception (``StaleGenerationError`` from a fenced call or the health check, a ``RayCallError``
  from a dead shard, a collective's error when a peer vanished), or an injected fault. A process
  killed outright (SIGKILL, its node lost) writes none: then the layout speaks for it.
- ``progress/rank-NNNNN``: each rank's completed global steps when it began its latest step (a few
  bytes rewritten in place per step, no fsync): with the checkpoint rolled back to, how many
  steps are redone.

``compose`` turns them into the record ``{"type": "fault", "what", "detected_by", "rolled_back_to",
"steps_redone"}``; ``fault_line`` is the driver's one line for it. The directory's content is
consumed (notes removed) by the chief that writes the record, and cleared at a job's first start.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from distgnn import atomic

FAULTS_DIR = ".faults"


def faults_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / FAULTS_DIR


# --- notes ------------------------------------------------------------------------------------
def write_note(run_dir: str | Path, who: str, **fields: Any) -> None:
    """Leave a note for the next chief (atomic; never raises: the writer is failing already)."""
    try:
        d = faults_dir(run_dir) / "notes"
        d.mkdir(parents=True, exist_ok=True)
        atomic.write_json(d / f"{who}-{os.getpid()}-{time.time_ns()}.json",
                          {"who": who, "time": time.time(), **fields}, indent=None)
    except OSError:
        pass


def read_notes(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every note left since the last fault record, oldest first."""
    d = faults_dir(run_dir) / "notes"
    out = []
    for f in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            out.append(json.loads(f.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(out, key=lambda n: n.get("time", 0.0))


_CALLBACK = re.compile(r"^(Got the following error when running the callback: \w+: )+")


def error_note(run_dir: str | Path, rank: int, exc: BaseException, step: int) -> None:
    """A worker's failure, as it saw it: one line, without the wrappers torch's futures put around
    a collective's error ("Got the following error when running the callback: ...", a trailing
    "At: <traceback>")."""
    text = _CALLBACK.sub("", " ".join(str(exc).split())).split(" At: ")[0][:400]
    write_note(run_dir, f"rank{rank}", rank=rank, error=type(exc).__name__, message=text, step=step)


# --- progress -----------------------------------------------------------------------------------
class Progress:
    """This rank's completed global steps, rewritten in place (20 bytes, no fsync) every step:
    cheap enough for every step, and a killed process leaves the last value behind."""

    def __init__(self, run_dir: str | Path, rank: int):
        d = faults_dir(run_dir) / "progress"
        d.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(d / f"rank-{rank:05d}", os.O_RDWR | os.O_CREAT, 0o644)

    def set(self, global_step: int) -> None:
        os.pwrite(self._fd, f"{int(global_step):<20d}".encode(), 0)


def max_progress(run_dir: str | Path) -> int | None:
    d = faults_dir(run_dir) / "progress"
    steps = []
    for f in d.glob("rank-*") if d.is_dir() else []:
        try:
            steps.append(int(f.read_text().strip() or "nan"))
        except (OSError, ValueError):
            continue
    return max(steps) if steps else None


# --- layout -------------------------------------------------------------------------------------
def write_layout(run_dir: str | Path, layout: dict[str, Any]) -> None:
    faults_dir(run_dir).mkdir(parents=True, exist_ok=True)
    atomic.write_json(faults_dir(run_dir) / "layout.json", layout)


def read_layout(run_dir: str | Path) -> dict[str, Any] | None:
    try:
        return json.loads((faults_dir(run_dir) / "layout.json").read_text())
    except (OSError, ValueError):
        return None


def processes_per_node(layout: dict[str, Any], nodes) -> dict[str, int]:
    """How many of the job's processes (training ranks, PS shards, GraphShards) each of ``nodes``
    holds, counting only nodes that run a training rank: the node-loss test and the chaos bench
    kill the one holding the most, the worst single loss."""
    nodes = set(nodes)
    held: dict[str, int] = {}
    for r in layout["ranks"]:
        if r["node_id"] in nodes:
            held[r["node_id"]] = held.get(r["node_id"], 0) + 1
    for s in layout["ps"] + layout["graph"]:
        if s["node_id"] in held:
            held[s["node_id"]] += 1
    return held


def clear(run_dir: str | Path, keep_layout: bool = False) -> None:
    """Forget the evidence: notes and progress once a record consumed them (the chief, before any
    rank of the new attempt writes progress); the layout too at a job's first start."""
    d = faults_dir(run_dir)
    shutil.rmtree(d / "notes", ignore_errors=True)
    shutil.rmtree(d / "progress", ignore_errors=True)
    if not keep_layout:
        (d / "layout.json").unlink(missing_ok=True)


# --- the record ---------------------------------------------------------------------------------
def _short(node_id: str | None) -> str:
    return (node_id or "?")[:8]


def compose(before: dict[str, Any] | None, now: dict[str, Any], alive_nodes: set[str],
            notes: list[dict[str, Any]], rolled_back_to: str, ckpt_step: int,
            last_step: int | None) -> dict[str, Any]:
    """The ``fault`` record: ``before`` is the failed attempt's layout, ``now`` this attempt's."""
    what: list[str] = []
    before = before or {}
    lost = sorted({n for n in _nodes(before) if n not in alive_nodes})
    for node in lost:
        held = [f"rank {r['rank']}" for r in before.get("ranks", []) if r.get("node_id") == node]
        held += [f"{kind} {i}" for kind, key in (("PSShard", "ps"), ("GraphShard", "graph"))
                 for i, s in enumerate(before.get(key, [])) if s.get("node_id") == node]
        what.append(f"node {_short(node)} was lost" + (f" with {', '.join(held)}" if held else ""))
    for kind, key in (("PSShard", "ps"), ("GraphShard", "graph")):
        for i, (old, new) in enumerate(zip(before.get(key, []), now.get(key, []))):
            if int(new.get("generation", 0)) != int(old.get("generation", 0)):
                moved = (f", re-placed from node {_short(old.get('node_id'))} to {_short(new.get('node_id'))}"
                         if old.get("node_id") != new.get("node_id") else "")
                extra = ""
                if key == "ps":
                    extra = f", rows from {new.get('loaded_from') or 'its initial values'}"
                what.append(f"{kind} {i} restarted (generation {old.get('generation', 0)} -> "
                            f"{new.get('generation')}{moved}{extra})")
    injected = [n["what"] for n in notes if n.get("what")]
    what += injected
    errors = [n for n in notes if n.get("error")]
    if not what:
        what.append("a training worker process exited" + (f" ({errors[0]['error']} on rank {errors[0]['rank']})"
                                                          if errors else ""))
    detected = _detected_by(errors, bool(lost))
    steps_redone = max(0, int(last_step) - int(ckpt_step)) if last_step is not None else None
    return {"type": "fault", "what": "; ".join(what), "detected_by": detected,
            "rolled_back_to": rolled_back_to, "steps_redone": steps_redone}


def _nodes(layout: dict[str, Any]) -> set[str]:
    out = {r.get("node_id") for r in layout.get("ranks", [])}
    out |= {s.get("node_id") for key in ("ps", "graph") for s in layout.get(key, [])}
    return {n for n in out if n}


def _detected_by(errors: list[dict[str, Any]], node_lost: bool) -> str:
    """The first error that names the cause: a fenced call or health check, a dead shard's call;
    else a peer's collective error; else Ray Train itself (a process gone without a word)."""
    def rank_says(n: dict[str, Any]) -> str:
        return f"rank {n.get('rank')}: {n.get('error')}: {n.get('message', '')}"[:300]

    for n in errors:
        if n.get("error") == "StaleGenerationError":
            how = "health check" if "health check" in n.get("message", "") else "stale-generation call"
            return f"{how} ({rank_says(n)})"
    for n in errors:
        if n.get("error") == "RayCallError":
            return f"failed call ({rank_says(n)})"
    if errors:
        return f"worker error ({rank_says(errors[0])})"
    if node_lost:
        return "Ray: the node's raylet stopped answering; Ray Train restarted the worker group"
    return "Ray Train: a worker process exited; it restarted the worker group"


def fault_line(rec: dict[str, Any]) -> str:
    """The driver's one line for a ``fault`` record."""
    redone = rec.get("steps_redone")
    redone_s = f", {redone} steps redone" if redone is not None else ""
    return (f"fault recovered: {rec.get('what')}; detected by {rec.get('detected_by')}; rolled back to "
            f"{rec.get('rolled_back_to')}{redone_s}")
