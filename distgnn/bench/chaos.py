"""``distgnn bench chaos``: train on Ray, inject faults at seeded random times, check that nothing is lost.

One command (issue #11, part 2; docs/architecture.md D32)::

    distgnn bench chaos --config configs/chaos.yaml --faults 10 --seed 0 --json --out DIR

**What runs.** A multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a head
without CPUs, where the drivers connect, and one raylet per training worker plus a spare, one
logical CPU each, the GCS checking raylets every second), then a sequence of short training jobs,
each ``distgnn train --backend ray --address ADDR`` in a child process with a deadline:

1. a **fault-free reference** job, keeping every checkpoint;
2. one job per fault, each on a fresh run directory, with exactly one fault injected.

One fault per job (not several in one job) so that each fault has its own detection, recovery time,
redone steps and final metrics, and a fault cannot hide behind another's rollback. Each job trains
``train.epochs`` epochs (default 2) of the small graph with a checkpoint every
``train.checkpoint_every_steps`` steps (default 6).

**The faults** (``FAULT_TYPES``); the schedule (``schedule``) is drawn from ``--seed``: with
``--faults`` at least the number of types every type occurs once, the rest are drawn uniformly, and
the order is shuffled; each fault gets a random global step (and target) at which it strikes:

- ``kill_trainer``: SIGKILL a Ray Train worker (a random rank);
- ``kill_ps``: SIGKILL a parameter-server shard (a random partition's); Ray restarts it;
- ``kill_graph_shard``: SIGKILL a GraphShard (a random partition's); Ray restarts it;
- ``kill_node``: ``Cluster.remove_node(allow_graceful=False)`` of the worker node holding the most
  of the job (every process of it SIGKILLed, raylet included), as tests/test_node_loss.py; the
  training workers are paused (SIGSTOP) around it so the loss lands at the chosen step; a
  replacement node is added after the job (as an autoscaler would);
- ``pause``: SIGSTOP a PS shard or a training worker (drawn) for longer than its deadline: the
  bench's jobs run with small ``runtime.*`` deadlines (``DEADLINES``), so a peer's call or barrier
  misses its deadline; once a worker has failed with that (its note in ``RUN/.faults/notes``), the
  paused process is SIGKILLed, not resumed: it never learnt that it was given up on, and a resumed
  shard (same generation, so not fenced) would apply the failed attempt's queued pushes after the
  rollback reloaded its rows;
- ``enospc``: the checkpoint writer's test hook ``DISTGNN_TEST_ENOSPC_AT_CHECKPOINT=STEP``
  (``distgnn.checkpoint``): the first attempt to write checkpoint ``step-STEP`` raises
  ``OSError(ENOSPC)`` after the PS shards wrote their files into its temporary directory. The
  writer removes the directory (nothing is committed), the chief fails, Ray Train restarts the
  group from the previous checkpoint and the steps since are redone, then the checkpoint is
  written again. The bench checks that no uncommitted directory is left.

The bench writes a note for every fault it injects (``faults.write_note``), so the restarted
chief's ``fault`` record names it.

**What is checked, per fault**: survived (exit 0, final checkpoint at the last step, within the
deadline; a job killed at its deadline is a *hang*), how the fault was detected (the ``fault``
record's ``detected_by``, classified: deadline, health check, stale generation, error, Ray Train
restart; or none needed when Ray restarted a GraphShard and retried its calls, with no rollback),
time to recover (injection to the first ``train`` record at or past the step where it struck, seen
after the fault record), steps redone (the ``fault`` records' ``steps_redone``), the final
Recall@K (``distgnn evaluate``) against the reference's, and **lost updates**, checked
independently of the code under test: every committed checkpoint of the faulty run is read with
pyarrow (``compare_checkpoints``, format in docs/format.md) and every embedding row's optimizer
step count and state compared with the reference's checkpoint of the same step (with
``embedding.ordered_pushes`` a run is reproducible: the reference is the fault-free replay from the
same initial state and seeds). ``lost_updates`` sums the step counts a row has fewer than the
reference, ``extra_updates`` those it has more, ``mismatched_rows`` counts rows whose values differ
beyond ``RTOL``/``ATOL``.

``--json`` prints one object::

    {"format": "distgnn-bench-chaos", "version": 1, "command", "started", "finished", "seconds",
     "seed", "faults": N, "survived": int, "hangs": int, "lost_updates": int, "extra_updates": int,
     "mismatched_rows": int, "recall_delta": max |recall - reference| (null if one is missing),
     "reference": {"recall", "seconds", "checkpoints"}, "ok": bool,
     "settings": {"workers", "nodes", "epochs", "steps", "checkpoint_steps", "deadlines", ...},
     "machine": {"logical_cpus", "memory_bytes", "loadavg_start", "loadavg_end"},
     "per_fault": [{"index", "type", "target", "planned_step", "at_step", "survived", "hang",
                    "returncode", "seconds", "detected": bool, "detection", "detected_by",
                    "first_error", "fault_records", "what", "rolled_back_to", "steps_redone", "detect_s",
                    "recover_s",
                    "recall", "recall_delta", "checkpoints_compared", "lost_updates",
                    "extra_updates", "mismatched_rows", "max_abs_diff", "uncommitted", "ok",
                    "problem", "log"}]}

The exit code is 0 when every fault was survived with no hang, no lost, extra or mismatched update
and the Recall@K within ``RECALL_TOLERANCE`` of the reference; 1 otherwise.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import random
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from distgnn.errors import UserError

FORMAT = "distgnn-bench-chaos"
VERSION = 1
FAULT_TYPES = ("kill_trainer", "kill_ps", "kill_graph_shard", "kill_node", "pause", "enospc")
RECALL_TOLERANCE = 0.005
RTOL, ATOL = 1e-5, 1e-6  # float tolerance of the row comparison (reproducible runs: exact in practice)
# Small deadlines, so that a paused process is found by a deadline in seconds, yet large enough for
# a 1-CPU node of a loaded 2-core machine to start an actor (import torch) or restart a shard.
DEADLINES = {"call_timeout_s": 30.0, "barrier_timeout_s": 30.0, "stall_timeout_s": 120.0}
MAX_FAILURES = 4  # Ray Train restarts per job: one fault may cost two (a restart meeting a restarting shard)

# The bench's training settings over the config's (or the built-in BASE): reproducible pushes, a
# record per step (the injector watches them), no validation, every checkpoint kept (each is
# compared with the reference's), one thread per worker.
FORCED = {"embedding": {"ordered_pushes": True, "async_pushes": 0},
          "train": {"log_every": 1, "eval_every": 0, "progress": False, "keep_checkpoints": 1000,
                    "threads": 1, "device": "cpu"}}
BASE: dict[str, Any] = {
    "data": {"partitions": "generated"},
    "model": {"dim": 16, "hidden": 16, "layers": 2, "heads": 2},
    "embedding": {"optimizer": "adam", "lr": 0.05},
    "train": {"epochs": 2, "batch_size": 128, "fanouts": [5, 5], "num_negatives": 2,
              "checkpoint_every_steps": 6},
    "eval": {"k": 20},
}


# --- the schedule ---------------------------------------------------------------------------------
@dataclass
class Fault:
    """One planned fault: its type, the global step at which it strikes (``enospc``: the step of the
    checkpoint whose write fails) and its target (a rank or partition; ``pause``: ``"ps"`` or
    ``"trainer"`` and which one)."""

    index: int
    type: str
    step: int
    target: int = 0
    pause_what: str | None = None

    def describe(self) -> str:
        if self.type == "kill_trainer":
            return f"SIGKILL training worker rank {self.target}"
        if self.type == "kill_ps":
            return f"SIGKILL PSShard {self.target}"
        if self.type == "kill_graph_shard":
            return f"SIGKILL GraphShard {self.target}"
        if self.type == "kill_node":
            return "remove the worker node holding the most of the job (SIGKILL, raylet included)"
        if self.type == "pause":
            who = f"PSShard {self.target}" if self.pause_what == "ps" else f"training worker rank {self.target}"
            return f"SIGSTOP {who} past its deadline, then SIGKILL"
        return f"ENOSPC while writing checkpoint step-{self.step:09d}"


def checkpoint_steps(epochs: int, steps_per_epoch: int, every: int | None) -> list[int]:
    """The global steps at which a run of ``epochs`` x ``steps_per_epoch`` steps writes a
    checkpoint: every ``every`` steps inside an epoch (``train.checkpoint_every_steps``) and at
    every epoch's end (as ``Trainer.train``)."""
    out = []
    for e in range(epochs):
        for s in range(1, steps_per_epoch + 1):
            g = e * steps_per_epoch + s
            if s == steps_per_epoch or (every and g % every == 0):
                out.append(g)
    return out


