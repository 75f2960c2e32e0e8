"""Builds and runs the Ray job of ``distgnn train --backend ray`` (the driver side).

connect to Ray (a local embedded instance by default, or ``--address``) -> check the partitions
and the cluster's resources -> one GraphShard actor per partition (dealt round-robin over the
nodes that can run a worker) and its parameter-server shard on the same node -> a Ray Train
``TorchTrainer`` with one worker per partition or group of partitions (the groups r, r + N, ...;
each worker takes the group held on its own node, ``worker.node_groups``), each on one GPU
(``--gpus-per-worker``) or CPU slot, restarted from the last checkpoint
by ``FailureConfig`` -> wait, with a progress bar fed by the workers' metrics files and a stall
deadline -> each process's peak RSS (driver, workers, GraphShards, PS shards), collected before the
shards are killed and appended as one ``processes`` record to the driver's metrics file -> the
committed checkpoint, which ``distgnn evaluate``/``recommend`` read exactly as for the local
backend.

What each worker runs is ``distgnn.ray_runtime.worker.train_loop_per_worker``: the local
backend's ``Trainer.train`` with Ray graph and embedding stores and a Ray runtime.

On an existing cluster, submit the same command with ``ray job submit`` (see the README); the
examples next to this file start a cluster (``examples/ray-cluster.yaml``) or run the job on
Kubernetes (``examples/rayjob.yaml``).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

from distgnn.errors import RayCallError, UserError


def deadlines(cfg, manifest: dict, num_workers: int) -> dict[str, float]:
    """The job's deadlines (``cfg.runtime``): the configured values, or defaults scaled with the
    data. Barriers and the stall watchdog must outlast a validation (the workers exchange no
    records while they infer and rank), estimated from the measured costs of sharded inference
    (~2 us per directed edge per layer on one CPU core, docs/architecture.md D29) and full
    ranking (~1e10 multiply-adds/s per core), split over the workers."""
    r = cfg.runtime
    users = int(manifest["num_nodes"]["user"])
    items = int(manifest["num_nodes"]["item"])
    ranked = min(users, cfg.eval.max_users) if cfg.eval.max_users else users
    if cfg.eval.protocol == "sampled":
        items = cfg.eval.num_negatives
    edges = 2 * int(manifest["num_interactions"])
    est = (edges * max(cfg.model.layers, 1) * 2e-6 + ranked * items * cfg.model.dim / 1e10) / max(num_workers, 1)
    barrier = r.barrier_timeout_s or max(1800.0, 3.0 * est)
    stall = r.stall_timeout_s or max(600.0, barrier)
    return {"call": float(r.call_timeout_s), "barrier": float(barrier), "stall": float(stall),
            "estimated_validation_s": round(est, 1)}


def run(cfg, run_dir: Path, num_workers: int | None, gpus_per_worker: float, address: str | None,
        max_failures: int = 2, fault: dict | None = None, timeout_s: float | None = None,
        stall_timeout_s: float | None = None, resume: bool = False,
        barrier_timeout_s: float | None = None, overwrite: bool = False,
        node_memory: int | None = None) -> dict[str, Any]:
    """Build the Ray job, run it; return Ray Train's final metrics, the last checkpoint's path and
    the ``processes`` record (per-process peak RSS, ``process_report``).

    ``resume``: continue the run in ``run_dir`` from its last committed checkpoint (the same
    checkpoint files as the local backend's, so a run may also move between backends).
    ``overwrite``: ``run_dir`` holds a run of ours (``distgnn.rundir.check_out`` said so) to be
    replaced; it is removed only after the partitions, options and cluster resources are checked.
    ``node_memory``: bytes per node the memory estimate is compared with, instead of what Ray
    reports (``--node-memory``).

    Every check that can refuse the job runs before the run directory is touched: the resources
    (CPU/GPU slots for the workers), the memory estimate (``distgnn.ray_runtime.estimate``, printed
    on stderr), and the graph shards loading their partitions on their nodes (a partition
    directory a node cannot read is one ``UserError`` line naming the node)."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from distgnn import atomic, rundir
    from distgnn import checkpoint as ckpt
    from distgnn import format as fmt
    from distgnn.ray_runtime import cluster
    from distgnn.ray_runtime.ps import RayEmbeddingStore
    from distgnn.ray_runtime.worker import steps_per_epoch, train_loop_per_worker
    from distgnn.trainer import check_eval_split

    from distgnn.device import ray_worker_device

    device = ray_worker_device(cfg.train.device, gpus_per_worker)  # before anything starts
    # Ray workers do not share the driver's working directory: hand them an absolute path.
    cfg.data.partitions = str(Path(cfg.data.partitions).resolve())
    # only the files training reads: the test split is not one of them (it may be absent)
    manifest = fmt.load_manifest(cfg.data.partitions)
    fmt.check_files(cfg.data.partitions, manifest, fmt.graph_files(manifest))
    check_eval_split(cfg, manifest, cfg.data.partitions, ray_backend=True)
    book = fmt.PartitionBook.from_manifest(manifest)
    num_workers = book.num_parts if num_workers is None else num_workers
    limits = deadlines(cfg, manifest, num_workers)  # explicit arguments (tests) win over the config
    timeout_s = limits["call"] if timeout_s is None else timeout_s
    barrier_timeout_s = limits["barrier"] if barrier_timeout_s is None else barrier_timeout_s
    stall_timeout_s = limits["stall"] if stall_timeout_s is None else stall_timeout_s
    if not 1 <= num_workers <= book.num_parts:
        raise UserError(f"--num-workers {num_workers} does not fit the {book.num_parts} partitions in "
                        f"{cfg.data.partitions}: each worker trains one or more whole partitions; pass "
                        f"--num-workers between 1 and {book.num_parts}, or re-partition with "
                        f"--num-parts {max(num_workers, 1)}")
    resume_from = None
    if resume:
        resume_from = ckpt.latest(run_dir)
        if resume_from is None:
            raise UserError(f"--resume: {run_dir} has no committed checkpoint to resume from; "
                            f"drop --resume to start a new run")
        meta = ckpt.read_meta(resume_from)
        ckpt.check_compatible(resume_from, meta["config"], cfg.model_dump(mode="json"))
    elif not overwrite and rundir.holds_run(run_dir):
        raise UserError(f"{run_dir} already holds a run; pass --resume to continue it, or choose "
                        f"another --out (or --overwrite)")
    owned = not _ray_initialized()
    # Worker output stays in the worker logs (named in any error): Ray Train's own chatter, and
    # the state-API warnings its placement-group cleaner prints every second when the dashboard
    # is off, would bury the job's progress. The driver prints progress and validation results
    # from the metrics files instead.
    info = cluster.connect(address, timeout_s=60, log_to_driver=False)
    graph_shards: list = []
    ps_shards: list = []
    shm_dir = None
    processes = None
    try:
        cluster.check_resources(num_workers, cpus_per_worker=1, gpus_per_worker=gpus_per_worker)
        est = check_memory(cfg, manifest, num_workers, node_memory)
        shm_dir = _shm_dir() if cfg.embedding.shared_memory else None
        graph_shards, ps_shards, shard_nodes = _start_shards(cfg, book, max(timeout_s, SHARD_START_TIMEOUT_S),
                                                             shm_dir, gpus_per_worker, run_dir)
        # every check has passed (a refusal is one line, naming the estimate itself)
        print(f"distgnn train: {est.summary()}", file=sys.stderr, flush=True)
        if overwrite:  # every check has passed: only now is the old run removed
            atomic.discard(run_dir)
        rundir.sweep(run_dir)
        rundir.write_marker(run_dir, "ray")
        atomic.write_text(run_dir / "config.yaml", cfg.to_yaml())
        emb = RayEmbeddingStore(ps_shards, book, cfg.model.dim, cfg.embedding.optimizer, timeout_s=timeout_s,
                                max_pending_pushes=cfg.embedding.async_pushes, lr=cfg.embedding.lr)
        total_cpus = int(ray.cluster_resources().get("CPU", 1))
        threads = max(1, min(cfg.train.threads, total_cpus // num_workers))
        import uuid

        loop_config = {"config": cfg.model_dump(mode="json"), "run_dir": str(run_dir.resolve()),
                       "job_id": uuid.uuid4().hex,  # tells a restart within this job from a new job
                       "graph_shards": graph_shards, "shard_nodes": shard_nodes, "emb": emb,
                       "timeout_s": timeout_s, "fault": fault,
                       "resume_from": str(resume_from.resolve()) if resume_from else None,
                       "threads_per_worker": threads, "device": device,
                       "steps_per_epoch": steps_per_epoch(manifest, cfg.train.batch_size, num_workers)}
        use_gpu = gpus_per_worker > 0
        # A fresh Ray Train run name per invocation. Ray Train is given no checkpoints (workers
        # report metrics only): checkpoints are ours (distgnn.checkpoint), resumed from by the
        # workers themselves (resume_from, or the run's latest after a restart), never copied.
        run_name = f"train-{time.strftime('%Y%m%d-%H%M%S')}"
        trainer = TorchTrainer(
            train_loop_per_worker, train_loop_config=loop_config,
            scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                         placement_strategy=cfg.runtime.placement_strategy,
                                         resources_per_worker={"CPU": 1, **({"GPU": gpus_per_worker}
                                                                            if use_gpu else {})}),
            # The process group's deadline bounds every barrier and broadcast; it must cover rank 0's
            # validation, during which the other workers wait (a dead peer fails sooner: Ray Train
            # sees the process go and tears the group down).
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo",
                                     timeout_s=int(max(timeout_s, barrier_timeout_s))),
            run_config=RunConfig(name=run_name, storage_path=str((run_dir / "ray").resolve()),
                                 failure_config=FailureConfig(max_failures=max_failures),
                                 # Ray starts a 1-CPU worker with OMP_NUM_THREADS=1; OpenMP reads it
                                 # at process start (the worker also sets its threads at run time)
                                 # (and DISTGNN_TEST_* fault-injection hooks reach the workers, as
                                 # they reach the shards: the checkpoint writer's ENOSPC, D32)
                                 # (and at the cluster's niceness, not Ray's 15: workload_env)
                                 worker_runtime_env={"env_vars": {"OMP_NUM_THREADS": str(threads),
                                                                  **cluster.workload_env(), **_test_env()}}))
        try:
            result = _fit_with_watchdog(trainer, run_dir, cfg.train.epochs, stall_timeout_s)
        except RayCallError:
            raise
        except Exception as exc:  # Ray Train's WorkerGroupError etc.: one line, logs on disk
            text = str(exc)
            if "running low on memory" in text or "OutOfMemoryError" in type(exc).__name__:
                raise RayCallError(f"Ray training failed: Ray killed workers because the node ran out "
                                   f"of memory ({_memory_line(text)}); free memory on the node, or "
                                   f"train with more nodes or partitions; worker logs are under "
                                   f"{info.get('session_dir') or 'the Ray session dir'}")
            last = [line for line in text.strip().splitlines() if line.strip()][-1][:300]
            raise RayCallError(f"Ray training failed (after up to {max_failures} restarts): {last}; "
                               f"worker logs are under {info.get('session_dir') or 'the Ray session dir'}")
    finally:
        if graph_shards or ps_shards:
            # while the shards still live (also after a failure: what was reached is reported);
            # a diagnostic must neither mask the job's own error nor keep the shards alive
            try:
                processes = process_report(run_dir, graph_shards, ps_shards, min(timeout_s, REPORT_TIMEOUT_S))
            except Exception as exc:  # noqa: BLE001
                print(f"distgnn train: warning: no per-process memory report: {exc}", file=sys.stderr)
        if shm_dir and ps_shards:  # the shards remove their shared rows on their nodes, then go
            with contextlib.suppress(RayCallError):
                cluster.get_with_deadline([s.close.remote() for s in ps_shards], 30, "closing PS shards")
        if shm_dir:
            shutil.rmtree(shm_dir, ignore_errors=True)
        for actor in graph_shards + ps_shards:
            ray.kill(actor)
        if owned:
            cluster.shutdown()
    return {"metrics": result.metrics, "checkpoint": str(ckpt.latest(run_dir)), "processes": processes}


# Starting the shards is a process start and imports (torch, DGL) plus a partition load, not a call:
# it gets at least this long whatever runtime.call_timeout_s says. A small call deadline (the chaos
# benchmark's 30 s, D32) made a job fail at its start on a loaded 2-core machine.
SHARD_START_TIMEOUT_S = 120.0


def _test_env() -> dict[str, str]:
    """The driver's ``DISTGNN_TEST_*`` variables (test hooks), for the training workers."""
    return {k: v for k, v in os.environ.items() if k.startswith("DISTGNN_TEST_")}


REPORT_TIMEOUT_S = 30.0  # the whole process report's deadline: a diagnostic never holds up the job


def process_report(run_dir: Path, graph_shards: list, ps_shards: list, timeout_s: float) -> dict[str, Any]:
    """Peak RSS of every process of the job, appended to the driver's metrics file as one
    ``{"type": "processes"}`` record and returned.

    The driver measures itself; each worker's figure is from its last ``train`` record (the
    workers have exited by now; after a restart that is the last process of the rank); the
    GraphShards and PS shards are asked (``counters``) under one deadline for all of them. A shard
    that does not answer is listed in ``missing`` with the reason, never fatal: the job's result
    does not depend on a diagnostic. ``total_peak_rss_bytes`` sums the peaks: an upper bound of the
    job's footprint, since peaks need not coincide and shared pages (the mapped partitions, the PS
    rows in /dev/shm) count in every process that touches them."""
    import ray

    from distgnn import metrics
    from distgnn.ray_runtime import cluster
    from distgnn.stages import process_memory

    def entry(d: dict, **ident) -> dict:
        keep = ("pid", "node_id", "peak_rss_bytes", "rss_bytes", "rss_shared_bytes")
        return {**ident, **{k: d[k] for k in keep if d.get(k) is not None}}

    try:
        node = ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - descriptive only
        node = None
    record: dict[str, Any] = {"type": "processes", "driver": entry({**process_memory(), "node_id": node})}
    last: dict[int, dict] = {}
    for rec in metrics.read_metrics(run_dir).of_type("train"):
        if "rank" in rec and "peak_rss_bytes" in rec:
            last[int(rec["rank"])] = rec
    record["workers"] = [entry(last[r], rank=r, **({"parts": last[r]["parts"]} if "parts" in last[r] else {}))
                         for r in sorted(last)]
    missing: list[str] = []
    deadline = time.monotonic() + timeout_s
    for kind, actors, name in (("graph_shards", graph_shards, "GraphShard"), ("ps_shards", ps_shards, "PSShard")):
        refs = []
        for p, actor in enumerate(actors):  # every request is sent before any is waited on
            try:
                refs.append(actor.counters.remote())
            except Exception as exc:  # noqa: BLE001 - a dead handle: reported, not raised
                refs.append(exc)
        record[kind] = []
        for p, ref in enumerate(refs):
            try:
                if isinstance(ref, Exception):
                    raise RayCallError(f"{name} {p}: {' '.join(str(ref).split())[:200]}")
                c = cluster.get_with_deadline(ref, max(0.1, deadline - time.monotonic()),
                                              f"{name} {p} counters")
                record[kind].append(entry(c, part_id=p))
            except RayCallError as exc:
                missing.append(str(exc))
    record["missing"] = missing
    everyone = [record["driver"], *record["workers"], *record["graph_shards"], *record["ps_shards"]]
    record["total_peak_rss_bytes"] = sum(int(e.get("peak_rss_bytes", 0)) for e in everyone)
    record["num_processes"] = len(everyone)
    try:
        metrics.append(run_dir, None, record)
    except OSError as exc:  # e.g. the run directory went away: the caller still gets the record
        record["missing"].append(f"not written to {metrics.driver_path(run_dir)}: {exc}")
    return record


def format_processes(record: dict[str, Any]) -> str:
    """The ``processes`` record as a few lines for people (``distgnn train`` prints it at the end)."""
    from distgnn.stages import human_bytes

    rows = [("driver", record.get("driver", {}))]
    rows += [(f"worker {w['rank']}", w) for w in record.get("workers", [])]
    rows += [(f"graph shard {g['part_id']}", g) for g in record.get("graph_shards", [])]
    rows += [(f"PS shard {q['part_id']}", q) for q in record.get("ps_shards", [])]
    nodes: dict[str, int] = {}
    for _, e in rows:  # short node labels: n0, n1, ... in order of appearance
        if e.get("node_id") is not None:
            nodes.setdefault(e["node_id"], len(nodes))
    lines = [f"peak RSS per process ({record.get('num_processes', len(rows))} processes, sum "
             f"{human_bytes(record.get('total_peak_rss_bytes', 0))}: an upper bound, peaks need not "
             f"coincide and shared pages count in each process):"]
    for label, e in rows:
        node = f"n{nodes[e['node_id']]}" if e.get("node_id") in nodes else "?"
        lines.append(f"  {label:<14} node {node:<4} pid {e.get('pid', '?'):<8} "
                     f"{human_bytes(e.get('peak_rss_bytes', 0)):>10}")
    for m in record.get("missing", []):
        lines.append(f"  not reported: {m}")
    return "\n".join(lines)


def check_memory(cfg, manifest: dict, num_workers: int, node_memory: int | None = None):
    """The job's memory estimate (``distgnn.ray_runtime.estimate``); a ``UserError`` if the
    busiest node would need more than the smallest node has."""
    from distgnn.ray_runtime import estimate

    est = estimate.estimate(manifest, cfg, num_workers, estimate.ray_nodes(node_memory))
    estimate.check(est, overridden=node_memory is not None)
    return est


def _shm_dir() -> str | None:
    """A fresh directory name on the nodes' tmpfs for the PS shards' shared rows (None if the
    driver's node has no /dev/shm; each shard also checks its own node and falls back to calls)."""
    import uuid

    from distgnn import atomic

    if not os.path.isdir("/dev/shm"):  # a slower path, said out loud (the trainers warn too)
        print("warning: this node has no /dev/shm: the parameter-server shards keep their rows "
              "private and every pull and push is a call", file=sys.stderr)
        return None
    for d in atomic.sweep_shm("/dev/shm"):  # leftovers of killed jobs on this node
        print(f"removed stale shared memory {d} (its parameter-server shards are gone)", file=sys.stderr)
    return f"/dev/shm/{atomic.SHM_PREFIX}{uuid.uuid4().hex[:12]}"


def _start_shards(cfg, book, timeout_s: float, shm_dir: str | None = None,
                  gpus_per_worker: float = 0.0, run_dir: Path | None = None) -> tuple[list, list, list]:
    """One GraphShard per partition, dealt round-robin over the nodes that can run a training
    worker (``shard_nodes``), and each partition's parameter-server shard on the same node as its
    GraphShard, so a partition's structure and rows live together; the worker on that node then
    trains it (``worker.node_groups``). Returns the shards and each partition's node.

    Placement is by node affinity, then checked: Ray's ``SPREAD`` put every 0-CPU shard on one node
    of a multi-node cluster (D27). The affinity is *soft* so that a shard restarted after its node
    was lost goes to a surviving node (D30); a shard that did not land where asked is one warning
    line. Both are 0-CPU actors: they fit beside the training workers. With ``shm_dir`` each shard
    keeps its rows in shared memory there, for the trainer on its node to map; with ``run_dir`` a
    restarted PS shard reloads the run's last committed checkpoint."""
    from distgnn.ray_runtime import cluster
    from distgnn.ray_runtime.graph_shard import create_graph_shards
    from distgnn.ray_runtime.ps import create_ps_shards

    nodes = shard_nodes(book.num_parts, gpus_per_worker)
    graph_strategies = ([cluster.node_strategy(n, soft=True) for n in nodes] if nodes
                        else ["SPREAD"] * book.num_parts)
    graph_shards = create_graph_shards(cfg.data.partitions, book.num_parts, graph_strategies,
                                       timeout_s=timeout_s)
    infos = cluster.get_with_deadline([g.info.remote() for g in graph_shards], timeout_s, "GraphShard info")
    strategies = [cluster.node_strategy(i["node_id"], soft=True) for i in infos]
    fault = cfg.train.fault
    ps_shards = create_ps_shards(book, cfg.model.dim, cfg.embedding.optimizer, cfg.embedding.lr,
                                 cfg.embedding.init_std, tuple(cfg.embedding.betas), cfg.embedding.eps,
                                 seed=cfg.train.seed, scheduling_strategies=strategies, timeout_s=timeout_s,
                                 crash=(fault.ps_shard, fault.ps_after_pushes)
                                 if fault.ps_shard is not None and fault.ps_idle_epoch is None else None,
                                 shm_dir=shm_dir, run_dir=run_dir, partitions_root=cfg.data.partitions)
    ps_infos = cluster.get_with_deadline([s.health.remote() for s in ps_shards], timeout_s, "PSShard health")
    for line in placement_warnings(nodes, [i["node_id"] for i in infos], [i["node_id"] for i in ps_infos]):
        print(f"distgnn train: warning: {line}", file=sys.stderr, flush=True)
    return graph_shards, ps_shards, [i["node_id"] for i in infos]


def placement_warnings(asked: list[str], graph_nodes: list[str], ps_nodes: list[str]) -> list[str]:
    """One line per partition whose shards did not land where they were asked to (soft affinity
    lets Ray place them elsewhere): training still works, but that partition's rows and structure
    are then read across nodes, which the user should know about."""
    out = []
    for p, (g, s) in enumerate(zip(graph_nodes, ps_nodes)):
        if asked and g != asked[p]:
            out.append(f"partition {p}'s GraphShard runs on node {g[:8]}, not {asked[p][:8]} as asked")
        if s != g:
            out.append(f"partition {p}'s parameter-server shard runs on node {s[:8]}, not beside its "
                       f"GraphShard on {g[:8]}: its rows are not in that node's shared memory")
    return out


def shard_nodes(num_parts: int, gpus_per_worker: float = 0.0) -> list[str]:
    """A node for each partition's shards: the alive nodes where Ray Train can place a worker (at
    least one CPU, and ``gpus_per_worker`` GPUs), sorted by id, dealt round-robin; empty when there
    is none (then Ray chooses)."""
    import ray

    def can_train(n: dict) -> bool:
        res = n.get("Resources", {})
        return (bool(n.get("Alive", n.get("alive", False))) and float(res.get("CPU", 0)) >= 1
                and float(res.get("GPU", 0)) >= gpus_per_worker)

    ids = sorted(n["NodeID"] for n in ray.nodes() if can_train(n))
    return [ids[p % len(ids)] for p in range(num_parts)] if ids else []


def _fit_with_watchdog(trainer, run_dir: Path, epochs: int, stall_timeout_s: float):
    """``trainer.fit()`` with a driver progress bar, the validation results as they come, and a
    stall deadline.

    Ray Train retries a worker group that cannot start forever; a job that stops making progress
    (no new record in any rank's metrics file for ``stall_timeout_s``) is turned into an error,
    not a hang. Records come from ``distgnn.metrics.read_metrics``: a torn line is skipped (and
    read once complete), never fatal; every rank's records only ever grow, so counts mark what
    was shown.
    """
    from tqdm import tqdm

    from distgnn.metrics import read_metrics

    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as exc:  # re-raised in the driver thread
            box["error"] = exc

    # records already in each file (a resumed run's old ones are not shown again), counted before
    # the job can add any; per file, since only each rank's file is append-only, not the merged list
    shown = {path: len(recs) for path, recs in read_metrics(run_dir).by_file()}
    thread = threading.Thread(target=target, daemon=True, name="ray-train-fit")
    thread.start()
    bar = tqdm(total=epochs, desc="ray training", unit="epoch", file=sys.stderr, disable=None)
    last_progress = time.monotonic()
    try:
        while True:
            thread.join(timeout=1.0)
            done = not thread.is_alive()  # then one last read: the final records are shown too
            grew = False
            for path, recs in read_metrics(run_dir).by_file():
                for rec in recs[shown.get(path, 0):]:
                    _show(rec, bar)
                grew |= len(recs) > shown.get(path, 0)
                shown[path] = max(shown.get(path, 0), len(recs))
            if done:
                break
            if grew:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > stall_timeout_s:
                raise RayCallError(f"Ray training made no progress for {stall_timeout_s:.0f}s (no new "
                                   f"record in {run_dir}/metrics); {stall_report(run_dir)} (raise "
                                   f"runtime.stall_timeout_s if this stage is legitimately slow)")
    finally:
        bar.close()
    if "error" in box:
        raise box["error"]
    return box["result"]


def _show(rec: dict, bar) -> None:
    """One record on the driver's console: the chief's checkpoints move the bar; validation
    results, warnings (any rank's) and recovered faults are one line each."""
    from tqdm import tqdm

    from distgnn.ray_runtime.faults import fault_line

    kind = rec.get("type")
    if kind == "checkpoint":
        bar.n = rec["epoch"]
        bar.set_postfix(loss=f"{rec.get('loss', float('nan')):.4f}")
        bar.refresh()
    elif kind == "valid":
        values = ", ".join(f"{k} {v:.4f}" for k, v in rec.items() if k.startswith(("recall@", "ndcg@")))
        tqdm.write(f"epoch {rec['epoch']}: {rec['split']} {values}", file=sys.stderr)
    elif kind == "warning":
        tqdm.write(f"warning: {rec.get('message')}", file=sys.stderr)
    elif kind == "fault":
        tqdm.write(fault_line(rec), file=sys.stderr)


def _memory_line(text: str) -> str:
    """The 'Memory on the node ... was X used / Y limit' part of Ray's OOM message."""
    import re

    m = re.search(r"was ([\d.]+GB used / [\d.]+GB limit)", text)
    return m.group(1) if m else "memory exhausted"


def stall_report(run_dir: Path) -> str:
    """Which rank went quiet first, at which stage, and the last lines of its stderr: the ranks'
    metrics files say when each last wrote (their mtime) and what (its last record, with the pid
    that finds the worker's Ray log file)."""
    import json

    from distgnn.metrics import metric_files
    from distgnn.ray_runtime import cluster

    quiet = None
    for f in metric_files(run_dir):
        if not f.name.startswith("rank-"):
            continue
        try:
            lines = [ln for ln in f.read_text().splitlines() if ln.strip()]
            last = json.loads(lines[-1]) if lines else {}
            mtime = f.stat().st_mtime
        except (OSError, ValueError):
            continue
        if quiet is None or mtime < quiet[0]:
            quiet = (mtime, int(f.stem.split("-")[1]), last)
    if quiet is None:
        return "no worker wrote any record: workers may not fit on the cluster or never started"
    _, rank, last = quiet
    stage = (f"after its {last.get('type')} record of epoch {last.get('epoch')} step {last.get('step')}"
             if last else "before its first record")
    where = f"rank {rank} went quiet first, {stage}"
    pid = last.get("pid") if last else None
    d = cluster.logs_dir()
    if pid and d is not None:
        for log in sorted(d.glob(f"worker-*-{pid}.err")):
            try:
                tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-3:]
            except OSError:
                continue
            if tail:
                where += "; its last stderr lines: " + " | ".join(t[:200] for t in tail)
            break
    return where


def _ray_initialized() -> bool:
    import ray

    return ray.is_initialized()
