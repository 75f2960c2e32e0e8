"""``distgnn bench scaling``: throughput, memory and traffic against data size, workers and partitions.

One command runs a sweep (issue 9, section 3) and writes into ``--out DIR``:

```
DIR/scaling.json              every measured configuration (schema below)
DIR/scaling.md                the tables, Markdown
DIR/scaling_partition.png     partitioning time and peak RSS against interactions, ours and DGL's
DIR/scaling_data.png          train edges/s per worker and peak RSS per process against interactions
DIR/scaling_workers.png       strong and weak scaling: edges/s, CPU s per step, bytes per step, remote share
DIR/scaling_stages.png        per-stage time per step, stacked, for each training configuration
DIR/scaling_locality.png      remote sampled seeds and remote PS rows per step against partitions
DIR/scaling_projection.png    the projection to 8-128 nodes: a MODEL, not a measurement
DIR/runs/KEY/metrics/         the metrics files of each training run (where the figures come from)
```

The sections (``--only`` picks some):

- **partition**: ``bench partition``'s ``--sizes`` sweep, point by point (``partition.sweep_point``:
  ours and ``dgl.distributed.partition_graph``, each in its own process).
- **data**: training at each size with ``data_workers`` workers. **strong**: 1, 2, 4 workers on the
  graph of ``fixed_size`` interactions; **weak**: ``fixed_size`` x workers interactions. Every
  training run is the product path: ``distgnn train --backend ray --address ADDR`` in a child
  process (so the driver's peak RSS is its own), against a multi-node Ray cluster this command
  starts on this machine with ``ray.cluster_utils.Cluster``: a head without CPUs and one raylet per
  simulated node with one *logical* CPU, as many nodes as workers, so 4 workers fit on 2 cores
  while placement and cross-node traffic (object transfers between the nodes' stores, actor calls
  between raylets) are real. One thread per worker in every configuration, so compute per step is
  comparable across worker counts. Figures come from the run's metrics records after each rank's
  first ``train`` record (warm-up: Ray start, first DGL calls), and peak RSS from the job's
  ``processes`` record (``launch.job.process_report``).
- **reference**: the plain-DGL loop of ``bench train`` (``--only reference``, same config, one
  thread) on the same partitions in its own process, for edges/s and peak RSS beside ours, where
  its measured memory per interaction fits the machine.
- **locality**: ``bench locality`` for each partition count, METIS against random (each in its own
  process): remote sampled seeds and remote PS rows per step.
- **projection**, computed from the records (``project``): step time and throughput for 8-128 nodes
  under a stated network model. It is a model, and labelled so everywhere it is shown.

On 2 cores more workers cannot go faster in wall-clock; what transfers to real nodes is reported
beside it: CPU seconds per step (``cpu_seconds`` of the worker processes, which oversubscription
does not inflate the way it inflates wall time), bytes per step to and from the parameter server and
graph shards, and remote/local shares.

Re-running the same command resumes: a configuration whose record has ``status: ok`` is not run
again; ``--sizes`` (etc.) may extend a sweep. Records are written after each configuration
(atomically), so an interrupted sweep keeps what it measured. A sweep with other training settings
(config, steps, batch) is refused rather than mixed in.

JSON schema (``DIR/scaling.json``, ``"version": 1``)::

    {"format": "distgnn-bench-scaling", "version": 1,
     "command": str,                 # the last invocation
     "preset": "smoke" | "medium" | "full",
     "settings": {"settings_id": str, "config": {...resolved training config...}, "steps": int,
                  "log_every": int, "threads_per_worker": 1, "logical_cpus_per_node": 1, "seed": int,
                  "reference_steps": int, "reference_warmup": int, "locality_steps": int},
     "plan": {"sizes": [int], "data_workers": int, "fixed_size": int, "workers": [int], "parts": [int],
              "partition_parts": int},
     "machine": {"physical_cores": int, "logical_cpus": int, "memory_bytes": int},
     "invocations": [{"command", "started", "finished", "loadavg_start": [1m, 5m, 15m], "loadavg_end"}],
     "records": [RECORD, ...],       # one per measured configuration
     "projection": PROJECTION}       # modelled, see ``project``

    every RECORD: "kind", "key" (unique), "status" ("ok" | "failed" | "skipped"), "reason" (unless
      ok), "seconds" (wall time incl. start-up), "loadavg" ([1m, 5m, 15m] when it finished),
      "finished" (ISO time)
    kind "partition": "interactions", "num_parts", "ours" {"seconds", "process_seconds",
      "peak_rss_bytes", "edge_cut_fraction", ...}, "dgl" {same} or "dgl_skipped", ratios as in
      ``bench partition`` ("speedup", "rss_ratio", ...)
    kind "train": "interactions", "workers", "num_parts", "nodes", "sweeps" (of "data", "strong",
      "weak"), "batch_size", "steps_measured" (per worker), "edges_per_s" (all workers),
      "edges_per_s_per_worker", "step_seconds" (wall), "cpu_seconds_per_step" (the worker process,
      all threads), "compute_cpu_seconds_per_step" (training thread in forward + backward + dense
      step: the part a faster device speeds up),
      "stage_seconds_per_step" {sample, pull, forward, backward, push, dense_step, all_reduce,
        sample_local, sample_remote},
      "bytes_per_step" {ps_pull_local, ps_pull_remote, ps_push_local, ps_push_remote,
        sample_local, sample_remote},
      "rows_per_step" {pull_local, pull_remote, push_local, push_remote},
      "sample_per_step" {local_seeds, remote_seeds, local_edges, remote_edges, remote_requests},
      "remote_fraction" {pull_rows, push_rows, sample_seeds, sample_edges},
      "peak_rss_bytes" {driver, workers [..], graph_shards [..], ps_shards [..], max_worker,
        max_graph_shard, max_ps_shard, total},
      "placement" {"nodes_used", "parts_on_worker_node", "num_parts"}
      (all per-step figures are per worker, the mean over the workers)
    kind "reference": "interactions", "edges_per_s", "steps", "peak_rss_bytes", "settings"
    kind "locality": "interactions", "num_parts", "method", "edge_cut_fraction", "steps_per_epoch",
      "per_step" {remote_seeds, local_seeds, remote_edges, local_edges, remote_requests,
        pull_rows_remote, pull_rows_local, pull_bytes_remote},
      "remote_fraction" {sample_seeds, pull_rows}

Bytes: a PS row is its 8-byte id plus ``dim`` float32 values (the client's counters); a sampled
seed is 8 bytes sent, a sampled edge 16 bytes received (two int64 ids); the exclusion lists sent
with remote sampling requests are not counted.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

from distgnn.errors import UserError

FORMAT = "distgnn-bench-scaling"
VERSION = 1
STAGES = ("sample", "pull", "forward", "backward", "push", "dense_step")
SAMPLE_SEED_BYTES = 8
SAMPLE_EDGE_BYTES = 16

# --- the projection's network model (docs/architecture.md D27) --------------------------------------
PROJECTED_NODES = (8, 16, 32, 128)
BANDWIDTHS_GBIT = (25, 100)
# A node's compute speed over one core of this machine for forward + backward + dense step: 1 = as
# measured here (pessimistic), 10 = an assumed GPU node. An assumption, not a measurement.
SPEEDUPS = (1, 10)
ROUND_TRIP_S = 5e-4        # per sampling hop / pull / push round trip: Ray actor-call overhead order
ALLREDUCE_ALPHA_S = 5e-5   # per message of the ring all-reduce
# DistDGL's published figure, as issue 9 quotes it (Zheng et al., "DistDGL", 2020): GraphSAGE node
# classification on ogbn-papers100M, about 13 s per epoch on 16 machines; an epoch is the
# 1,207,179 labelled training nodes.
DISTDGL = {"graph": "ogbn-papers100M", "epoch_seconds": 13.0, "machines": 16, "train_seeds": 1_207_179,
           "task": "GraphSAGE node classification (3 layers, fanouts 15/10/5)"}

# The plain-DGL training reference's peak RSS, about base + slope x interactions (its whole graph,
# both directions, an embedding table with SparseAdam state): a sweep does not start it where that
# would not fit. Measured by the medium sweep: 1.31 GiB at 1M interactions, 3.83 GiB at 10M
# (BENCHMARKS.md "Scaling"), so about 300 bytes per interaction over 1 GiB.
REFERENCE_BASE_BYTES = 2**30
REFERENCE_BYTES_PER_INTERACTION = 300


@dataclass(frozen=True)
class Preset:
    sizes: tuple[int, ...]
    fixed_size: int
    workers: tuple[int, ...]
    parts: tuple[int, ...]
    data_workers: int = 2
    batch_size: int = 1024
    steps: int = 30
    log_every: int = 5
    reference_steps: int = 20
    reference_warmup: int = 3
    locality_steps: int = 20
    partition_dgl: bool = True
    timeout_s: float = 1800.0


PRESETS = {
    # for `make test`: every section on tiny graphs, two Ray jobs (20K and 40K interactions on two
    # simulated nodes: data, strong and weak share them), about 1.5 minutes on an idle machine
    "smoke": Preset(sizes=(20_000, 40_000), fixed_size=20_000, workers=(2,), parts=(2,), batch_size=256,
                    steps=6, log_every=2, reference_steps=4, reference_warmup=1, locality_steps=2,
                    partition_dgl=False, timeout_s=300.0),
    "medium": Preset(sizes=(1_000_000, 10_000_000), fixed_size=1_000_000, workers=(1, 2, 4),
                     parts=(2, 4, 8)),
    "full": Preset(sizes=(1_000_000, 10_000_000, 100_000_000), fixed_size=10_000_000, workers=(1, 2, 4),
                   parts=(2, 4, 8), steps=50, log_every=10, reference_steps=30, locality_steps=30,
                   timeout_s=5400.0),
}
SECTIONS = ("partition", "data", "reference", "strong", "weak", "locality")


def base_config(batch_size: int, log_every: int) -> dict[str, Any]:
    """The training settings of every configuration (``--set`` overrides them): a 2-layer GAT as in
    configs/gowalla_gat.yaml with dim 64, one thread per worker, no validation."""
    return {
        "data": {"partitions": "unused"},
        "model": {"dim": 64, "layers": 2, "heads": 2, "hidden": 64, "head_merge": "mean",
                  "activation": "none", "transform": "identity", "attn_init": "zero", "edge_norm": "sym",
                  "layer_combine": "mean"},
        "embedding": {"optimizer": "adam", "lr": 0.01},
        "train": {"epochs": 1000, "batch_size": batch_size, "fanouts": [10, 10], "num_negatives": 4,
                  "l2": 1.0e-4, "threads": 1, "device": "cpu", "log_every": log_every, "eval_every": 0,
                  "progress": False},
        "eval": {"split": "valid"},
    }


def add_parser(sub: argparse._SubParsersAction) -> None:
    from distgnn.gen import _count  # noqa: F401  (parsed in run: a list)

    p = sub.add_parser(
        "scaling", help="scaling sweep: data size, workers, partitions; JSON, Markdown and PNG plots",
        description="Run the scaling sweep of issue 9 and write DIR/scaling.json (one record per "
                    "configuration), DIR/scaling.md (tables) and DIR/scaling_*.png (plots). Training "
                    "runs are 'distgnn train --backend ray' against a multi-node Ray cluster simulated "
                    "on this machine (one raylet per node, one logical CPU each). Re-running the same "
                    "command skips what was already measured. The projection to 8-128 nodes is a "
                    "model, labelled as such.",
        epilog="examples:\n"
               "  distgnn bench scaling --preset smoke --out /tmp/scaling-smoke\n"
               "  distgnn bench scaling --preset medium --out /work/data/scaling-medium\n"
               "  distgnn bench scaling --preset full --out scaling-full --workdir /big/disk   "
               "# resumable\n"
               "  distgnn bench scaling --preset full --out scaling-full --sizes 1M,10M --only data,reference\n"
               "presets (sizes / fixed graph / workers / partitions):\n"
               + "".join(f"  {name:<7} {','.join(_short(n) for n in p.sizes)} / {_short(p.fixed_size)} / "
                         f"{','.join(map(str, p.workers))} / {','.join(map(str, p.parts))}; batch "
                         f"{p.batch_size}, {p.steps} steps\n" for name, p in PRESETS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), help="required unless --report-only")
    p.add_argument("--out", required=True, metavar="DIR", help="where scaling.json, .md and the PNGs go")
    p.add_argument("--workdir", metavar="DIR", help="generated data, partitions and runs (default DIR/work; "
                   "kept, so a resumed sweep reuses them)")
    p.add_argument("--sizes", metavar="N,N,...", help="data-scaling sizes, e.g. 1M,10M,100M (default: the preset's)")
    p.add_argument("--workers", metavar="W,W,...", help="strong/weak scaling worker counts (default: the preset's)")
    p.add_argument("--parts", metavar="P,P,...", help="locality partition counts (default: the preset's)")
    p.add_argument("--fixed-size", metavar="N", help="the strong-scaling graph, and the weak-scaling graph "
                   "per worker (default: the preset's)")
    p.add_argument("--only", metavar="S,S,...", help=f"run only these sections of {', '.join(SECTIONS)} "
                   "(the outputs still show every record in DIR)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="A.B=V",
                   help="override a training setting, e.g. --set train.fanouts=[15,10]")
    p.add_argument("--timeout", type=float, metavar="S", help="seconds allowed per configuration (default: "
                   "the preset's)")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: redraw scaling.md and the plots (and the projection) from DIR/scaling.json")
    p.set_defaults(handler=run)


def _short(n: int) -> str:
    for div, suffix in ((10**9, "B"), (10**6, "M"), (10**3, "K")):
        if n >= div and n % div == 0:
            return f"{n // div}{suffix}"
    return str(n)


def _ints(text: str | None, what: str, count: bool = False) -> tuple[int, ...] | None:
    if text is None:
        return None
    from distgnn.gen import _count

    try:
        values = tuple(_count(t) if count else int(t) for t in text.split(",") if t.strip())
    except (ValueError, argparse.ArgumentTypeError):
        raise UserError(f"{what} {text!r}: write a comma-separated list such as "
                        f"{'1M,10M' if count else '1,2,4'}") from None
    if not values or min(values) < 1:
        raise UserError(f"{what} {text!r}: give one or more positive numbers")
    return values


# --- the plan -----------------------------------------------------------------------------------
@dataclass
class TrainJob:
    """One training configuration, and the sweeps it belongs to (a configuration shared by two
    sweeps, e.g. the fixed graph with ``data_workers`` workers, runs once)."""

    interactions: int
    workers: int
    sweeps: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"train/n={self.interactions}/w={self.workers}"


def plan_training(preset: Preset, sections: set[str]) -> list[TrainJob]:
    """The training configurations of the selected sections, sorted by workers (the simulated
    cluster only grows), then size."""
    jobs: dict[tuple[int, int], TrainJob] = {}

    def add(n: int, w: int, sweep: str) -> None:
        job = jobs.setdefault((n, w), TrainJob(n, w))
        if sweep not in job.sweeps:
            job.sweeps.append(sweep)

    if "data" in sections:
        for n in preset.sizes:
            add(n, preset.data_workers, "data")
    if "strong" in sections:
        for w in preset.workers:
            add(preset.fixed_size, w, "strong")
    if "weak" in sections:
        for w in preset.workers:
            add(preset.fixed_size * w, w, "weak")
    return sorted(jobs.values(), key=lambda j: (j.workers, j.interactions))


# --- the results file ---------------------------------------------------------------------------
class Results:
    """``DIR/scaling.json``: loaded at start (resume), rewritten atomically after every record."""

    def __init__(self, out: Path, header: dict[str, Any]):
        from distgnn import atomic

        self.path = out / "scaling.json"
        self._atomic = atomic
        self.data: dict[str, Any] = {**header, "invocations": [], "records": []}
        if self.path.exists():
            try:
                old = json.loads(self.path.read_text())
            except ValueError:
                raise UserError(f"{self.path} is not valid JSON; remove it or choose another --out") from None
            if old.get("format") != FORMAT:
                raise UserError(f"{self.path} was not written by 'distgnn bench scaling'; choose another --out")
            if old.get("settings", {}).get("settings_id") != header["settings"]["settings_id"]:
                raise UserError(f"{self.path} holds a sweep with other training settings (preset "
                                f"{old.get('preset')!r}, settings {old.get('settings', {}).get('settings_id')}); "
                                f"choose another --out to keep both, or remove it to start afresh")
            self.data["invocations"] = old.get("invocations", [])
            self.data["records"] = old.get("records", [])
            plan = old.get("plan", {})  # a resumed sweep may extend the plan: keep the union
            for k in ("sizes", "workers", "parts"):
                self.data["plan"][k] = sorted(set(plan.get(k, [])) | set(self.data["plan"][k]))

    @classmethod
    def existing(cls, out: Path) -> "Results":
        """The results already in ``out`` (for ``--report-only``), whatever their settings."""
        path = out / "scaling.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            raise UserError(f"--report-only: {path} is missing or not valid JSON; run a sweep into "
                            f"{out} first") from None
        if data.get("format") != FORMAT:
            raise UserError(f"{path} was not written by 'distgnn bench scaling'")
        self = cls.__new__(cls)
        from distgnn import atomic

        self.path, self._atomic, self.data = path, atomic, data
        return self

    def done(self, key: str) -> dict[str, Any] | None:
        for r in self.data["records"]:
            if r["key"] == key and r["status"] == "ok":
                return r
        return None

    def get(self, key: str) -> dict[str, Any] | None:
        for r in self.data["records"]:
            if r["key"] == key:
                return r
        return None

    def put(self, record: dict[str, Any]) -> None:
        record.setdefault("loadavg", _loadavg())
        record.setdefault("finished", _now())
        self.data["records"] = [r for r in self.data["records"] if r["key"] != record["key"]] + [record]
        self.save()

    def save(self) -> None:
        self._atomic.write_json(self.path, self.data)

    def ok(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.data["records"] if r["kind"] == kind and r["status"] == "ok"]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# --- child processes ----------------------------------------------------------------------------
@dataclass
class ChildResult:
    returncode: int
    seconds: float
    peak_rss_bytes: int
    log: Path            # its stderr
    stdout: Path

    def report(self) -> dict[str, Any]:
        """Its ``--json`` report: the last JSON object that starts a line of stdout (Ray's raylet
        may print warnings there before it; the report may span lines)."""
        text = self.stdout.read_text(errors="replace")
        starts = ([0] if text.startswith("{") else []) + [i + 1 for i in range(len(text)) if text.startswith("\n{", i)]
        decoder = json.JSONDecoder()
        for start in reversed(starts):
            try:
                obj, _ = decoder.raw_decode(text, start)
            except ValueError:
                continue
            if isinstance(obj, dict):
                return obj
        raise UserError(f"no JSON report in {self.stdout} (its log: {self.log})")

    def tail(self, lines: int = 3) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        useful = [t for t in text if t.strip() and not t.startswith("(")][-lines:]
        return " | ".join(" ".join(t.split())[:300] for t in useful)


def run_child(cmd: list[str], log: Path, timeout_s: float, env: dict[str, str] | None = None) -> ChildResult:
    """Run ``cmd`` with stderr to ``log`` and stdout to ``log`` + ``.stdout``, within ``timeout_s``
    (then killed, with its process group); its own peak RSS comes from ``wait4``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    stdout = log.with_name(log.name + ".stdout")
    with open(log, "wb") as out, open(stdout, "wb") as sout:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=sout, stderr=out, env=env, start_new_session=True)
        try:
            while True:
                pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() - started > timeout_s:
                    os.killpg(proc.pid, signal.SIGKILL)
                    _, status, rusage = os.wait4(proc.pid, 0)
                    out.write(f"\n(killed: ran longer than {timeout_s:.0f}s)\n".encode())
                    return ChildResult(-9, time.monotonic() - started, rusage.ru_maxrss * 1024, log, stdout)
                time.sleep(0.1)
        except BaseException:
            with _suppress():
                os.killpg(proc.pid, signal.SIGKILL)
                os.wait4(proc.pid, 0)
            raise
    return ChildResult(os.waitstatus_to_exitcode(status), time.monotonic() - started,
                       rusage.ru_maxrss * 1024, log, stdout)


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return exc[0] is not None and issubclass(exc[0], Exception)