def schedule(n: int, seed: int, total_steps: int, ckpt_steps: Sequence[int], workers: int, parts: int,
             types: Sequence[str] = FAULT_TYPES) -> list[Fault]:
    """``n`` faults drawn from ``seed``: when ``n >= len(types)`` every type occurs at least once (the
    rest drawn uniformly), else ``n`` distinct types; shuffled. Timed faults strike at a step in
    ``[2, total_steps - 3]`` (a step or two of the old attempt ran, some remain to be redone);
    ``enospc`` at one of ``ckpt_steps``."""
    unknown = [t for t in types if t not in FAULT_TYPES]
    if unknown or not types:
        raise UserError(f"--types {','.join(types)}: choose from {', '.join(FAULT_TYPES)}")
    if n < 1:
        raise UserError(f"--faults {n}: give at least 1")
    if total_steps < 6:
        raise UserError(f"a job has only {total_steps} steps; a fault needs some before and after it: "
                        f"raise train.epochs or lower train.batch_size")
    rng = random.Random(seed)
    types = list(dict.fromkeys(types))
    kinds = list(types) + [rng.choice(types) for _ in range(n - len(types))] if n >= len(types) \
        else rng.sample(types, n)
    rng.shuffle(kinds)
    out = []
    for i, kind in enumerate(kinds):
        step = rng.choice(list(ckpt_steps)) if kind == "enospc" else rng.randint(2, total_steps - 3)
        pause_what = rng.choice(["ps", "trainer"]) if kind == "pause" else None
        count = workers if kind == "kill_trainer" or pause_what == "trainer" else parts
        out.append(Fault(i, kind, step, rng.randrange(count), pause_what))
    return out


