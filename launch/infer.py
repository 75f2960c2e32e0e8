"""The driver of ``distgnn evaluate/recommend --backend ray``: sharded inference on Ray workers.

connect (a local embedded Ray instance, or ``--address``) -> check the cluster has ``num_workers``
slots -> one ``InferenceWorker`` per slot (spread over the nodes), each loading only its own
partitions -> for each stage (layer 0, each layer, final) every worker computes its partitions'
rows and the driver waits for all, with a deadline, before the next stage -> either ranking
(every worker ranks its own users; the driver adds up the metric sums) or export (every worker
writes its own Parquet part files into the output's temporary directory; the driver writes the
output manifest last and renames the directory into place).

The stage files live in a scratch directory beside the run (``RUN/.infer-<tag>.tmp-<pid>``),
removed at the end whatever happens; the run directory must be on storage every node can read,
as for checkpoints (docs/architecture.md D29).
"""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

from distgnn.errors import RayCallError, UserError


def _progress(msg: str) -> None:
    print(f"  {msg}", file=sys.stderr, flush=True)


def run(cfg, run_dir: str | Path, ckpt_path: Path, num_workers: int, address: str | None,
        task: Callable[[list], Any], timeout_s: float = 3600.0, threads: int | None = None,
        tag: str = "eval") -> tuple[Any, list[dict]]:
    """Start the workers, run every inference stage, then ``task(workers)``; returns its result
    and the workers' process records (rank, partitions, node, pid, peak RSS)."""
    import ray

    from distgnn import format as fmt
    from distgnn.inference import work_dir
    from distgnn.ray_runtime import cluster
    from distgnn.ray_runtime.cluster import get_with_deadline
    from distgnn.ray_runtime.inference_worker import InferenceWorker

    partitions = str(Path(cfg.data.partitions).resolve())
    manifest = fmt.load_manifest(partitions)
    fmt.check_files(partitions, manifest, fmt.graph_files(manifest))
    num_parts = len(manifest["parts"])
    if not 1 <= num_workers <= num_parts:
        raise UserError(f"--num-workers {num_workers} does not fit the {num_parts} partitions in "
                        f"{partitions}: each worker takes one or more whole partitions; pass "
                        f"--num-workers between 1 and {num_parts}")
    owned = not ray.is_initialized()
    cluster.connect(address, timeout_s=60, log_to_driver=True)
    workers: list = []
    work = None
    try:
        cluster.check_resources(num_workers, cpus_per_worker=1)
        total_cpus = int(ray.cluster_resources().get("CPU", 1))
        threads = threads or max(1, min(cfg.train.threads, total_cpus // num_workers))
        work = work_dir(Path(run_dir).resolve(), tag)
        cfg_dict = cfg.model_dump(mode="json")
        cfg_dict["data"]["partitions"] = partitions
        t0 = time.perf_counter()
        workers = [InferenceWorker.options(num_cpus=1, scheduling_strategy="SPREAD").remote(
            cfg_dict, partitions, str(Path(ckpt_path).resolve()), r, num_workers, str(work), threads)
            for r in range(num_workers)]
        names = [f"inference worker {r}" for r in range(num_workers)]
        get_with_deadline([w.ready.remote() for w in workers], timeout_s, "loading the inference workers",
                          names)
        _progress(f"{num_workers} workers loaded their partitions in {time.perf_counter() - t0:.1f}s")
        stages = ["layer-0"] + [f"layer-{i + 1}" for i in range(cfg.model.layers)] + ["final"]
        infos: list[dict] = []
        for stage in stages:
            t = time.perf_counter()
            infos = get_with_deadline([w.stage.remote(stage) for w in workers], timeout_s,
                                      f"inference stage {stage}", names)
            _progress(f"{stage} done in {time.perf_counter() - t:.1f}s")
        t = time.perf_counter()
        result = task(workers)
        _progress(f"{tag} done in {time.perf_counter() - t:.1f}s")
        infos = get_with_deadline([w.info.remote() for w in workers], timeout_s, "worker info", names)
        return result, infos
    except RayCallError:
        raise
    finally:
        for w in workers:
            ray.kill(w)
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
        if owned:
            cluster.shutdown()


def evaluate(cfg, run_dir, ckpt_path: Path, split: str, k: int, num_workers: int, address: str | None,
             timeout_s: float = 3600.0) -> dict:
    """Sharded ``evaluate``: the metrics of ``evaluation.ranking_metrics`` computed by the workers."""
    from distgnn import format as fmt
    from distgnn.evaluation import MASKED_SPLITS
    from distgnn.inference import DEFAULT_ITEM_BUDGET, combine_sums
    from distgnn.ray_runtime.cluster import get_with_deadline

    manifest = fmt.load_manifest(cfg.data.partitions)
    masked = [s for s in MASKED_SPLITS[split] if s in manifest.get("heldout", {})]
    num_items = int(manifest["num_nodes"]["item"])
    e = cfg.eval

    def task(workers):
        results = get_with_deadline(
            [w.rank_users.remote(split, k, masked, e.protocol, e.num_negatives, e.max_users, cfg.train.seed,
                                 e.item_budget_bytes or DEFAULT_ITEM_BUDGET) for w in workers],
            timeout_s, f"ranking the {split} users", [f"inference worker {r}" for r in range(len(workers))])
        return combine_sums(results, k, num_items)

    metrics, infos = run(cfg, run_dir, ckpt_path, num_workers, address, task, timeout_s, tag="eval")
    return {"metrics": metrics, "masked": ["train", *masked], "processes": infos}


def recommend(cfg, run_dir, ckpt_path: Path, k: int, out: Path, num_workers: int, address: str | None,
              max_users: int | None = None, timeout_s: float = 3600.0, overwrite: bool = False) -> dict:
    """Sharded ``recommend``: every worker writes its part files into ``out`` (a directory), built
    under a temporary name and renamed into place after the driver writes ``_manifest.json``."""
    from distgnn import atomic
    from distgnn.export import write_dir_manifest
    from distgnn.inference import DEFAULT_ITEM_BUDGET
    from distgnn.ray_runtime.cluster import get_with_deadline

    box: dict[str, Any] = {}
    with atomic.AtomicDir(out, overwrite=overwrite) as tmp:
        def task(workers):
            recs = get_with_deadline(
                [w.export.remote(str(tmp.resolve()), k, max_users, cfg.train.seed,
                                 cfg.eval.item_budget_bytes or DEFAULT_ITEM_BUDGET) for w in workers],
                timeout_s, "writing recommendations", [f"inference worker {r}" for r in range(len(workers))])
            return recs

        files, infos = run(cfg, run_dir, ckpt_path, num_workers, address, task, timeout_s, tag="recommend")
        box["manifest"] = write_dir_manifest(tmp, files, k, str(ckpt_path))
        box["processes"] = infos
    return box