def _python() -> list[str]:
    return [sys.executable, "-m", "distgnn.cli"]


# --- the simulated cluster ----------------------------------------------------------------------
class SimCluster:
    """A multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``): a head with no CPUs
    (the drivers connect there; nothing trains there) and one raylet per simulated node with one
    logical CPU and its own object store. It only grows (``ensure``): the plan is sorted by workers."""

    def __init__(self, object_store_bytes: int):
        self.object_store_bytes = int(object_store_bytes)
        self.cluster = None
        self.nodes = 0

    def ensure(self, nodes: int) -> str:
        if self.cluster is None:
            from distgnn.ray_runtime.cluster import AUTH_MODE_ENV

            # token authentication on, as for the private instance ``cluster.connect`` starts; the
            # child drivers inherit the mode, and the token is in ~/.ray
            os.environ[AUTH_MODE_ENV] = "token"
            try:
                from ray._raylet import Config

                Config.initialize("")
                from ray._private.authentication.authentication_token_setup import ensure_token_if_auth_enabled

                ensure_token_if_auth_enabled(None, create_token_if_missing=True)
            except Exception:  # noqa: BLE001 - then Ray's own default applies
                pass
            from ray.cluster_utils import Cluster

            self.cluster = Cluster(initialize_head=True, head_node_args={
                "num_cpus": 0, "object_store_memory": 256 * 2**20, "include_dashboard": False})
        while self.nodes < nodes:
            self.cluster.add_node(num_cpus=1, object_store_memory=self.object_store_bytes)
            self.nodes += 1
        self.cluster.wait_for_nodes()
        return self.cluster.address

    def shutdown(self) -> None:
        if self.cluster is not None:
            with _suppress():
                self.cluster.shutdown()
            self.cluster = None
            self.nodes = 0