# --- lost updates: checkpoints read with pyarrow, nothing of ours -------------------------------
def _read_rows(ckpt: Path) -> dict[str, dict[str, Any]]:
    """Every embedding row of checkpoint ``ckpt``, by node type: ``{"ids", state columns}`` sorted
    by original id. Reads the Parquet files directly (docs/format.md), not through distgnn."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables: dict[str, list] = {}
    for f in sorted((ckpt / "embeddings").glob("*.parquet")):
        ntype = f.stem.split("-")[0]
        tables.setdefault(ntype, []).append(pq.read_table(f))
    out = {}
    for ntype, ts in tables.items():
        t = pa.concat_tables(ts)
        ids = t.column("orig_id").to_numpy()
        order = np.argsort(ids, kind="stable")
        cols: dict[str, Any] = {"ids": ids[order]}
        for name in t.column_names[1:]:
            col = t.column(name).combine_chunks()
            if pa.types.is_fixed_size_list(col.type):
                arr = col.flatten().to_numpy().reshape(-1, col.type.list_size)
            else:
                arr = col.to_numpy()
            cols[name] = arr[order]
        out[ntype] = cols
    return out


def compare_checkpoints(run_ckpt: Path, ref_ckpt: Path, rtol: float = RTOL, atol: float = ATOL) -> dict[str, Any]:
    """Row-by-row comparison of two checkpoints' embedding files, keyed by (node type, orig id).

    ``lost_updates``: optimizer steps (``step`` column, Adam) the run's rows have fewer than the
    reference's; ``extra_updates``: more; ``mismatched_rows``: rows whose ``weight`` or optimizer
    state differ beyond the tolerance, or that one side lacks; ``max_abs_diff`` over all values."""
    import numpy as np

    run, ref = _read_rows(Path(run_ckpt)), _read_rows(Path(ref_ckpt))
    res = {"rows": 0, "lost_updates": 0, "extra_updates": 0, "mismatched_rows": 0, "max_abs_diff": 0.0}
    for ntype in sorted(set(run) | set(ref)):
        a, b = run.get(ntype), ref.get(ntype)
        if a is None or b is None:
            res["mismatched_rows"] += len((a or b)["ids"])
            continue
        common, ia, ib = np.intersect1d(a["ids"], b["ids"], assume_unique=True, return_indices=True)
        res["rows"] += len(common)
        res["mismatched_rows"] += (len(a["ids"]) - len(common)) + (len(b["ids"]) - len(common))
        bad = np.zeros(len(common), dtype=bool)
        for name in sorted((set(a) & set(b)) - {"ids"}):
            x, y = a[name][ia], b[name][ib]
            if name == "step":
                d = x.astype(np.int64) - y.astype(np.int64)
                res["lost_updates"] += int(-d[d < 0].sum())
                res["extra_updates"] += int(d[d > 0].sum())
                bad |= d != 0
                continue
            diff = np.abs(x.astype(np.float64) - y.astype(np.float64))
            if diff.size:
                res["max_abs_diff"] = max(res["max_abs_diff"], float(diff.max()))
            close = diff <= atol + rtol * np.abs(y.astype(np.float64))
            bad |= ~close.reshape(len(common), -1).all(axis=1)
        res["mismatched_rows"] += int(bad.sum())
    return res


def committed_checkpoints(run_dir: Path) -> list[Path]:
    """``step-*`` directories with their ``COMMITTED`` marker (format v2's rule, read directly)."""
    root = run_dir / "checkpoints"
    return sorted(p for p in root.glob("step-*") if p.is_dir() and (p / "COMMITTED").is_file()) \
        if root.is_dir() else []


def uncommitted_entries(run_dir: Path) -> list[str]:
    """Anything under ``RUN/checkpoints`` that is neither a committed checkpoint nor ``best.json``:
    a half-written checkpoint left behind."""
    root = run_dir / "checkpoints"
    ok = {p.name for p in committed_checkpoints(run_dir)} | {"best.json"}
    return sorted(p.name for p in root.iterdir() if p.name not in ok) if root.is_dir() else []


def _ckpt_step(ckpt: Path) -> int | None:
    try:
        return int(json.loads((ckpt / "meta.json").read_text())["global_step"])
    except (OSError, ValueError, KeyError):
        return None


# --- the cluster ----------------------------------------------------------------------------------
class ChaosCluster:
    """``ray.cluster_utils.Cluster`` on this machine: a head without CPUs (drivers connect there;
    nothing trains there) and ``nodes`` raylets of one logical CPU, the GCS checking raylets every
    second (a killed node is declared dead in about 3 s). Token authentication is on, as for the
    instance ``cluster.connect`` starts; the child drivers inherit the mode (the token is in ~/.ray)."""

    def __init__(self, nodes: int, object_store_bytes: int = 100 * 2**20):
        from distgnn.ray_runtime.cluster import AUTH_MODE_ENV

        os.environ[AUTH_MODE_ENV] = "token"
        with contextlib.suppress(Exception):  # else Ray's own default applies
            from ray._raylet import Config

            Config.initialize("")
            from ray._private.authentication.authentication_token_setup import ensure_token_if_auth_enabled

            ensure_token_if_auth_enabled(None, create_token_if_missing=True)
        from ray.cluster_utils import Cluster

        self.object_store_bytes = object_store_bytes
        self.nodes = nodes
        self.c = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "object_store_memory": object_store_bytes, "include_dashboard": False,
            "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3,
                               "health_check_initial_delay_ms": 1000}})
        self.replenish()

    @property
    def address(self) -> str:
        return self.c.address

    def worker_nodes(self) -> dict[str, Any]:
        return {n.node_id: n for n in self.c.worker_nodes}

    def kill_node(self, node_id: str) -> None:
        self.c.remove_node(self.worker_nodes()[node_id], allow_graceful=False)

    def replenish(self) -> None:
        """Back to ``nodes`` worker raylets (after a node was killed): an autoscaler's job."""
        while len(self.c.worker_nodes) < self.nodes:
            self.c.add_node(num_cpus=1, object_store_memory=self.object_store_bytes)
        self.c.wait_for_nodes(timeout=60)

    def shutdown(self) -> None:
        with contextlib.suppress(Exception):
            self.c.shutdown()


# --- the injector ---------------------------------------------------------------------------------
def _kill(pid: int | None, sig: int = signal.SIGKILL) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


