"""The Ray Train worker: ``Trainer.train`` (the same loop as the local backend) with a Ray runtime.

The partitions are split into N groups ``g, g + N, g + 2N, ...`` (one partition each when N
equals the number of partitions), and each worker trains one group: on one node worker ``rank``
takes group ``rank``; on a multi-node cluster each worker takes the group whose shards are on its
own node where one is (``node_groups``: Ray Train places workers without regard to our shards, so
without this a worker could train a partition held on another node and every one of its "local"
reads would cross the network). Its graph store is a ``RayGraphStore`` whose own partitions are
mapped zero-copy from the object store (remote seeds go to the other GraphShards), its embedding
store the shared ``RayEmbeddingStore`` (the parameter-server shards), and its dense
weights go through DDP (gloo on CPU, nccl on GPU, set up by Ray Train).

``RayTrainRuntime`` fills in the loop's hooks (``distgnn.trainer.Runtime``):

- **equal steps**: every worker runs ``steps_per_epoch`` steps (the busiest worker's count; the
  others start their next shuffled pass instead of idling), so DDP's all-reduces,
  barriers and ``ray.train.report`` calls line up;
- **barriers and broadcasts** go through torch.distributed, whose process group carries the job's
  deadline (``TorchConfig(timeout_s)``): a dead peer is an error, not a hang;
- **validation** is sharded (``distgnn.inference``): every worker computes the layers of its own
  partitions and ranks its own users; rank 0 adds up the metric sums and its early-stopping
  decision is broadcast;
- **checkpoints** (``distgnn.checkpoint``, format v2): rank 0 has every PS shard write its own
  files into the checkpoint, then writes dense weights, meta and manifest (commit marker last), and
  reports the checkpoint's path as a metric, never as a Ray Train ``Checkpoint``: Ray Train keeps
  no second copy under ``RUN/ray``. After a restart (``FailureConfig``) every worker resumes from
  our own ``checkpoint.latest(run_dir)`` (rank 0 picks it and broadcasts it) and every PS shard
  reloads its own rows from it, so no update before it is lost;
- **observability**: each ``train`` record carries the rank, the worker's peak RSS, the sampler's
  and PS client's traffic counters (remote degree requests among them), and the stage split of
  the issue (sample_local, sample_remote, pull, forward,
- **fencing and health checks** (D30): each worker syncs the PS shards' generations when it starts
  and every call names them; every worker checks them again at the end of every epoch (a restart
  behind its mapped rows' back is found before they could be checkpointed) and the chief just
  before writing a checkpoint. A stale generation fails the worker, so the job rolls back;
- **faults are loud**: after a restart the chief writes a ``fault`` record (what failed, how it
  was detected, the checkpoint rolled back to, the steps redone; ``distgnn.ray_runtime.faults``),
  which the driver prints as one line;
- **observability**: each ``train`` record carries the rank, the sampler's and PS client's traffic
  counters, and the stage split of the issue (sample_local, sample_remote, pull, forward,
  backward, push, all_reduce; all_reduce is timed by a DDP communication hook and overlaps
  backward), and the worker process's ``pid``, ``node_id``, ``peak_rss_bytes`` (lifetime peak,
  ``distgnn.stages.process_memory``), ``cpu_seconds`` (CPU time of all its threads so far: on
  an oversubscribed machine it still measures the work, where wall time measures the wait too) and
  ``compute_cpu_seconds`` (the training thread's CPU time in forward, backward and dense step so
  far, ``Trainer.compute_cpu_seconds``) and ``niceness`` (the cluster's, not Ray's 15:
  ``cluster.workload_env``).
  The driver reads the last record of each rank for its per-process memory report.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from distgnn.ray_runtime import faults
from distgnn.trainer import Runtime, Trainer

STARTED_MARKER = ".ray-started"


def equal_batches(sampler, epoch: int, start_step: int, steps: int):
    """``steps`` minibatches of the sampler's interactions for ``epoch``, wrapping around.

    Every worker must run the same number of steps (DDP all-reduces and ``ray.train.report`` calls
    must line up), but partitions hold different numbers of interactions: a smaller one starts
    its next shuffled pass instead of idling.
    """
    import torch

    bs = sampler.batch_size
    need = steps * bs
    orders, n = [], 0
    k = 0
    while n < need:
        orders.append(sampler.epoch_order(epoch * 1000 + k))  # distinct shuffle per extra pass
        n += len(orders[-1])
        k += 1
    order = torch.cat(orders)
    for step in range(start_step, steps):
        yield step, order[step * bs:(step + 1) * bs]


def assigned_parts(rank: int, num_workers: int, num_parts: int) -> list[int]:
    """The partitions worker ``rank`` trains: ``rank, rank + N, rank + 2N, ...`` (N workers,
    at most as many as partitions). Its GraphShards and PS shards are local to it when co-located."""
    return list(range(rank, num_parts, num_workers))


def node_groups(rank_nodes: list[str | None], shard_nodes: list[str | None]) -> list[int]:
    """``group[rank]``: which partition group (``assigned_parts(group, N, P)``) each of the N ranks
    trains, so that as many partitions as possible are trained on the node holding their shards.

    The groups themselves never change (so ``steps_per_epoch``, which depends only on them, holds
    for any choice); only which rank takes which is decided: greedily, group by group, the free
    rank on the node holding most of the group's shards, ties going to the rank of the group's own
    number. When every process is on one node that is the identity. Every rank computes the same
    answer from the same gathered lists."""
    n, num_parts = len(rank_nodes), len(shard_nodes)
    free = set(range(n))
    owner = [-1] * n
    for g in range(n):
        parts = assigned_parts(g, n, num_parts)

        def score(r: int) -> tuple[int, int, int]:
            here = sum(1 for p in parts if shard_nodes[p] is not None and shard_nodes[p] == rank_nodes[r])
            return (here, r == g, -r)

        best = max(free, key=score)
        owner[g] = best
        free.remove(best)
    group = [0] * n
    for g, r in enumerate(owner):
        group[r] = g
    return group


def steps_per_epoch(manifest: dict, batch_size: int, num_workers: int | None = None) -> int:
    """Equal steps for every worker: the busiest worker's interactions / batch size."""
    parts = manifest["parts"]
    n = len(parts) if num_workers is None else num_workers
    most = max(sum(parts[p]["num_train_interactions"] for p in assigned_parts(r, n, len(parts)))
               for r in range(n))
    return max(1, -(-most // batch_size))


class RayTrainRuntime(Runtime):
    """``Runtime`` hooks for a Ray Train worker (see the module doc)."""

    show_progress = False  # the driver shows one bar for the job

    def __init__(self, rank: int, world_size: int, steps: int, graph, emb, fault: dict | None,
                 resume_from: str | None, job_id: str = ""):
        self.rank, self.world_size = rank, world_size
        self.is_chief = rank == 0
        self.steps = steps
        self.graph, self.emb = graph, emb
        self.fault = fault or {}
        self.resume_from = resume_from
        self.job_id = job_id
        self._allreduce = {"s": 0.0}
        self._last_sampler: dict[str, float] = {}
        self._progress: faults.Progress | None = None
        self._node_id = _node_id()
        self.parts: list[int] = []  # the partitions this worker trains (set by train_loop_per_worker)
        self.trainer: Trainer | None = None  # for its compute CPU counter (set by train_loop_per_worker)

    # --- setup ------------------------------------------------------------------------------
    def wrap_model(self, trainer: Trainer) -> None:
        """DDP for the dense weights (Ray Train's process group), with a timed all-reduce hook."""
        import ray.train.torch
        from torch.nn.parallel import DistributedDataParallel

        if trainer.dense_opt is None:  # no trainable dense weights (e.g. MF): nothing to all-reduce
            return
        device = trainer.p.device
        check_backend_device(device)
        # The model is already on its device (``build``); DDP gets that device (device_ids for
        # cuda), never Ray's default guess, so nccl always sees the CUDA tensors it needs.
        model = ray.train.torch.prepare_model(trainer.p.model,
                                              move_to_device=device if device.type == "cuda" else False)
        if isinstance(model, DistributedDataParallel):
            model.register_comm_hook(self._allreduce, _timed_allreduce)
        trainer.forward_model = model

    def prepare(self, trainer: Trainer, resume: bool) -> bool:
        """Where to start: after a restart within this job (``FailureConfig``; the started marker
        holds this job's id), the run's latest committed checkpoint; at the first start,
        ``--resume``'s checkpoint; else afresh. The run directory holds only this run's checkpoints
        (an older run was refused, or removed by ``--overwrite`` before the job started), so
        ``latest`` is this run's. Rank 0 picks and broadcasts it (every worker restores the same
        one). After a restart with no checkpoint yet the PS shards are re-initialised, since a
        restarted shard (or the surviving ones' partial updates) must not leak into the new start.

        After a restart the chief also writes the ``fault`` record, from what the failed attempt
        left (``distgnn.ray_runtime.faults``); at every start it records this attempt's layout
        (nodes, pids, shard generations) for the next one. Last, every worker checks that no PS
        shard restarted since it synced (a restart during start-up would otherwise go unseen until
        the end of the epoch)."""
        import torch.distributed as dist

        from distgnn import checkpoint as ckpt

        run_dir = trainer.run_dir
        marker = run_dir / STARTED_MARKER
        restart, chosen = False, None
        if self.is_chief:
            restart = marker.exists() and marker.read_text().strip() == self.job_id
            if not restart:  # a new job: evidence of an earlier one's faults is not ours
                faults.clear(run_dir)
                marker.write_text(self.job_id)  # from now on, a failure makes the next start a restart
            last = ckpt.latest(run_dir) if restart else None
            chosen = str(last) if last is not None else self.resume_from
        chosen = self.agree(chosen)
        restored = chosen is not None
        if restored:
            trainer.restore(Path(chosen), embeddings=self.is_chief)
        if not restored and restart and self.is_chief:
            print("restart before the first checkpoint: re-initialising the parameter server",
                  file=sys.stderr, flush=True)
            self.emb.reset()
        ranks = [None] * self.world_size
        dist.all_gather_object(ranks, {"rank": self.rank, "pid": os.getpid(), "node_id": _node_id()})
        if self.is_chief:
            now = self._layout(ranks)
            if restart:
                self._record_fault(trainer, now, Path(chosen).name if restored
                                   else "the initial state (no checkpoint yet)")
            faults.write_layout(run_dir, now)
        dist.barrier()
        self.emb.check_generations("at start")
        return restored

    def _layout(self, ranks: list[dict]) -> dict:
        """Where this attempt runs: every rank's node and pid, every shard's generation and node."""
        from distgnn.ray_runtime.cluster import get_with_deadline

        ps = self.emb.check_generations("at start")  # the chief's own check, with the answers
        shards = self.graph.sampler.shards
        graph = get_with_deadline([s.info.remote() for s in shards], self.graph.timeout_s,
                                  "GraphShard info", [f"GraphShard {p}" for p in range(len(shards))])
        return {"job_id": self.job_id, "time": time.time(), "ranks": ranks,
                "ps": [{k: a.get(k) for k in ("generation", "node_id", "pid", "loaded_from")} for a in ps],
                "graph": [{k: g.get(k) for k in ("generation", "node_id", "pid")} for g in graph]}

    def _record_fault(self, trainer: Trainer, now: dict, rolled_back_to: str) -> None:
        """The ``fault`` record of the failure this restart recovers from (chief only); the
        notes it consumed are removed."""
        import ray

        run_dir = trainer.run_dir
        alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive", n.get("alive", False))}
        rec = faults.compose(faults.read_layout(run_dir), now, alive, faults.read_notes(run_dir),
                             rolled_back_to, trainer.global_step, faults.max_progress(run_dir))
        rec.update(epoch=trainer.epoch, step=trainer.global_step)
        trainer._log(rec)
        print(faults.fault_line(rec), file=sys.stderr, flush=True)
        faults.clear(run_dir, keep_layout=True)

    def check_health(self, trainer: Trainer, where: str) -> None:
        """Every PS shard answers within the deadline with the generation this worker synced
        (``RayEmbeddingStore.check_generations``); else the worker fails and the job rolls back.
        Fault injection ``ps_idle_epoch``: the chief kills a shard just before, while it is idle."""
        self._set_progress(trainer)  # the epoch's last step is done: it counts if redone
        f = self.fault
        if (self.is_chief and where == "before checkpoint" and f.get("ps_idle_epoch") is not None
                and trainer.epoch == f["ps_idle_epoch"] + 1):
            self._kill_idle_shard(trainer, int(f.get("ps_shard") or 0))
        self.emb.check_generations(where)

    def _kill_idle_shard(self, trainer: Trainer, part: int, timeout_s: float = 120.0) -> None:
        """Fault injection: kill PS shard ``part`` while no call is in flight (once per run) and wait,
        without calling it, until Ray has restarted it, so the health check meets the new
        incarnation, as it would after an unnoticed crash."""
        import ray

        from distgnn.ray_runtime.cluster import actor_state

        marker = trainer.run_dir / f".fault-injected-ps{part}-idle-epoch{trainer.epoch - 1}"
        if marker.exists():
            return
        marker.write_text("")
        shard = self.emb.shards[part]
        _, before = actor_state(shard)
        print(f"fault injection: PSShard {part} killed while idle at the end of epoch {trainer.epoch - 1}",
              file=sys.stderr, flush=True)
        faults.write_note(trainer.run_dir, f"ps{part}", what=f"injected fault: PSShard {part} killed "
                          f"while idle at the end of epoch {trainer.epoch - 1}")
        ray.kill(shard, no_restart=False)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state, restarts = actor_state(shard)
            if state == "ALIVE" and restarts > before:
                return
            time.sleep(0.2)

    # --- the loop's hooks -------------------------------------------------------------------
    def batches(self, trainer: Trainer, epoch: int, start_step: int):
        return self.steps, equal_batches(trainer.sampler, epoch, start_step, self.steps)

    def _set_progress(self, trainer: Trainer) -> None:
        """This rank's completed steps, for the next chief's ``steps_redone`` should this attempt
        fail. Opened after ``prepare``, once the chief has cleared the failed attempt's values."""
        if self._progress is None:
            self._progress = faults.Progress(trainer.run_dir, self.rank)
        self._progress.set(trainer.global_step)

    def before_step(self, trainer: Trainer, step: int) -> None:
        self._set_progress(trainer)
        f = self.fault
        if f.get("worker") == self.rank and f.get("epoch", 0) == trainer.epoch and f.get("step") == step:
            marker = trainer.run_dir / f".fault-injected-rank{self.rank}-epoch{trainer.epoch}-step{step}"
            if not marker.exists():  # crash once, not again after the restart
                marker.write_text("")
                print(f"fault injection: worker {self.rank} exits at epoch {trainer.epoch} step {step}",
                      file=sys.stderr, flush=True)
                faults.write_note(trainer.run_dir, f"rank{self.rank}", what=f"injected fault: rank "
                                  f"{self.rank} exited at epoch {trainer.epoch} step {step}")
                os._exit(3)

    def log_fields(self) -> dict:
        sampler = self.graph.sampler.counters()
        stages = {"sample_local": sampler["sample_local_s"] - self._last_sampler.get("sample_local_s", 0.0),
                  "sample_remote": sampler["sample_remote_wait_s"]
                  - self._last_sampler.get("sample_remote_wait_s", 0.0),
                  "all_reduce": self._allreduce["s"]}
        self._last_sampler = sampler
        self._allreduce["s"] = 0.0
        from distgnn.stages import process_memory

        mem = process_memory()
        return {"rank": self.rank, "parts": self.parts, "stage_seconds": stages,
                "traffic": {**sampler, **self.emb.counters()}, "pid": mem["pid"], "node_id": self._node_id,
                "peak_rss_bytes": mem["peak_rss_bytes"],
                "cpu_seconds": round(time.process_time(), 3),
                "compute_cpu_seconds": round(getattr(self.trainer, "compute_cpu_seconds", 0.0), 4),
                "niceness": os.nice(0)}

    def barrier(self, what: str) -> None:
        import torch.distributed as dist

        dist.barrier()

    def agree(self, value: Any) -> Any:
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def validate(self, trainer: Trainer) -> dict | None:
        """Sharded validation (``distgnn.inference``): every worker computes the layers of its own
        partitions (layer 0 pulled from the parameter server) into per-layer files under the run
        directory, with a barrier between layers, ranks its own users, and rank 0 adds up the
        workers' metric sums. No process holds the whole graph or every node's embedding."""
        import shutil

        import torch
        import torch.distributed as dist

        from distgnn.evaluation import MASKED_SPLITS
        from distgnn.inference import (DEFAULT_ITEM_BUDGET, ShardedInference, combine_sums,
                                       rank_worker_users, work_dir)

        cfg = trainer.cfg
        graph = self.graph
        graph.sampler._ensure_local()
        work = Path(self.agree(str(work_dir(trainer.run_dir, f"valid-{trainer.epoch}")) if self.is_chief
                               else None))
        inf = ShardedInference(trainer.p.model, graph.book, {p: graph.sampler.local[p] for p in graph.local_parts},
                               work, cfg.eval.node_batch, trainer.p.device)
        emb = self.emb

        def layer0(part: int):
            lo, hi = int(graph.book.gid_start[part]), int(graph.book.gid_end[part])
            out = [emb.pull(torch.arange(a, min(a + cfg.eval.node_batch, hi))).numpy()
                   for a in range(lo, hi, cfg.eval.node_batch)]
            import numpy as np
            return np.concatenate(out) if out else np.zeros((0, cfg.model.dim), np.float32)

        try:
            for stage in inf.stages():
                inf.run_stage(stage, layer0=layer0)
                dist.barrier()  # the process group's deadline bounds it
            masked = [x for x in MASKED_SPLITS[cfg.eval.split] if x in graph.manifest.get("heldout", {})]
            e = cfg.eval
            res = rank_worker_users(inf, graph.root, graph.manifest, e.split, e.k, masked, e.user_batch,
                                    e.protocol, e.num_negatives, e.max_users, cfg.train.seed,
                                    e.item_budget_bytes or DEFAULT_ITEM_BUDGET)
            results = [None] * self.world_size
            dist.all_gather_object(results, res)
            dist.barrier()  # every worker is done with the files
        finally:
            if self.is_chief:
                shutil.rmtree(work, ignore_errors=True)
        if not self.is_chief:
            return None
        num_items = int(graph.manifest["num_nodes"]["item"])
        return combine_sums(results, cfg.eval.k, num_items)

    def report(self, trainer: Trainer, record: dict, path: Path | None) -> None:
        """The record, with rank 0's checkpoint path, to Ray Train as metrics only: a Ray Train
        ``Checkpoint`` would be copied whole into ``RUN/ray`` (a second copy of every embedding),
        and restarts resume from our own checkpoints anyway (``prepare``)."""
        import ray.train
        import torch.distributed as dist

        ray.train.report({**record, "checkpoint_path": str(path) if path is not None else None})
        dist.barrier()


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux reports KiB): what the worker's memory
    bound (docs/architecture.md D28) is measured by."""
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _node_id() -> str | None:
    """The Ray node this process runs on (None outside Ray)."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # noqa: BLE001 - descriptive only
        return None


def worker_device(kind: str) -> str:
    """``cuda``: the GPU Ray Train assigned to this worker (``cuda:k``); else ``cpu``."""
    if kind != "cuda":
        return "cpu"
    import ray.train.torch

    dev = ray.train.torch.get_device()
    dev = dev[0] if isinstance(dev, list) else dev
    if dev.type != "cuda":
        raise RuntimeError(f"this worker was given GPUs but Ray Train's device is {dev}; "
                           f"check that torch sees CUDA here (distgnn doctor)")
    return str(dev)


def check_backend_device(device) -> None:
    """nccl reduces CUDA tensors only: a CPU model under an nccl group is a wiring bug, not a
    slow path, so it stops here with the reason."""
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_backend() == "nccl" and device.type != "cuda":
        raise RuntimeError(f"the process group is nccl but the model is on {device}; "
                           f"nccl never runs over CPU tensors (train.device must be cuda or auto)")


def _timed_allreduce(state: dict, bucket):
    """DDP's default all-reduce (mean), timed from launch to completion."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    t = time.perf_counter()
    fut = default_hooks.allreduce_hook(None, bucket)

    def done(f):
        state["s"] += time.perf_counter() - t
        return f.value()

    return fut.then(done)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Runs inside each Ray Train worker: worker ``rank`` trains the partition group ``node_groups``
    gives it (group ``rank`` unless another rank's node holds its shards)."""
    import ray.train
    import torch

    from distgnn.config import config_from_dict
    from distgnn.ray_runtime.graph_shard import RayGraphStore

    # Ray Train tees a worker's sys.stdout/sys.stderr into its own log, and Ray forwards both copies
    # to the driver: every line would show twice. The process's own stderr reaches the driver once
    # (and the worker's log file).
    sys.stderr = sys.__stderr__
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    cfg = config_from_dict(loop_config["config"], "config")
    cfg.train.device = worker_device(loop_config.get("device", "cpu"))
    world = ctx.get_world_size()
    run_dir = loop_config["run_dir"]
    trainer = None
    try:
        shard_nodes = loop_config.get("shard_nodes") or [None] * len(loop_config["graph_shards"])
        rank_nodes: list = [None] * world
        if world > 1:  # every rank's node, for the same answer everywhere
            import torch.distributed as dist

            dist.all_gather_object(rank_nodes, _node_id())
        else:
            rank_nodes = [_node_id()]
        group = node_groups(rank_nodes, shard_nodes)[rank]
        parts = assigned_parts(group, world, len(loop_config["graph_shards"]))
        graph = RayGraphStore(cfg.data.partitions, loop_config["graph_shards"], local_parts=parts,
                              timeout_s=loop_config["timeout_s"])
        emb = loop_config["emb"]
        emb.local_parts = tuple(parts)
        emb.sync_generations()  # fencing: every call of this attempt names these generations
        # own partitions' rows through shared memory, if their shards are on this node
        attached = emb.attach_local() if cfg.embedding.shared_memory else True
        trainer = Trainer(cfg, run_dir, graph=graph, backend="ray", emb=emb)
        if not attached:  # a slower path, never a silent one: a warning record, shown by the driver
            missing = [p for p in parts if p not in emb._views]
            why = "; ".join(emb.shm_fallbacks[p] for p in missing if p in emb.shm_fallbacks)
            trainer.warnings.append(
                f"rank {rank}: the parameter-server rows of partition(s) {missing} are not in shared "
                f"memory on this worker's node ({why or 'not shared'}); their pulls and pushes go "
                f"through calls")
        # Ray sets OMP_NUM_THREADS=1 in a 1-CPU worker; DGL's kernels (SpMM, SDDMM, edge softmax in
        # GATConv) read OpenMP's setting, torch's ops its own: set both.
        threads = max(1, int(loop_config["threads_per_worker"]))
        torch.set_num_threads(threads)
        from dgl.utils import set_num_threads
        set_num_threads(threads)
        runtime = RayTrainRuntime(rank, world, int(loop_config["steps_per_epoch"]), graph, emb,
                                  loop_config.get("fault"), loop_config.get("resume_from"),
                                  loop_config.get("job_id", ""))
        runtime.parts, runtime.trainer = parts, trainer
        runtime.wrap_model(trainer)
        if cfg.embedding.ordered_pushes:  # reproducible: pushes take turns in group order, not
            # rank order: which rank trains which group depends on where Ray Train placed the ranks,
            # which a restart (or another run) may change, and the order decides the rows (D32)
            emb.order_pushes(group, world)
        trainer.train(resume=False, runtime=runtime)
    except BaseException as exc:  # what this worker saw, for the restarted chief's fault record
        faults.error_note(run_dir, rank, exc, trainer.global_step if trainer is not None else -1)
        raise