# --- reading a training run ---------------------------------------------------------------------
def steady_figures(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-step figures of a Ray training run from its metrics records (``read_metrics``), after
    each rank's first ``train`` record (warm-up). Raises ``ValueError`` if a rank has fewer than two
    ``train`` records. Per-worker figures are means over the ranks; ``edges_per_s`` sums them."""
    by_rank: dict[int, list[dict]] = {}
    for r in records:
        if r.get("type") == "train":
            by_rank.setdefault(int(r.get("rank", 0)), []).append(r)
    if not by_rank:
        raise ValueError("no train records")
    per_rank = []
    for rank, recs in sorted(by_rank.items()):
        recs = sorted(recs, key=lambda r: r["step"])
        if len(recs) < 2:
            raise ValueError(f"rank {rank} has {len(recs)} train record(s); need 2 (the first is warm-up)")
        first, steady = recs[0], recs[1:]
        steps = steady[-1]["step"] - first["step"]
        edges = sum(r["edges"] for r in steady)
        seconds = sum(r["edges"] / r["edges_per_s"] for r in steady)
        stages: dict[str, float] = {}
        for r in steady:
            for k, v in r.get("stage_seconds", {}).items():
                stages[k] = stages.get(k, 0.0) + v
        t0, t1 = first.get("traffic", {}), steady[-1].get("traffic", {})

        def d(key: str) -> float:
            return (t1.get(key, 0) - t0.get(key, 0)) / steps

        per_rank.append({
            "steps": steps, "edges_per_s": edges / max(seconds, 1e-9), "step_seconds": seconds / steps,
            "cpu_seconds_per_step": ((steady[-1].get("cpu_seconds", 0.0) - first.get("cpu_seconds", 0.0)) / steps
                                     if "cpu_seconds" in first else None),
            "compute_cpu_seconds_per_step": ((steady[-1].get("compute_cpu_seconds", 0.0)
                                              - first.get("compute_cpu_seconds", 0.0)) / steps
                                             if "compute_cpu_seconds" in first else None),
            "stages": {k: v / steps for k, v in stages.items()},
            "bytes": {"ps_pull_local": d("pull_bytes_local"), "ps_pull_remote": d("pull_bytes_remote"),
                      "ps_push_local": d("push_bytes_local"), "ps_push_remote": d("push_bytes_remote"),
                      "sample_local": d("local_seeds") * SAMPLE_SEED_BYTES + d("local_edges") * SAMPLE_EDGE_BYTES,
                      "sample_remote": d("remote_seeds") * SAMPLE_SEED_BYTES
                      + d("remote_edges") * SAMPLE_EDGE_BYTES},
            "rows": {"pull_local": d("pull_rows_local"), "pull_remote": d("pull_rows_remote"),
                     "push_local": d("push_rows_local"), "push_remote": d("push_rows_remote")},
            "sample": {"local_seeds": d("local_seeds"), "remote_seeds": d("remote_seeds"),
                       "local_edges": d("local_edges"), "remote_edges": d("remote_edges"),
                       "remote_requests": d("remote_requests")},
        })

    def mean(get) -> float:
        return sum(get(p) for p in per_rank) / len(per_rank)

    def mean_dict(name: str) -> dict[str, float]:
        keys = sorted({k for p in per_rank for k in p[name]})
        return {k: round(mean(lambda p: p[name].get(k, 0.0)), 6) for k in keys}

    rows, sample = mean_dict("rows"), mean_dict("sample")

    def share(remote: float, local: float) -> float | None:
        return round(remote / (remote + local), 4) if remote + local > 0 else None

    cpu = [p["cpu_seconds_per_step"] for p in per_rank]
    compute = [p["compute_cpu_seconds_per_step"] for p in per_rank]
    stages = mean_dict("stages")
    return {
        "steps_measured": min(p["steps"] for p in per_rank),
        "edges_per_s": round(sum(p["edges_per_s"] for p in per_rank), 1),
        "edges_per_s_per_worker": round(mean(lambda p: p["edges_per_s"]), 1),
        "step_seconds": round(mean(lambda p: p["step_seconds"]), 5),
        "cpu_seconds_per_step": None if None in cpu else round(sum(cpu) / len(cpu), 5),
        "compute_cpu_seconds_per_step": None if None in compute else round(sum(compute) / len(compute), 5),
        "stage_seconds_per_step": {k: stages.get(k, 0.0) for k in
                                   (*STAGES, "all_reduce", "sample_local", "sample_remote")},
        "bytes_per_step": mean_dict("bytes"), "rows_per_step": rows, "sample_per_step": sample,
        "remote_fraction": {"pull_rows": share(rows["pull_remote"], rows["pull_local"]),
                            "push_rows": share(rows["push_remote"], rows["push_local"]),
                            "sample_seeds": share(sample["remote_seeds"], sample["local_seeds"]),
                            "sample_edges": share(sample["remote_edges"], sample["local_edges"])},
    }


def memory_and_placement(processes: dict[str, Any] | None) -> dict[str, Any]:
    """Peak RSS per process and where the partitions were trained, from a ``processes`` record."""
    if not processes:
        return {"peak_rss_bytes": None, "placement": None}
    workers, graphs = processes.get("workers", []), processes.get("graph_shards", [])
    pss = processes.get("ps_shards", [])

    def peaks(entries: list[dict]) -> list[int]:
        return [int(e.get("peak_rss_bytes", 0)) for e in entries]

    shard_node = {g["part_id"]: g.get("node_id") for g in graphs}
    on_node = sum(1 for w in workers for p in w.get("parts", []) if shard_node.get(p) == w.get("node_id"))
    return {
        "peak_rss_bytes": {"driver": int(processes.get("driver", {}).get("peak_rss_bytes", 0)),
                           "workers": peaks(workers), "graph_shards": peaks(graphs), "ps_shards": peaks(pss),
                           "max_worker": max(peaks(workers), default=0),
                           "max_graph_shard": max(peaks(graphs), default=0),
                           "max_ps_shard": max(peaks(pss), default=0),
                           "total": int(processes.get("total_peak_rss_bytes", 0))},
        "placement": {"nodes_used": len({w.get("node_id") for w in workers}), "parts_on_worker_node": on_node,
                      "num_parts": len(graphs), "missing": processes.get("missing", [])},
    }


# --- the projection (a model) ---------------------------------------------------------------------
def dense_parameters(config: dict[str, Any]) -> int:
    """Trainable dense weights of the model (what the all-reduce carries)."""
    from distgnn.config import config_from_dict
    from distgnn.model import GATRec

    cfg = config_from_dict(config, "bench scaling")
    return sum(p.numel() for p in GATRec(cfg.model).parameters() if p.requires_grad)


def project(train: dict[str, Any], locality: list[dict[str, Any]], dense_params: int, layers: int,
            nodes: Iterable[int] = PROJECTED_NODES, bandwidths_gbit: Iterable[float] = BANDWIDTHS_GBIT,
            speedups: Iterable[float] = SPEEDUPS) -> dict[str, Any]:
    """Projected step time and throughput on N nodes, one worker each, from one measured ``train``
    record (per worker: compute per step, bytes per step local + remote). The model, for N nodes,
    per-node bandwidth ``bw`` and compute speed-up ``S`` over one core of this machine:

      T(N) = compute_cpu_seconds_per_step / S               forward + backward + dense step (CPU time)
           + cpu_seconds_per_step - that                    the rest of the worker's CPU work, as here
           + r(N) * B / bw                                  remote bytes (sent + received), no overlap
           + (layers + 2) * ROUND_TRIP_S                    one round trip per hop, pull and push
           + 2 (N-1)/N * 4 * dense_params / bw + 2 (N-1) * ALLREDUCE_ALPHA_S   ring all-reduce
      edges/s = N * batch_size / T(N)

    ``B`` is the step's bytes to and from the PS and the graph shards, local and remote together;
    ``r(N)`` the share of them that is remote: (N-1)/N for random placement (an upper bound), or the
    measured METIS share at the largest partition count held for larger N (a lower bound: a cut
    grows with N). Full bisection bandwidth, no congestion, no overlap of communication with
    compute. A model, not a measurement."""
    st = train["stage_seconds_per_step"]
    compute = train.get("compute_cpu_seconds_per_step")
    if compute is None:  # an older record: wall time (inflated on a loaded machine)
        compute = st.get("forward", 0.0) + st.get("backward", 0.0) + st.get("dense_step", 0.0)
    cpu = train.get("cpu_seconds_per_step") or sum(st.get(k, 0.0) for k in STAGES)
    host = max(0.0, cpu - compute)
    b = train["bytes_per_step"]
    ps_total = b["ps_pull_local"] + b["ps_pull_remote"] + b["ps_push_local"] + b["ps_push_remote"]
    sample_total = b["sample_local"] + b["sample_remote"]
    metis = sorted((r for r in locality if r["method"] == "metis"), key=lambda r: r["num_parts"])
    placements: dict[str, Any] = {"random": None}
    if metis:
        top = metis[-1]
        placements[f"metis@{top['num_parts']}"] = (top["remote_fraction"]["pull_rows"],
                                                   top["remote_fraction"]["sample_seeds"])
    rows = []
    for n in nodes:
        for bw_gbit in bandwidths_gbit:
            bw = bw_gbit * 1e9 / 8
            for s in speedups:
                for name, fixed in placements.items():
                    r_ps, r_sample = ((n - 1) / n, (n - 1) / n) if fixed is None else fixed
                    remote = r_ps * ps_total + r_sample * sample_total
                    comm = remote / bw + (layers + 2) * ROUND_TRIP_S
                    allreduce = 2 * (n - 1) / n * 4 * dense_params / bw + 2 * (n - 1) * ALLREDUCE_ALPHA_S
                    step = compute / s + host + comm + allreduce
                    rows.append({"nodes": n, "bandwidth_gbit": bw_gbit, "speedup": s, "placement": name,
                                 "remote_bytes_per_step": round(remote), "step_seconds": round(step, 5),
                                 "compute_seconds": round(compute / s + host, 5), "comm_seconds": round(comm, 5),
                                 "allreduce_seconds": round(allreduce, 6),
                                 "edges_per_s": round(n * train["batch_size"] / step, 1),
                                 "edges_per_s_per_node": round(train["batch_size"] / step, 1)})
    seeds_per_s = DISTDGL["train_seeds"] / DISTDGL["epoch_seconds"]
    return {
        "modelled": True,
        "note": "a model from measured per-step compute and bytes, not a measurement",
        "inputs": {"from": train["key"], "batch_size": train["batch_size"],
                   "compute_seconds_per_step": round(compute, 5), "host_seconds_per_step": round(host, 5),
                   "ps_bytes_per_step": round(ps_total), "sample_bytes_per_step": round(sample_total),
                   "dense_params": dense_params, "round_trips_per_step": layers + 2},
        "network": {"bandwidth_gbit": list(bandwidths_gbit), "round_trip_s": ROUND_TRIP_S,
                    "allreduce_alpha_s": ALLREDUCE_ALPHA_S, "full_bisection": True, "overlap": False},
        "speedups": list(speedups),
        "placements": {k: ("(N-1)/N" if v is None else {"pull_rows": v[0], "sample_seeds": v[1]})
                       for k, v in placements.items()},
        "rows": rows,
        "distdgl": {**DISTDGL, "seeds_per_s": round(seeds_per_s), "seeds_per_s_per_machine":
                    round(seeds_per_s / DISTDGL["machines"])},
    }


# --- the sweep ------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    if args.report_only:
        results = Results.existing(Path(args.out))
        _write_outputs(results, Path(args.out))
        print(f"redrew {Path(args.out) / 'scaling.md'} and the plots from {results.path} "
              f"({len(results.data['records'])} records)", file=sys.stderr)
        return 0
    if args.preset is None:
        raise UserError("--preset is required (smoke, medium or full), unless --report-only")
    preset = PRESETS[args.preset]
    sizes = _ints(args.sizes, "--sizes", count=True)
    workers = _ints(args.workers, "--workers")
    parts = _ints(args.parts, "--parts")
    fixed = _ints(args.fixed_size, "--fixed-size", count=True)
    preset = replace(preset, sizes=sizes or preset.sizes, workers=workers or preset.workers,
                     parts=parts or preset.parts, fixed_size=fixed[0] if fixed else preset.fixed_size,
                     timeout_s=args.timeout or preset.timeout_s)
    if any(p < 2 for p in preset.parts):
        raise UserError("--parts: locality needs at least 2 partitions (with one nothing is remote)")
    sections = set(SECTIONS)
    if args.only:
        sections = {s.strip() for s in args.only.split(",") if s.strip()}
        unknown = sections - set(SECTIONS)
        if unknown:
            raise UserError(f"--only {args.only!r}: unknown section(s) {', '.join(sorted(unknown))}; "
                            f"choose from {', '.join(SECTIONS)}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory")
    work = Path(args.workdir) if args.workdir else out / "work"
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)

    config = _resolved_config(preset, args.overrides)
    settings = {"config": config, "steps": preset.steps, "log_every": preset.log_every,
                "threads_per_worker": 1, "logical_cpus_per_node": 1, "seed": 0,
                "reference_steps": preset.reference_steps, "reference_warmup": preset.reference_warmup,
                "locality_steps": preset.locality_steps}
    settings["settings_id"] = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    import psutil

    header = {"format": FORMAT, "version": VERSION, "command": "distgnn " + shlex.join(sys.argv[1:]),
              "preset": args.preset, "settings": settings,
              "plan": {"sizes": list(preset.sizes), "data_workers": preset.data_workers,
                       "fixed_size": preset.fixed_size, "workers": list(preset.workers),
                       "parts": list(preset.parts), "partition_parts": preset.data_workers},
              "machine": {"physical_cores": psutil.cpu_count(logical=False), "logical_cpus": os.cpu_count(),
                          "memory_bytes": psutil.virtual_memory().total}}
    results = Results(out, header)
    invocation = {"command": header["command"], "started": _now(), "loadavg_start": _loadavg()}
    results.data["invocations"].append(invocation)
    results.save()
    cfg_path = work / f"config-{settings['settings_id']}.yaml"
    import yaml

    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))

    jobs = plan_training(preset, sections)
    steps: list[tuple[str, Any]] = []
    if "partition" in sections:
        steps += [("partition", n) for n in preset.sizes]
    if "locality" in sections:
        steps += [("locality", p) for p in preset.parts]
    steps += [("train", j) for j in jobs]
    if "reference" in sections:
        steps += [("reference", n) for n in preset.sizes]
    print(f"bench scaling: preset {args.preset}, {len(steps)} configurations "
          f"({sum(1 for k, x in steps if results.done(_key(k, x, preset)))} already measured) -> {out}",
          file=sys.stderr, flush=True)

    # a SIGTERM (e.g. a job scheduler's) unwinds like ^C: the simulated cluster is shut down
    try:
        old = signal.signal(signal.SIGTERM, _interrupt)
    except ValueError:  # not the main thread: leave signals alone
        old = None
    sim = SimCluster(_object_store_bytes(jobs))
    bar = tqdm(steps, desc="bench scaling", unit="config", file=sys.stderr, disable=None)
    try:
        for kind, item in bar:
            key = _key(kind, item, preset)
            bar.set_postfix_str(key)
            if results.done(key):
                continue
            started = time.monotonic()
            try:
                if kind == "partition":
                    rec = _partition_point(item, preset, work)
                elif kind == "locality":
                    rec = _locality(item, preset, work, cfg_path)
                elif kind == "train":
                    if sim.cluster is None or sim.nodes < item.workers:
                        bar.set_postfix_str(f"{key}: starting {item.workers} simulated nodes")
                    rec = _train(item, preset, work, out, cfg_path, config, sim)
                else:
                    rec = _reference(item, preset, work, cfg_path)
            except Exception as exc:  # noqa: BLE001 - one configuration failing must not end the sweep
                rec = {"status": "failed", "reason": f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}"}
            rec = {"kind": kind, "key": key, **rec}
            rec.setdefault("seconds", round(time.monotonic() - started, 1))
            results.put(rec)
            tqdm.write(f"{key}: {_one_line(rec)}", file=sys.stderr)
    finally:
        bar.close()
        sim.shutdown()
        if old is not None:
            signal.signal(signal.SIGTERM, old)
        invocation.update(finished=_now(), loadavg_end=_loadavg())
        results.save()
    _write_outputs(results, out)
    failed = [r for r in results.data["records"] if r["status"] == "failed"]
    print(f"wrote {out / 'scaling.json'}, {out / 'scaling.md'} and the plots "
          f"({len(results.data['records'])} records, {len(failed)} failed)", file=sys.stderr)
    return 1 if failed else 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _key(kind: str, item: Any, preset: Preset) -> str:
    if kind == "partition":
        return f"partition/n={item}/p={preset.data_workers}"
    if kind == "locality":
        return f"locality/n={preset.fixed_size}/p={item}"
    if kind == "train":
        return item.key
    return f"reference/n={item}"


def _resolved_config(preset: Preset, overrides: list[str]) -> dict[str, Any]:
    """The base config with ``--set`` overrides, validated as ``distgnn train`` would."""
    from distgnn.config import _apply_override, config_from_dict

    data = base_config(preset.batch_size, preset.log_every)
    for o in overrides:
        _apply_override(data, o)
    config_from_dict(data, "bench scaling settings")  # raises UserError naming a bad field
    return data


def _object_store_bytes(jobs: list[TrainJob]) -> int:
    """Each simulated node's object store: room for its partition's CSC arrays (about 16 bytes per
    interaction per partition) with margin, within a share of /dev/shm."""
    need = max((40 * j.interactions // j.workers for j in jobs), default=0)
    try:
        shm = shutil.disk_usage("/dev/shm").free
    except OSError:
        shm = 8 * 2**30
    most = max(jobs, key=lambda j: j.workers).workers if jobs else 1
    return int(max(300 * 2**20, min(need, 0.6 * shm / (most + 1))))


def _one_line(rec: dict[str, Any]) -> str:
    if rec["status"] != "ok":
        return f"{rec['status']}: {rec.get('reason', '')}"
    if rec["kind"] == "train":
        return (f"{rec['edges_per_s']:,.0f} edges/s ({rec['edges_per_s_per_worker']:,.0f} per worker), "
                f"{rec['cpu_seconds_per_step'] or 0:.3f} CPU s/step, total peak RSS "
                f"{(rec['peak_rss_bytes'] or {}).get('total', 0) / 2**30:.2f} GiB, {rec['seconds']:.0f} s")
    if rec["kind"] == "reference":
        return f"{rec['edges_per_s']:,.0f} edges/s, peak RSS {rec['peak_rss_bytes'] / 2**30:.2f} GiB"
    if rec["kind"] == "locality":
        return ", ".join(f"{m}: {rec[m]['per_step']['remote_seeds']:,.0f} remote seeds/step, "
                         f"{rec[m]['per_step']['pull_rows_remote']:,.0f} remote PS rows/step"
                         for m in ("metis", "random") if m in rec)
    return (f"ours {rec['ours']['process_seconds']:.1f} s / {rec['ours']['peak_rss_bytes'] / 2**30:.2f} GiB"
            + (f", DGL {rec['dgl']['process_seconds']:.1f} s / {rec['dgl']['peak_rss_bytes'] / 2**30:.2f} GiB"
               if "dgl" in rec else ""))


def _generated(work: Path, n: int) -> Path:
    """``n`` interactions generated with seed 0 and no test split, where ``bench partition``'s
    sweep makes (and reuses) them: ``WORK/gen-N-s0``."""
    from distgnn.gen import generate

    gen_dir = work / f"gen-{n}-s0"
    if not (gen_dir / "train").is_dir():
        generate(str(gen_dir), interactions=n, seed=0, test_fraction=0.0, progress=False)
    return gen_dir / "train"


def _partitions(work: Path, n: int, parts: int) -> Path:
    """``n`` generated interactions in ``parts`` METIS partitions (one partition: random, the same
    thing), made once and reused."""
    from distgnn import format as fmt
    from partition.pipeline import CreateOptions, create

    d = work / "parts" / f"n{n}-p{parts}"
    try:
        fmt.load_manifest(d)
        return d
    except (UserError, OSError, ValueError):
        pass
    train = _generated(work, n)
    create(CreateOptions(train=str(train), out=str(d), num_parts=parts, method="metis" if parts > 1 else "random",
                         seed=0, overwrite=d.exists(), progress=False))
    return d


def _partition_point(n: int, preset: Preset, work: Path) -> dict[str, Any]:
    from distgnn.bench.partition import sweep_point

    args = argparse.Namespace(seed=0, num_parts=preset.data_workers, metis_path="auto",
                              timeout=preset.timeout_s, skip_dgl=not preset.partition_dgl)
    _generated(work, n)  # quietly, before the sweep point reuses it
    rec = sweep_point(n, args, work)
    if not preset.partition_dgl and "dgl_skipped" not in rec:
        rec["dgl_skipped"] = "not run in this preset"
    return {"status": "ok", **rec}


def _train(job: TrainJob, preset: Preset, work: Path, out: Path, cfg_path: Path, config: dict[str, Any],
           sim: SimCluster) -> dict[str, Any]:
    from distgnn.metrics import METRICS_DIR, read_metrics

    parts = _partitions(work, job.interactions, job.workers)
    address = sim.ensure(job.workers)
    run_dir = work / "runs" / job.key.replace("/", "_")
    if run_dir.exists():
        shutil.rmtree(run_dir)  # ours: a run of an earlier, interrupted invocation of this sweep
    cmd = _python() + ["train", "--config", str(cfg_path), "--partitions", str(parts), "--backend", "ray",
                       "--num-workers", str(job.workers), "--address", address, "--out", str(run_dir),
                       "--max-steps", str(preset.steps), "--max-failures", "0"]
    started = time.monotonic()
    child = run_child(cmd, run_dir.with_suffix(".log"), preset.timeout_s, env=dict(os.environ))
    base = {"interactions": job.interactions, "workers": job.workers, "num_parts": job.workers,
            "nodes": sim.nodes, "sweeps": job.sweeps, "batch_size": config["train"]["batch_size"],
            "seconds": round(time.monotonic() - started, 1), "command": shlex.join(cmd)}
    if child.returncode != 0:
        return {**base, "status": "failed", "reason": f"exit {child.returncode}: {child.tail()} "
                f"(log: {child.log})"}
    read = read_metrics(run_dir)
    try:
        figures = steady_figures(read.records)
    except ValueError as exc:
        return {**base, "status": "failed", "reason": f"{exc}; raise the preset's steps (log: {child.log})"}
    procs = read.of_type("processes")
    keep = out / "runs" / job.key.replace("/", "_")
    if keep.exists():
        shutil.rmtree(keep)
    shutil.copytree(run_dir / METRICS_DIR, keep / METRICS_DIR)
    shutil.copy2(child.log, keep / "train.log")
    with _suppress():
        child.stdout.unlink()
    shutil.rmtree(run_dir)  # checkpoints of the whole PS: large at 10M+, and not needed
    return {**base, "status": "ok", **figures, **memory_and_placement(procs[-1] if procs else None)}


def _reference(n: int, preset: Preset, work: Path, cfg_path: Path) -> dict[str, Any]:
    import psutil

    need = REFERENCE_BASE_BYTES + REFERENCE_BYTES_PER_INTERACTION * n
    avail = psutil.virtual_memory().available
    if need > 0.8 * avail:
        return {"interactions": n, "status": "skipped",
                "reason": f"not run: needs about {need / 2**30:.0f} GiB by its measured 1 GiB + "
                          f"{REFERENCE_BYTES_PER_INTERACTION} bytes per interaction, {avail / 2**30:.0f} GiB "
                          f"is available"}
    parts = _partitions(work, n, preset.data_workers)
    cmd = _python() + ["bench", "train", "--config", str(cfg_path), "--partitions", str(parts),
                       "--only", "reference", "--steps", str(preset.reference_steps),
                       "--warmup", str(preset.reference_warmup), "--rounds", "1", "--json"]
    child = run_child(cmd, work / "logs" / f"reference-{n}.log", preset.timeout_s)
    base = {"interactions": n, "command": shlex.join(cmd), "seconds": round(child.seconds, 1)}
    if child.returncode != 0:
        return {**base, "status": "failed", "reason": f"exit {child.returncode}: {child.tail()}"}
    result = child.report()
    ref = result["reference"]
    return {**base, "status": "ok", "edges_per_s": round(ref["edges_per_s"], 1), "steps": ref["steps"],
            "peak_rss_bytes": child.peak_rss_bytes, "settings": result.get("reference_settings", {}),
            "setup": result.get("setup", {})}


def _locality(num_parts: int, preset: Preset, work: Path, cfg_path: Path) -> dict[str, Any]:
    n = preset.fixed_size
    train = _generated(work, n)
    cmd = _python() + ["bench", "locality", "--config", str(cfg_path), "--train", str(train),
                       "--num-parts", str(num_parts), "--max-steps", str(preset.locality_steps),
                       "--workdir", str(work / "locality"), "--json"]
    child = run_child(cmd, work / "logs" / f"locality-{n}-p{num_parts}.log", preset.timeout_s)
    base = {"interactions": n, "num_parts": num_parts, "command": shlex.join(cmd), "seconds": round(child.seconds, 1)}
    if child.returncode != 0:
        return {**base, "status": "failed", "reason": f"exit {child.returncode}: {child.tail()}"}
    report = child.report()
    rec: dict[str, Any] = {**base, "status": "ok"}
    for method in ("metis", "random"):
        m = report[method]
        steps = max(m["steps_per_epoch"], 1)
        per = {k: round(m.get(k, 0.0) / steps, 2) for k in
               ("remote_seeds", "local_seeds", "remote_edges", "local_edges", "remote_requests",
                "pull_rows_remote", "pull_rows_local", "pull_bytes_remote")}

        def share(a: str, b: str) -> float | None:
            return round(per[a] / (per[a] + per[b]), 4) if per[a] + per[b] > 0 else None

        rec[method] = {"edge_cut_fraction": m["edge_cut_fraction"], "steps_per_epoch": m["steps_per_epoch"],
                       "steps_run": m["steps_run"], "per_step": per,
                       "remote_fraction": {"sample_seeds": share("remote_seeds", "local_seeds"),
                                           "pull_rows": share("pull_rows_remote", "pull_rows_local")}}
    return rec


# --- outputs --------------------------------------------------------------------------------------
def locality_records(results: Results) -> list[dict[str, Any]]:
    """Locality records flattened to one per (parts, method)."""
    out = []
    for r in results.ok("locality"):
        for method in ("metis", "random"):
            if method in r:
                out.append({"num_parts": r["num_parts"], "method": method, "interactions": r["interactions"],
                            **r[method]})
    return out


def _write_outputs(results: Results, out: Path) -> None:
    """The projection (from the records), scaling.md and the plots; scaling.json last."""
    from distgnn import atomic
    from distgnn.bench import scaling_report as report

    data = results.data
    trains = results.ok("train")
    base = _projection_input(trains, data["plan"])
    if base is not None:
        cfg = data["settings"]["config"]
        data["projection"] = project(base, locality_records(results), dense_parameters(cfg),
                                     int(cfg["model"]["layers"]))
    else:
        data["projection"] = None
    pngs = report.plots(data, locality_records(results), out)
    atomic.write_text(out / "scaling.md", report.markdown(data, locality_records(results), pngs))
    results.save()


def _projection_input(trains: list[dict[str, Any]], plan: dict[str, Any]) -> dict[str, Any] | None:
    """The projection's measured input: the fixed graph with ``data_workers`` workers (no more
    workers than cores here, so wall-clock stage times are not inflated by oversubscription),
    else the multi-worker run on the fixed graph with fewest workers, else any multi-worker run."""
    multi = [t for t in trains if t["workers"] > 1]
    for pick in ([t for t in multi if t["interactions"] == plan["fixed_size"]
                  and t["workers"] == plan["data_workers"]],
                 sorted((t for t in multi if t["interactions"] == plan["fixed_size"]), key=lambda t: t["workers"]),
                 multi):
        if pick:
            return pick[0]
    return None