class Injector(threading.Thread):
    """Watches a job's run directory (metrics, ``.faults/layout.json``, notes) and injects one
    fault when the job reaches its step; keeps a timeline of the records as it first sees them
    (the records carry no clock), from which detection and recovery times are computed."""

    def __init__(self, fault: Fault, run_dir: Path, cluster: ChaosCluster, pause_limit_s: float,
                 timeout_s: float):
        super().__init__(daemon=True, name=f"chaos-injector-{fault.index}")
        self.fault, self.run_dir, self.cluster = fault, run_dir, cluster
        self.pause_limit_s, self.timeout_s = pause_limit_s, timeout_s
        self.stop = threading.Event()
        self.timeline: list[tuple[float, str, int | None]] = []  # (time, record type, step)
        self.injected_at: float | None = None
        self.at_step: int | None = None
        self.target: str | None = None
        self.detected_at: float | None = None  # a worker's error note after a pause
        self.paused_pid: int | None = None
        self.stopped_pids: list[int] = []
        self.killed_node: str | None = None
        self.problem: str | None = None
        self._seen: dict[Path, int] = {}
        self._tried = False
        self.first_error: str | None = None  # a pause: the first worker's error on it (its note)

    def run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # noqa: BLE001 - reported with the fault, never a silent thread death
            self.problem = f"injector failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        finally:
            self._release()

    def _release(self) -> None:
        """Nothing stays stopped: resume the processes paused around a node kill, kill a paused one."""
        for pid in self.stopped_pids:
            _kill(pid, signal.SIGCONT)
        self.stopped_pids = []
        if self.paused_pid is not None:
            _kill(self.paused_pid)
            self.paused_pid = None

    def _poll(self) -> int:
        """New records into the timeline; returns the highest train step seen so far."""
        from distgnn.metrics import read_metrics

        now = time.time()
        for path, recs in read_metrics(self.run_dir).by_file():
            for rec in recs[self._seen.get(path, 0):]:
                self.timeline.append((now, str(rec.get("type")), rec.get("step")))
            self._seen[path] = max(self._seen.get(path, 0), len(recs))
        return max((s for _, k, s in self.timeline if k == "train" and s is not None), default=0)

    def _loop(self) -> None:
        from distgnn.ray_runtime import faults

        deadline = time.monotonic() + self.timeout_s
        f = self.fault
        while not self.stop.is_set() and time.monotonic() < deadline:
            reached = self._poll()
            if not self._tried and f.type != "enospc" and reached >= f.step:
                layout = faults.read_layout(self.run_dir)
                if layout:
                    self._tried = True  # once, even if it could not strike (then: ``problem``)
                    self._inject(layout, reached)
            if self.paused_pid is not None:
                self._watch_pause()
            self.stop.wait(0.05)
        self._poll()

    def _note(self, what: str) -> None:
        from distgnn.ray_runtime import faults

        faults.write_note(self.run_dir, "chaos", what=f"injected fault (chaos benchmark): {what}")

    def _inject(self, layout: dict, reached: int) -> None:
        f = self.fault
        self.at_step = reached
        if f.type == "kill_trainer":
            rank = next(r for r in layout["ranks"] if r["rank"] == f.target % len(layout["ranks"]))
            self.target = f"training worker rank {rank['rank']} (pid {rank['pid']})"
            self._note(f"SIGKILL {self.target} at step {reached}")
            self.injected_at = time.time()
            _kill(rank["pid"])
        elif f.type in ("kill_ps", "kill_graph_shard"):
            key, name = ("ps", "PSShard") if f.type == "kill_ps" else ("graph", "GraphShard")
            p = f.target % len(layout[key])
            shard = layout[key][p]
            self.target = f"{name} {p} (pid {shard['pid']})"
            self._note(f"SIGKILL {self.target} at step {reached}")
            self.injected_at = time.time()
            _kill(shard["pid"])
        elif f.type == "pause":
            if f.pause_what == "ps":
                p = f.target % len(layout["ps"])
                pid, self.target = layout["ps"][p]["pid"], f"PSShard {p}"
            else:
                r = next(r for r in layout["ranks"] if r["rank"] == f.target % len(layout["ranks"]))
                pid, self.target = r["pid"], f"training worker rank {r['rank']}"
            self.target += f" (pid {pid})"
            self._note(f"SIGSTOP {self.target} at step {reached}, past its deadline, then SIGKILL")
            self.injected_at = time.time()
            if _kill(pid, signal.SIGSTOP):
                self.paused_pid = int(pid)
        elif f.type == "kill_node":
            self._kill_node(layout, reached)

    def _kill_node(self, layout: dict, reached: int) -> None:
        """As tests/test_node_loss.py: the worker node holding most of the job, every process at once;
        the training workers are paused around it so the loss lands at this step."""
        from distgnn.ray_runtime import faults

        held = faults.processes_per_node(layout, self.cluster.worker_nodes())
        if not held:
            self.problem = "no worker node runs a training worker: nothing to kill"
            return
        victim = max(sorted(held), key=held.get)
        self.target = f"node {victim[:8]} ({held[victim]} of the job's processes)"
        self._note(f"node {victim[:8]} killed at step {reached}")
        pids = [r["pid"] for r in layout["ranks"]]
        self.stopped_pids = [p for p in pids if _kill(p, signal.SIGSTOP)]
        self.injected_at = time.time()
        try:
            self.cluster.kill_node(victim)
            self.killed_node = victim
        finally:
            for pid in self.stopped_pids:
                _kill(pid, signal.SIGCONT)
            self.stopped_pids = []

    def _watch_pause(self) -> None:
        """Kill the paused process once a worker has failed on it (an error note newer than the
        pause: the deadline fired), or after ``pause_limit_s`` (then: not detected)."""
        from distgnn.ray_runtime import faults

        t0 = self.injected_at or time.time()
        errors = [n for n in faults.read_notes(self.run_dir)
                  if n.get("error") and float(n.get("time", 0)) >= t0]
        # (or the fault record already: Ray Train may have killed the paused worker itself, and the
        # new chief consumed the notes)
        record = next((t for t, k, _ in self.timeline if k == "fault" and t >= t0), None)
        late = time.time() - t0 > self.pause_limit_s
        if errors or record is not None or late:
            if errors or record is not None:
                self.detected_at = min([float(n["time"]) for n in errors] + ([record] if record else []))
                if errors:  # the first failure on it says how it was found (the record may name a
                    # later one: a health check meeting the restarted shard)
                    n = min(errors, key=lambda n: float(n["time"]))
                    self.first_error = f"rank {n.get('rank')}: {n.get('error')}: {n.get('message', '')}"[:300]
            else:
                self.problem = (f"the paused process was not detected within {self.pause_limit_s:.0f}s; "
                                f"the bench killed it")
            _kill(self.paused_pid)
            self.paused_pid = None


