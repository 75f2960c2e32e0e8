"""``InferenceWorker``: the Ray actor that runs one worker's share of ``distgnn.inference``.

``distgnn evaluate/recommend --backend ray`` start N of them (one CPU slot or GPU each, spread over
the nodes); worker ``r`` loads only its own partitions (``assigned_parts(r, N, P)``): their in-edges
from the partition files, their layer-0 rows from the checkpoint's shard files
(``checkpoint.load_partition_rows``) and the model's dense weights. The driver
(``launch.infer``) calls ``stage`` once per stage on every worker and waits for all of them, with a
deadline, before the next: that wait is the barrier between layers.
"""
from __future__ import annotations

import os
import resource
from pathlib import Path
from typing import Any

import numpy as np
import ray


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports ru_maxrss in KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class _InferenceWorker:
    def __init__(self, cfg_dict: dict, partitions: str, ckpt: str, rank: int, num_workers: int,
                 work: str, threads: int, device: str = "cpu"):
        import torch
        from dgl.utils import set_num_threads

        from distgnn import checkpoint as ckpt_mod
        from distgnn import format as fmt
        from distgnn.config import config_from_dict
        from distgnn.errors import UserError
        from distgnn.inference import ShardedInference, assigned_parts
        from distgnn.model import GATRec
        from distgnn.ray_runtime.graph_shard import PartitionCSC

        torch.set_num_threads(max(1, threads))
        set_num_threads(max(1, threads))
        self.error: str | None = None
        self.rank = rank
        try:
            self.cfg = cfg = config_from_dict(cfg_dict, "config")
            self.root = partitions
            self.ckpt = Path(ckpt)
            self.manifest = fmt.load_manifest(partitions)
            book = fmt.PartitionBook.from_manifest(self.manifest)
            self.parts = assigned_parts(rank, num_workers, book.num_parts)
            csc = {}
            for p in self.parts:
                src, dst = fmt.read_part_edges(partitions, p)
                csc[p] = PartitionCSC.from_edges(p, book, src, dst)
                del src, dst
            model = GATRec(cfg.model)
            dense = ckpt_mod.read_dense(self.ckpt, "cpu")
            model.load_state_dict(dense["model"])
            self.inf = ShardedInference(model.to(device), book, csc, Path(work), cfg.eval.node_batch, device)
        except UserError as exc:
            self.error = str(exc)

    def ready(self) -> dict[str, Any]:
        from distgnn.errors import UserError

        if self.error is not None:
            raise UserError(f"inference worker {self.rank} on node {ray.util.get_node_ip_address()}: "
                            f"{self.error}")
        return self.info()

    def info(self) -> dict[str, Any]:
        return {"rank": self.rank, "parts": self.parts, "pid": os.getpid(),
                "node_id": ray.get_runtime_context().get_node_id(), "peak_rss_bytes": peak_rss_bytes()}

    def _layer0(self, part: int) -> np.ndarray:
        from distgnn import checkpoint as ckpt_mod

        return ckpt_mod.load_partition_rows(self.ckpt, self.root, part, ("weight",))["weight"]

    def stage(self, name: str) -> dict[str, Any]:
        self.inf.run_stage(name, layer0=self._layer0)
        return self.info()

    def rank_users(self, split: str, k: int, masked_splits: list[str], protocol: str, num_negatives: int,
                   max_users: int | None, seed: int, item_budget: int):
        from distgnn.inference import rank_worker_users

        return rank_worker_users(self.inf, self.root, self.manifest, split, k, masked_splits,
                                 self.cfg.eval.user_batch, protocol, num_negatives, max_users, seed,
                                 item_budget)

    def export(self, out_tmp: str, k: int, max_users: int | None, seed: int, item_budget: int) -> dict:
        from distgnn.export import export_worker

        return export_worker(self.inf, self.root, self.manifest, Path(out_tmp), self.rank, k,
                             self.cfg.eval.user_batch, max_users, seed, item_budget)


InferenceWorker = ray.remote(max_restarts=0)(_InferenceWorker)
