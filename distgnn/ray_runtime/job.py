"""``distgnn train --backend ray``: the same training loop, spread over Ray.

Driver (this process):
  connect to Ray (local embedded instance by default) -> check resources -> one GraphShard per
  partition (spread over nodes) and its parameter-server shard on the same node -> a Ray Train
  ``TorchTrainer`` with one worker per GPU (or CPU slot) -> wait (with a driver progress bar fed
  by the workers' metrics.jsonl) -> evaluation and export run as for the local backend.

Workers (``train_loop_per_worker``):
  worker ``r`` trains on partitions ``r, r + N, ...``; its graph store is a ``RayGraphStore`` whose
  local part is mapped zero-copy from the object store, its embedding store the shared
  ``RayEmbeddingStore``; dense weights go through DDP (gloo on CPU, nccl on GPU, set up by Ray
  Train). Every worker runs the same number of steps per epoch (smaller partitions wrap around),
  so DDP's all-reduces and ``ray.train.report`` calls line up. At the end of an epoch all workers
  meet at a barrier, rank 0 writes the checkpoint (dense weights + a PS snapshot in orig-id space,
  commit marker last) and reports it; restarts (``FailureConfig``) resume from the last committed
  checkpoint, restoring the PS shards from its snapshot, so no update before it is lost.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from distgnn.errors import RayCallError, UserError


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


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Runs inside each Ray Train worker: worker ``rank`` trains partition ``rank``."""
    import ray.train
    import torch
    import torch.distributed as dist

    from distgnn.config import config_from_dict
    from distgnn.ray_runtime.graph_shard import RayGraphStore
    from distgnn.trainer import Trainer

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    cfg = config_from_dict(loop_config["config"], "config")
    run_dir = Path(loop_config["run_dir"])
    graph = RayGraphStore(cfg.data.partitions, loop_config["graph_shards"], local_part=rank,
                          timeout_s=loop_config["timeout_s"])
    emb = loop_config["emb"]
    emb.local_part = rank
    trainer = Trainer(cfg, run_dir, graph=graph, backend="ray", emb=emb)
    torch.set_num_threads(max(1, int(loop_config["threads_per_worker"])))
    raw_model = trainer.p.model
    if trainer.dense_opt is not None:  # Ray Train's DDP all-reduces the dense gradients in backward()
        trainer.p.model = ray.train.torch.prepare_model(raw_model, move_to_device=False)
    ddp_model = trainer.p.model
    steps = int(loop_config["steps_per_epoch"])
    fault = loop_config.get("fault") or {}

    resume_from = ray.train.get_checkpoint()
    if resume_from is not None:
        with resume_from.as_directory() as d:
            trainer.restore(Path(d))
        dist.barrier()

    while trainer.epoch < cfg.train.epochs:
        timers: dict[str, float] = {}
        interval = {"loss": 0.0, "steps": 0, "edges": 0, "t": time.perf_counter()}
        epoch_loss, epoch_steps = 0.0, 0
        for step, idx in equal_batches(trainer.sampler, trainer.epoch, trainer.step_in_epoch, steps):
            if (fault.get("worker") == rank and fault.get("epoch", 0) == trainer.epoch
                    and fault.get("step") == step):
                marker = run_dir / f".fault-injected-rank{rank}-epoch{trainer.epoch}-step{step}"
                if not marker.exists():  # crash once, not again after the restart
                    marker.write_text("")
                    print(f"fault injection: worker {rank} exits at epoch {trainer.epoch} step {step}",
                          file=sys.stderr, flush=True)
                    os._exit(3)
            t = time.perf_counter()
            loss = trainer.run_step(idx, timers)
            trainer.train_seconds += time.perf_counter() - t
            trainer.step_in_epoch = step + 1
            trainer.global_step += 1
            epoch_loss += loss
            epoch_steps += 1
            interval["loss"] += loss
            interval["steps"] += 1
            interval["edges"] += len(idx)
            if interval["steps"] == cfg.train.log_every or step + 1 == steps:
                now = time.perf_counter()
                trainer._log({"type": "train", "rank": rank, "epoch": trainer.epoch,
                              "step": trainer.global_step, "loss": interval["loss"] / interval["steps"],
                              "edges_per_s": interval["edges"] / max(now - interval["t"], 1e-9),
                              "stage_seconds": {k: round(v, 4) for k, v in timers.items()},
                              "traffic": {**graph.sampler.counters(), **emb.counters()}})
                timers = {}
                interval = {"loss": 0.0, "steps": 0, "edges": 0, "t": time.perf_counter()}
        trainer.epoch += 1
        trainer.step_in_epoch = 0
        metrics = {"epoch": trainer.epoch, "loss": epoch_loss / max(epoch_steps, 1)}
        dist.barrier()  # every worker's pushes for this epoch are in the PS before the snapshot
        if rank == 0:
            trainer.p.model = raw_model  # checkpoints hold the plain module's weights
            path = trainer.save()
            trainer.p.model = ddp_model
            trainer._log({"type": "epoch", "rank": 0, **metrics})
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(path)))
        else:
            ray.train.report(metrics)
        dist.barrier()