# --- one job --------------------------------------------------------------------------------------
def detection_kind(detected_by: str | None) -> str:
    """The ``fault`` record's ``detected_by`` (``faults._detected_by``), as one of: deadline, health
    check, stale generation (a fenced call), error (a failed call or a worker's exception), Ray
    Train restart (a process gone without a word)."""
    t = (detected_by or "").lower()
    if "did not answer within" in t or "timed out" in t or "timeout" in t:
        return "deadline"
    if t.startswith("health check"):
        return "health check"
    if t.startswith("stale-generation"):
        return "stale generation (fenced call)"
    if t.startswith(("failed call", "worker error", "rank ")):  # (rank: a worker's own error note)
        return "error"
    if t.startswith("ray"):
        return "Ray Train restart"
    return "unknown"


def _train_cmd(cfg_path: Path, run_dir: Path, address: str, workers: int) -> list[str]:
    return [sys.executable, "-m", "distgnn.cli", "train", "--config", str(cfg_path), "--backend", "ray",
            "--num-workers", str(workers), "--address", address, "--out", str(run_dir),
            "--max-failures", str(MAX_FAILURES)]


def run_fault(fault: Fault, cfg_path: Path, work: Path, cluster: ChaosCluster, workers: int,
              total_steps: int, timeout_s: float, pause_limit_s: float) -> dict[str, Any]:
    """One job with one fault: the child driver under its deadline, the injector beside it; the
    result before the comparison with the reference (``finish``)."""
    from distgnn import checkpoint as ckpt
    from distgnn.bench.scaling import run_child
    from distgnn.metrics import read_metrics

    run_dir = work / f"run-{fault.index:02d}-{fault.type}"
    env = dict(os.environ)
    env.pop(ckpt.ENOSPC_ENV, None)
    if fault.type == "enospc":
        env[ckpt.ENOSPC_ENV] = str(fault.step)
    inj = Injector(fault, run_dir, cluster, pause_limit_s, timeout_s)
    inj.start()
    try:
        child = run_child(_train_cmd(cfg_path, run_dir, cluster.address, workers),
                          work / "logs" / f"{run_dir.name}.log", timeout_s, env=env)
    finally:
        inj.stop.set()
        inj.join(timeout=30)
        if fault.type == "kill_node" or len(cluster.c.worker_nodes) < cluster.nodes:
            cluster.replenish()
    hang = child.returncode == -9
    out: dict[str, Any] = {"index": fault.index, "type": fault.type, "planned": fault.describe(),
                           "planned_step": fault.step, "target": inj.target, "at_step": inj.at_step,
                           "returncode": child.returncode, "hang": hang, "seconds": round(child.seconds, 1),
                           "log": str(child.log), "run": str(run_dir), "problem": inj.problem}
    if fault.type == "enospc":
        marker = ckpt.enospc_marker(run_dir, fault.step)
        if marker.exists():
            inj.injected_at, inj.at_step = marker.stat().st_mtime, fault.step
            out.update(at_step=fault.step, target=f"checkpoint step-{fault.step:09d}")
    injected = inj.injected_at is not None
    recs = read_metrics(run_dir).records if run_dir.is_dir() else []
    fault_recs = [r for r in recs if r.get("type") == "fault"]
    last = committed_checkpoints(run_dir)
    final_step = _ckpt_step(last[-1]) if last else None
    survived = child.returncode == 0 and final_step == total_steps
    out.update(injected=injected, survived=survived, final_step=final_step,
               fault_records=len(fault_recs),
               what=fault_recs[0].get("what") if fault_recs else None,
               detected_by=fault_recs[0].get("detected_by") if fault_recs else None,
               rolled_back_to=fault_recs[-1].get("rolled_back_to") if fault_recs else None,
               steps_redone=(sum(int(r.get("steps_redone") or 0) for r in fault_recs) if fault_recs else 0),
               uncommitted=uncommitted_entries(run_dir))
    out["first_error"] = inj.first_error
    if inj.first_error:
        out["detection"] = detection_kind(inj.first_error)
    elif fault_recs:
        out["detection"] = detection_kind(fault_recs[0].get("detected_by"))
    elif fault.type == "kill_graph_shard" and injected:
        out["detection"] = "none needed: Ray restarted the GraphShard and retried its calls (no rollback)"
    else:
        out["detection"] = None
    out["detected"] = bool(fault_recs) or (fault.type == "kill_graph_shard" and injected and survived)
    if not injected and not out["problem"]:
        out["problem"] = ("the fault was never injected: " + (
            "the job ended first" if child.returncode == 0
            else f"the job failed before it (exit {child.returncode}): {child.tail()}"))
    if not survived and not hang and not out["problem"]:
        out["problem"] = f"the job failed (exit {child.returncode}): {child.tail()}"
    if hang:
        out["problem"] = f"hang: the job ran past its {timeout_s:.0f}s deadline and was killed"
    out.update(_times(inj, fault_recs))
    return out


