"""``distgnn train --backend ray``: the same training loop, spread over Ray.

Driver (this process):
  connect to Ray (local embedded instance by default) -> check resources -> one placement-group
  bundle per partition holding its GraphShard and its parameter-server shard -> a Ray Train
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

from distgnn.errors import UserError


def _worker_parts(rank: int, world: int, num_parts: int) -> list[int]:
    return list(range(rank, num_parts, world))


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Runs inside each Ray Train worker."""
    import numpy as np
    import ray.train
    import torch
    import torch.distributed as dist

    from distgnn import checkpoint as ckpt
    from distgnn.config import config_from_dict
    from distgnn.ray_runtime.graph_shard import RayGraphStore
    from distgnn.trainer import Trainer, build

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = config_from_dict(loop_config["config"], "config")
    run_dir = Path(loop_config["run_dir"])
    book = loop_config["book"]
    parts = _worker_parts(rank, world, book.num_parts)
    graph = RayGraphStore(cfg.data.partitions, loop_config["graph_shards"], local_part=parts[0],
                          timeout_s=loop_config["timeout_s"])
    emb = loop_config["emb"]
    emb.local_part = parts[0]
    trainer = Trainer(cfg, run_dir, parts=build(cfg, graph, backend="ray", emb=emb), rank=rank,
                      world_size=world, steps_per_epoch=loop_config["steps_per_epoch"])
    if trainer.dense_opt is not None:
        trainer.p.model = ray.train.torch.prepare_model(trainer.p.model, move_to_device=False)

    fault = loop_config.get("fault") or {}
    resume_from = ray.train.get_checkpoint()
    if resume_from is not None:
        with resume_from.as_directory() as d:
            trainer.restore(Path(d), restore_embeddings=(rank == 0))
        dist.barrier()  # nobody trains before rank 0 has put the PS snapshot back

    def on_step(step: int) -> None:
        if fault.get("worker") == rank and step == fault.get("step"):
            marker = run_dir / f".fault-injected-rank{rank}-step{step}"
            if not marker.exists():  # crash once, not again after the restart
                marker.write_text("")
                print(f"fault injection: worker {rank} exits at step {step}", file=sys.stderr, flush=True)
                os._exit(3)

    def on_epoch_end(metrics: dict[str, Any]) -> None:
        dist.barrier()  # every worker's pushes for this epoch are in the PS
        if rank == 0:
            path = trainer.save()
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(path)))
        else:
            ray.train.report(metrics)
        dist.barrier()

    trainer.train_loop(on_step=on_step, on_epoch_end=on_epoch_end, resumed=resume_from is not None)


def steps_per_epoch(manifest: dict, world: int, batch_size: int) -> int:
    """Equal steps for every worker: the busiest worker's interactions / batch size."""
    per_worker = [sum(manifest["parts"][p]["num_train_interactions"]
                      for p in _worker_parts(r, world, manifest["num_parts"])) for r in range(world)]
    return max(1, -(-max(per_worker) // batch_size))


def run(cfg, run_dir: Path, num_workers: int, gpus_per_worker: float, address: str | None,
        resume: bool, max_failures: int = 2, fault: dict | None = None,
        timeout_s: float = 300.0) -> dict[str, Any]:
    """Driver: build the Ray job, run it, return the final metrics."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from distgnn import format as fmt
    from distgnn.ray_runtime import cluster
    from distgnn.ray_runtime.graph_shard import create_graph_shards
    from distgnn.ray_runtime.ps import RayEmbeddingStore, create_ps_shards
    from partition.verify import verify_or_raise

    manifest = verify_or_raise(cfg.data.partitions)
    book = fmt.PartitionBook.from_manifest(manifest)
    if num_workers < 1:
        raise UserError(f"--num-workers must be >= 1 (got {num_workers})")
    if num_workers > book.num_parts:
        raise UserError(f"--num-workers {num_workers} is more than the {book.num_parts} partitions in "
                        f"{cfg.data.partitions}; re-partition with --num-parts {num_workers} or use fewer workers")
    cluster.connect(address, num_cpus=None, timeout_s=60, log_to_driver=True)
    cluster.check_resources(num_workers, cpus_per_worker=1, gpus_per_worker=gpus_per_worker)

    pg = cluster.placement_group([{"CPU": 0.01}] * book.num_parts, strategy="SPREAD", timeout_s=timeout_s,
                                 name="distgnn-shards")
    strategies = [cluster.bundle_strategy(pg, p) for p in range(book.num_parts)]
    graph_shards = create_graph_shards(cfg.data.partitions, book.num_parts, strategies, timeout_s=timeout_s)
    ps_shards = create_ps_shards(book, cfg.model.dim, cfg.embedding.optimizer, cfg.embedding.lr,
                                 cfg.embedding.init_std, tuple(cfg.embedding.betas), cfg.embedding.eps,
                                 seed=cfg.train.seed, scheduling_strategies=strategies, timeout_s=timeout_s)
    emb = RayEmbeddingStore(ps_shards, book, cfg.model.dim, cfg.embedding.optimizer, timeout_s=timeout_s)
    loop_config = {"config": cfg.model_dump(mode="json"), "run_dir": str(run_dir.resolve()), "book": book,
                   "graph_shards": graph_shards, "emb": emb, "timeout_s": timeout_s, "fault": fault,
                   "steps_per_epoch": steps_per_epoch(manifest, num_workers, cfg.train.batch_size)}
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=gpus_per_worker > 0,
                                     resources_per_worker={"CPU": 1, **({"GPU": gpus_per_worker}
                                                                        if gpus_per_worker else {})}),
        torch_config=TorchConfig(backend="nccl" if gpus_per_worker > 0 else "gloo", timeout_s=int(timeout_s)),
        run_config=RunConfig(name="ray", storage_path=str((run_dir / "ray").resolve()),
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)))
    stop = threading.Event()
    watcher = threading.Thread(target=_progress, args=(run_dir, cfg.train.epochs, stop), daemon=True)
    watcher.start()
    try:
        result = trainer.fit()
    except Exception as exc:  # Ray Train wraps worker failures; surface one line
        raise UserError(f"Ray training failed after {max_failures} restarts: "
                        f"{str(exc).strip().splitlines()[-1][:300]}; see {run_dir}/ray for worker logs")
    finally:
        stop.set()
        watcher.join(timeout=5)
        ray.util.remove_placement_group(pg)
    return {"metrics": result.metrics, "checkpoint": str(result.checkpoint.path) if result.checkpoint else None}


def _progress(run_dir: Path, epochs: int, stop: threading.Event) -> None:
    """Driver progress bar, fed by the rank-0 records in metrics.jsonl."""
    from tqdm import tqdm

    path = run_dir / "metrics.jsonl"
    bar = tqdm(total=epochs, desc="ray training", unit="epoch", file=sys.stderr, disable=None)
    seen = 0
    while not stop.wait(1.0):
        if not path.exists():
            continue
        lines = path.read_text().splitlines()
        for line in lines[seen:]:
            rec = json.loads(line)
            if rec.get("rank", 0) == 0 and rec.get("type") == "epoch":
                bar.n = rec["epoch"]
                bar.set_postfix(loss=f"{rec.get('loss', float('nan')):.4f}")
                bar.refresh()
        seen = len(lines)
    bar.close()