def steps_per_epoch(manifest: dict, batch_size: int) -> int:
    """Equal steps for every worker: the largest partition's interactions / batch size."""
    most = max(p["num_train_interactions"] for p in manifest["parts"])
    return max(1, -(-most // batch_size))


def run(cfg, run_dir: Path, num_workers: int | None, gpus_per_worker: float, address: str | None,
        max_failures: int = 2, fault: dict | None = None, timeout_s: float = 300.0,
        stall_timeout_s: float = 600.0) -> dict[str, Any]:
    """Driver: build the Ray job, run it, return Ray Train's final metrics and checkpoint path."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from distgnn import checkpoint as ckpt
    from distgnn import format as fmt
    from distgnn.ray_runtime import cluster
    from distgnn.ray_runtime.ps import RayEmbeddingStore
    from partition.verify import verify_or_raise

    # Ray workers do not share the driver's working directory: hand them an absolute path.
    cfg.data.partitions = str(Path(cfg.data.partitions).resolve())
    manifest = verify_or_raise(cfg.data.partitions)
    book = fmt.PartitionBook.from_manifest(manifest)
    num_workers = book.num_parts if num_workers is None else num_workers
    if num_workers != book.num_parts:
        raise UserError(f"--num-workers {num_workers} does not match the {book.num_parts} partitions in "
                        f"{cfg.data.partitions}: each worker trains one partition; re-partition with "
                        f"--num-parts {num_workers} or pass --num-workers {book.num_parts}")
    if ckpt.committed(run_dir) or (run_dir / "metrics.jsonl").exists():
        raise UserError(f"{run_dir} already holds a run; choose another --out (or --overwrite)")
    owned = not _ray_initialized()
    info = cluster.connect(address, timeout_s=60, log_to_driver=True)
    try:
        cluster.check_resources(num_workers, cpus_per_worker=1, gpus_per_worker=gpus_per_worker)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(cfg.to_yaml())
        graph_shards, ps_shards = _start_shards(cfg, book, timeout_s)
        emb = RayEmbeddingStore(ps_shards, book, cfg.model.dim, cfg.embedding.optimizer, timeout_s=timeout_s)
        total_cpus = int(ray.cluster_resources().get("CPU", 1))
        loop_config = {"config": cfg.model_dump(mode="json"), "run_dir": str(run_dir.resolve()),
                       "graph_shards": graph_shards, "emb": emb, "timeout_s": timeout_s, "fault": fault,
                       "threads_per_worker": max(1, min(cfg.train.threads, total_cpus // num_workers)),
                       "steps_per_epoch": steps_per_epoch(manifest, cfg.train.batch_size)}
        use_gpu = gpus_per_worker > 0
        trainer = TorchTrainer(
            train_loop_per_worker, train_loop_config=loop_config,
            scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                         resources_per_worker={"CPU": 1, **({"GPU": gpus_per_worker}
                                                                            if use_gpu else {})}),
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo", timeout_s=int(timeout_s)),
            run_config=RunConfig(name="train", storage_path=str((run_dir / "ray").resolve()),
                                 failure_config=FailureConfig(max_failures=max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=2)))
        try:
            result = _fit_with_watchdog(trainer, run_dir, cfg.train.epochs, stall_timeout_s)
        except RayCallError:
            raise
        except Exception as exc:  # Ray Train's WorkerGroupError etc.: one line, logs on disk
            last = [line for line in str(exc).strip().splitlines() if line.strip()][-1][:300]
            raise RayCallError(f"Ray training failed (after up to {max_failures} restarts): {last}; "
                               f"worker logs are under {info.get('session_dir') or 'the Ray session dir'}")
        finally:
            for actor in graph_shards + ps_shards:
                ray.kill(actor)
    finally:
        if owned:
            cluster.shutdown()
    return {"metrics": result.metrics, "checkpoint": str(ckpt.latest(run_dir))}


def _start_shards(cfg, book, timeout_s: float) -> tuple[list, list]:
    """One GraphShard per partition, spread over the nodes, and each partition's parameter-server
    shard on the same node as its GraphShard (node affinity), so a partition's structure and rows
    live together. Both are 0-CPU actors: they fit beside the training workers."""
    from distgnn.ray_runtime import cluster
    from distgnn.ray_runtime.graph_shard import create_graph_shards
    from distgnn.ray_runtime.ps import create_ps_shards

    graph_shards = create_graph_shards(cfg.data.partitions, book.num_parts, ["SPREAD"] * book.num_parts,
                                       timeout_s=timeout_s)
    infos = cluster.get_with_deadline([g.info.remote() for g in graph_shards], timeout_s, "GraphShard info")
    strategies = [cluster.node_strategy(i["node_id"], soft=True) for i in infos]
    ps_shards = create_ps_shards(book, cfg.model.dim, cfg.embedding.optimizer, cfg.embedding.lr,
                                 cfg.embedding.init_std, tuple(cfg.embedding.betas), cfg.embedding.eps,
                                 seed=cfg.train.seed, scheduling_strategies=strategies, timeout_s=timeout_s,
                                 crash=(cfg.train.fault.ps_shard, cfg.train.fault.ps_after_pushes)
                                 if cfg.train.fault.ps_shard is not None else None)
    return graph_shards, ps_shards


def _fit_with_watchdog(trainer, run_dir: Path, epochs: int, stall_timeout_s: float):
    """``trainer.fit()`` with a driver progress bar and a stall deadline.

    Ray Train retries a worker group that cannot start forever; a job that stops making progress
    (no new record in metrics.jsonl for ``stall_timeout_s``) is turned into an error, not a hang.
    """
    from tqdm import tqdm

    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as exc:  # re-raised in the driver thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True, name="ray-train-fit")
    thread.start()
    path = run_dir / "metrics.jsonl"
    bar = tqdm(total=epochs, desc="ray training", unit="epoch", file=sys.stderr, disable=None)
    last_progress, seen = time.monotonic(), 0
    try:
        while thread.is_alive():
            thread.join(timeout=1.0)
            lines = path.read_text().splitlines() if path.exists() else []
            if len(lines) > seen:
                last_progress = time.monotonic()
                for line in lines[seen:]:
                    rec = json.loads(line)
                    if rec.get("type") == "epoch":
                        bar.n = rec["epoch"]
                        bar.set_postfix(loss=f"{rec.get('loss', float('nan')):.4f}")
                        bar.refresh()
                seen = len(lines)
            elif time.monotonic() - last_progress > stall_timeout_s:
                raise RayCallError(f"Ray training made no progress for {stall_timeout_s:.0f}s (no new "
                                   f"record in {path}); workers may not fit on the cluster or are stuck")
    finally:
        bar.close()
    if "error" in box:
        raise box["error"]
    return box["result"]


def _ray_initialized() -> bool:
    import ray

    return ray.is_initialized()