def _times(inj: Injector, fault_recs: list[dict]) -> dict[str, float | None]:
    """``detect_s``: injection to the first sign a worker failed on it (its error note, for a pause)
    or to the fault record; ``recover_s``: injection to the first ``train`` record at or past the
    step where the fault struck, seen after the fault record (the new attempt has caught up)."""
    t0 = inj.injected_at
    if t0 is None:
        return {"detect_s": None, "recover_s": None}
    t_fault = next((t for t, k, _ in inj.timeline if k == "fault" and t >= t0), None)
    detect = inj.detected_at if inj.detected_at is not None else t_fault
    since = t_fault if fault_recs else t0
    at = inj.at_step or 0
    recovered = None
    if since is not None:
        recovered = next((t for t, k, s in inj.timeline
                          if k == "train" and t >= since and s is not None and s >= at + (0 if fault_recs else 1)),
                         None)
        if recovered is None:  # the job's last step came before the record was seen: its end
            recovered = next((t for t, k, _ in reversed(inj.timeline) if k in ("checkpoint", "processes")
                              and t >= since), None)
    r = lambda t: None if t is None else round(max(0.0, t - t0), 1)  # noqa: E731
    return {"detect_s": r(detect), "recover_s": r(recovered)}


def _evaluate(runs: list[Path], k: int, timeout_s: float, log: Path) -> dict[str, float | None]:
    """Recall@K of each run's final checkpoint (``distgnn evaluate``, local backend), all in one
    child process under one deadline."""
    from distgnn.bench.scaling import run_child

    code = ("import contextlib, io, json, sys\n"
            "from distgnn.cli import main\n"
            "for run in sys.argv[2:]:\n"
            "    buf = io.StringIO()\n"
            "    with contextlib.redirect_stdout(buf):\n"
            "        rc = main(['evaluate', '--run', run, '--json', '--k', sys.argv[1]])\n"
            "    lines = buf.getvalue().strip().splitlines()\n"
            "    try:\n"
            "        rec = json.loads(lines[-1]) if rc == 0 else {}\n"
            "    except (ValueError, IndexError):\n"
            "        rec = {}\n"
            "    print(json.dumps({'run': run, 'recall': rec.get('recall@' + sys.argv[1])}), flush=True)\n")
    child = run_child([sys.executable, "-c", code, str(k), *map(str, runs)], log, timeout_s)
    out: dict[str, float | None] = {str(r): None for r in runs}
    for line in child.stdout.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            rec = json.loads(line)
            out[rec["run"]] = rec["recall"]
    return out


def finish(result: dict[str, Any], ref_run: Path, ref_recall: float | None, recall: float | None) -> None:
    """Compare the run with the reference: every committed checkpoint with the reference's of the
    same step (rows, step counts, state), the final Recall@K; sets ``ok``."""
    run = Path(result["run"])
    ref = {p.name: p for p in committed_checkpoints(ref_run)}
    totals = {"checkpoints_compared": 0, "lost_updates": 0, "extra_updates": 0, "mismatched_rows": 0,
              "max_abs_diff": 0.0}
    unmatched = []
    for c in committed_checkpoints(run) if run.is_dir() else []:
        if c.name not in ref:
            unmatched.append(c.name)
            continue
        cmp = compare_checkpoints(c, ref[c.name])
        totals["checkpoints_compared"] += 1
        for key in ("lost_updates", "extra_updates", "mismatched_rows"):
            totals[key] += cmp[key]
        totals["max_abs_diff"] = max(totals["max_abs_diff"], cmp["max_abs_diff"])
    result.update(totals)
    if unmatched:
        result["problem"] = result.get("problem") or f"checkpoints the reference does not have: {unmatched}"
    result["recall"] = recall
    result["recall_delta"] = (round(abs(recall - ref_recall), 6)
                              if recall is not None and ref_recall is not None else None)
    clean = not result["uncommitted"] or result["type"] != "enospc"
    result["ok"] = bool(result["survived"] and not result["hang"] and result["detected"]
                        and totals["checkpoints_compared"] > 0 and not unmatched
                        and totals["lost_updates"] == totals["extra_updates"] == totals["mismatched_rows"] == 0
                        and result["recall_delta"] is not None and result["recall_delta"] <= RECALL_TOLERANCE
                        and clean)
    if not result["ok"] and not result.get("problem"):
        why = []
        if totals["lost_updates"] or totals["extra_updates"] or totals["mismatched_rows"]:
            why.append(f"rows differ from the reference ({totals['lost_updates']} lost, "
                       f"{totals['extra_updates']} extra updates, {totals['mismatched_rows']} rows)")
        if result["recall_delta"] is None or result["recall_delta"] > RECALL_TOLERANCE:
            why.append(f"recall delta {result['recall_delta']}")
        if not clean:
            why.append(f"uncommitted checkpoint entries left: {result['uncommitted']}")
        if not result["detected"]:
            why.append("no fault record")
        result["problem"] = "; ".join(why) or "see the log"


# --- the command ----------------------------------------------------------------------------------
def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "chaos", help="chaos benchmark: seeded faults of every kind during Ray training, nothing lost",
        description="Train on a multi-node Ray cluster simulated on this machine and inject faults at "
                    "seeded random steps, one per short training job: kill a trainer, a PS shard, a "
                    "GraphShard or a whole node, pause a process past its deadline, fill the disk "
                    "under a checkpoint (ENOSPC). Each job is compared with a fault-free reference "
                    "run: survived, how the fault was detected, time to recover, steps redone, final "
                    "Recall@K, and every embedding row's optimizer step count and state in every "
                    "committed checkpoint (read with pyarrow). Exit 0 when every fault was survived "
                    "with nothing lost.",
        epilog="examples:\n"
               "  distgnn bench chaos --config configs/chaos.yaml --faults 10 --seed 0 --out /tmp/chaos\n"
               "  distgnn bench chaos --config configs/chaos.yaml --faults 10 --seed 1 --json\n"
               "  distgnn bench chaos --faults 2 --types kill_ps,enospc --json   # a quick check\n"
               f"fault types: {', '.join(FAULT_TYPES)}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="training config (default: a built-in small one, as configs/chaos.yaml); "
                   "the bench forces ordered pushes, a record per step, no validation and its deadlines")
    p.add_argument("--partitions", metavar="DIR", help="partition directory (default: generate a small "
                   "graph, --interactions, with 2 METIS partitions)")
    p.add_argument("--faults", type=int, default=10, help="faults, one per job (default 10: every type "
                   "at least once)")
    p.add_argument("--seed", type=int, default=0, help="seeds the fault schedule and the generated graph")
    p.add_argument("--types", metavar="T,T", help=f"only these fault types (default: all of {', '.join(FAULT_TYPES)})")
    p.add_argument("--interactions", type=int, default=6_000, help="size of the generated graph (default 6000)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="A.B=V",
                   help="override a training setting, e.g. --set train.epochs=3")
    p.add_argument("--timeout", type=float, default=600.0, metavar="S",
                   help="deadline of each training job (default 600); a job past it is a hang")
    p.add_argument("--out", metavar="DIR", help="keep runs, logs and chaos.json here (default: a temporary "
                   "directory, removed afterwards)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(handler=run)


def bench_config(config: str | None, partitions: Path, overrides: list[str]) -> Any:
    """The jobs' config: the file's (or ``BASE``), ``--set`` overrides, then ``FORCED`` and the
    small ``DEADLINES``; validated like ``distgnn train``'s."""
    import yaml

    from distgnn.config import config_from_dict, load_config

    if config:
        data = load_config(config, overrides, str(partitions)).model_dump(mode="json")
    else:
        import copy
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "chaos.yaml"
            path.write_text(yaml.safe_dump(copy.deepcopy(BASE)))
            data = load_config(path, overrides, str(partitions)).model_dump(mode="json")
    for section, values in FORCED.items():
        data[section].update(values)
    data["train"]["fault"] = {}
    if not data["train"].get("checkpoint_every_steps"):
        data["train"]["checkpoint_every_steps"] = BASE["train"]["checkpoint_every_steps"]
    data["runtime"] = dict(DEADLINES)
    return config_from_dict(data, "chaos benchmark config")


def run(args: argparse.Namespace) -> int:
    import shutil
    import tempfile

    import yaml

    from distgnn import format as fmt
    from distgnn.bench.scaling import _loadavg, _now
    from distgnn.ray_runtime.worker import steps_per_epoch

    types = tuple(t.strip() for t in args.types.split(",") if t.strip()) if args.types else FAULT_TYPES
    if args.faults < 1:
        raise UserError(f"--faults {args.faults}: give at least 1")
    started, t_start, load_start = _now(), time.monotonic(), _loadavg()
    temp = None
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        if any(out.glob("run-*")):
            raise UserError(f"{out} already holds a chaos run; choose another --out or remove it")
    else:
        temp = tempfile.mkdtemp(prefix="distgnn-chaos-")
        out = Path(temp)
    cluster = None
    try:
        if args.partitions:
            parts_dir = Path(args.partitions)
            fmt.load_manifest(parts_dir)  # a UserError line if it is not a partition directory
        else:
            print(f"chaos: generating {args.interactions} interactions, 2 METIS partitions", file=sys.stderr)
            parts_dir = generate_partitions(out / "data", args.interactions, args.seed)
        cfg = bench_config(args.config, parts_dir.resolve(), args.overrides)
        manifest = fmt.load_manifest(cfg.data.partitions)
        workers = len(manifest["parts"])
        spe = steps_per_epoch(manifest, cfg.train.batch_size, workers)
        total = cfg.train.epochs * spe
        if cfg.train.max_steps is not None:
            raise UserError("train.max_steps: the bench runs whole epochs; unset it")
        ckpts = checkpoint_steps(cfg.train.epochs, spe, cfg.train.checkpoint_every_steps)
        plan = schedule(args.faults, args.seed, total, ckpts, workers, workers, types)
        cfg_path = out / "chaos-config.yaml"
        cfg_path.write_text(cfg.to_yaml())
        nodes = workers + 1
        print(f"chaos: {len(plan)} faults ({', '.join(f.type for f in plan)}), {workers} workers on "
              f"{nodes} nodes of 1 CPU, {total} steps per job ({spe} per epoch), checkpoints at {ckpts}",
              file=sys.stderr, flush=True)
        cluster = ChaosCluster(nodes)
        pause_limit = 2 * max(DEADLINES["call_timeout_s"], DEADLINES["barrier_timeout_s"]) + 30
        # the fault-free reference
        ref_run = out / "run-reference"
        ref_child = _run_reference(cfg_path, ref_run, cluster, workers, args.timeout, out)
        ref_ckpts = committed_checkpoints(ref_run)
        if ref_child.returncode != 0 or not ref_ckpts or _ckpt_step(ref_ckpts[-1]) != total:
            raise UserError(f"the fault-free reference run failed (exit {ref_child.returncode}): "
                            f"{ref_child.tail()}; see {ref_child.log}")
        print(f"chaos: reference run done in {ref_child.seconds:.0f}s", file=sys.stderr, flush=True)
        results = []
        for f in plan:
            print(f"chaos: fault {f.index + 1}/{len(plan)}: {f.describe()} at step {f.step}",
                  file=sys.stderr, flush=True)
            res = run_fault(f, cfg_path, out, cluster, workers, total, args.timeout, pause_limit)
            results.append(res)
            print(f"chaos:   {'survived' if res['survived'] else 'FAILED'} in {res['seconds']:.0f}s; "
                  f"detected by {res['detection']}; {res['steps_redone']} steps redone"
                  + (f"; {res['problem']}" if res['problem'] else ""), file=sys.stderr, flush=True)
        recalls = _evaluate([ref_run] + [Path(r["run"]) for r in results], cfg.eval.k,
                            max(120.0, 30.0 * (len(results) + 1)), out / "logs" / "evaluate.log")
        ref_recall = recalls.get(str(ref_run))
        for r in results:
            finish(r, ref_run, ref_recall, recalls.get(r["run"]))
        deltas = [r["recall_delta"] for r in results]
        report = {
            "format": FORMAT, "version": VERSION,
            "command": command_line(args),
            "started": started, "finished": _now(), "seconds": round(time.monotonic() - t_start, 1),
            "seed": args.seed, "faults": len(results),
            "survived": sum(bool(r["survived"]) for r in results),
            "hangs": sum(bool(r["hang"]) for r in results),
            "lost_updates": sum(r["lost_updates"] for r in results),
            "extra_updates": sum(r["extra_updates"] for r in results),
            "mismatched_rows": sum(r["mismatched_rows"] for r in results),
            "recall_delta": None if None in deltas else max(deltas, default=0.0),
            "ok": all(r["ok"] for r in results),
            "reference": {"recall": ref_recall, "seconds": round(ref_child.seconds, 1),
                          "checkpoints": len(ref_ckpts)},
            "settings": {"workers": workers, "nodes": nodes, "epochs": cfg.train.epochs, "steps": total,
                         "steps_per_epoch": spe, "checkpoint_steps": ckpts, "deadlines": DEADLINES,
                         "max_failures": MAX_FAILURES, "partitions": str(cfg.data.partitions),
                         "k": cfg.eval.k, "types": list(types)},
            "machine": {"logical_cpus": os.cpu_count(), "memory_bytes": _memory_bytes(),
                        "loadavg_start": load_start, "loadavg_end": _loadavg()},
            "per_fault": results,
        }
        if args.out:
            from distgnn import atomic

            atomic.write_json(out / "chaos.json", report)
        print(json.dumps(report, indent=2) if args.json else table(report))
        return 0 if report["ok"] else 1
    finally:
        if cluster is not None:
            cluster.shutdown()
        if temp:
            shutil.rmtree(temp, ignore_errors=True)


def generate_partitions(out: Path, interactions: int, seed: int, num_parts: int = 2) -> Path:
    """A small generated graph (``distgnn gen``), partitioned with METIS (``distgnn partition create``)."""
    from distgnn.gen import generate
    from partition.pipeline import CreateOptions, create

    generate(out / "logs", interactions=interactions, seed=seed, progress=False)
    parts = out / f"p{num_parts}-metis"
    create(CreateOptions(train=str(out / "logs" / "train"), test=str(out / "logs" / "test"), out=str(parts),
                         num_parts=num_parts, method="metis", seed=seed, progress=False))
    return parts


def command_line(args: argparse.Namespace) -> str:
    """The invocation, rebuilt from the parsed options (the same inside a test as from a shell)."""
    parts = ["distgnn", "bench", "chaos"]
    for opt, value in (("--config", args.config), ("--partitions", args.partitions), ("--faults", args.faults),
                       ("--seed", args.seed), ("--types", args.types), ("--interactions", args.interactions),
                       ("--timeout", args.timeout), ("--out", args.out)):
        if value is not None:
            parts += [opt, str(value)]
    parts += [a for o in args.overrides for a in ("--set", o)]
    return " ".join(shlex.quote(p) for p in parts) + (" --json" if args.json else "")


def _run_reference(cfg_path: Path, run_dir: Path, cluster: ChaosCluster, workers: int, timeout_s: float,
                   out: Path):
    from distgnn import checkpoint as ckpt
    from distgnn.bench.scaling import run_child

    env = dict(os.environ)
    env.pop(ckpt.ENOSPC_ENV, None)
    return run_child(_train_cmd(cfg_path, run_dir, cluster.address, workers),
                     out / "logs" / "run-reference.log", timeout_s, env=env)


def _memory_bytes() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return None


def table(report: dict[str, Any]) -> str:
    """The report as Markdown: one row per fault, then the totals."""
    rows = ["| # | fault | target | step | detected by | detect s | recover s | steps redone | "
            "checkpoints compared | lost / extra / mismatched rows | Recall@K delta | ok |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["per_fault"]:
        rows.append(
            f"| {r['index'] + 1} | {r['type']} | {r['target'] or '-'} | {r['at_step']} | {r['detection'] or '-'} | "
            f"{_f(r['detect_s'])} | {_f(r['recover_s'])} | {r['steps_redone']} | {r['checkpoints_compared']} | "
            f"{r['lost_updates']} / {r['extra_updates']} / {r['mismatched_rows']} | "
            f"{_f(r['recall_delta'], 4)} | {'yes' if r['ok'] else 'NO: ' + str(r.get('problem'))} |")
    ref = report["reference"]
    rows.append("")
    rows.append(f"{report['survived']}/{report['faults']} survived, {report['hangs']} hangs, "
                f"{report['lost_updates']} lost updates ({report['extra_updates']} extra, "
                f"{report['mismatched_rows']} mismatched rows), max Recall@{report['settings']['k']} delta "
                f"{_f(report['recall_delta'], 4)} (reference {_f(ref['recall'], 4)}); {report['seconds']:.0f}s")
    return "\n".join(rows)


def _f(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"
