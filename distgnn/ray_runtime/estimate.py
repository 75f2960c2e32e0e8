"""Memory a Ray training job needs per node, checked against the cluster before any work.

A job that does not fit fails late and badly: a node runs out of memory while the shards load or
at the first validation, and Ray kills whatever process the OOM killer picks. The arithmetic here
is the ``partition estimate`` kind: sizes that follow from the manifest and the config, no
sampling, so the driver can print it and refuse in milliseconds.

What is counted (bytes):

- **parameter-server rows**, per partition: its owned rows x (``dim`` x 4 B x (1 + optimizer
  slots)) plus 8 B per row for Adam's step counter (``ps.state_names``: Adam keeps ``exp_avg``
  and ``exp_avg_sq``, Adagrad ``sum_sq``);
- **graph shard**, per partition: the CSC, ``indptr`` 8 B per owned node (+1) and ``indices``
  8 B per stored edge, held once in the object store (its trainer maps the same pages);
- **training worker**, per worker: its partitions' interactions (user and item gid, 16 B each)
  and the epoch orders over them (``worker.equal_batches``: up to 16 B each), plus
  ``WORKER_RUNTIME_BYTES`` for the process itself (torch, DGL, Ray) and one minibatch's blocks,
  rows and activations, a measured allowance (docs/architecture.md D28);
- **validation on rank 0** (``train.eval_every > 0``): today's evaluation loads the whole graph
  into one DGL graph (COO, CSR and CSC: ~48 B per directed edge, 2 directed edges per
  interaction, and 16 B per node) and holds ``layers + 1`` full embedding tables for the layer
  mean (``evaluation.infer_all``), twice while it stacks them.

Placement follows ``launch.job``: graph shards are SPREAD over the nodes and each partition's PS
shard sits beside its graph shard, so a node holds at most ``ceil(P / N)`` partitions (the largest
ones are assumed); Ray Train packs workers, so a node may hold as many workers as its CPUs allow.
The per-node need is compared with the smallest node's memory (Ray's ``memory`` plus
``object_store_memory`` resources, which is what Ray lets this job use there).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from distgnn.errors import UserError
from distgnn.stages import human_bytes

FLOAT_BYTES = 4
ID_BYTES = 8
# A training worker's own process: torch + DGL + Ray Train imported (~0.5 GiB) and one minibatch
# in flight plus one prefetched (blocks, pulled rows and their gradients, GAT activations). The
# Gowalla config's batch of 1024 on the 10M-interaction graph peaked at ~1.6 GiB in all; see D28.
WORKER_RUNTIME_BYTES = 2 * 2**30
# DGL graph of the whole training graph for validation: COO (16 B) + CSR and CSC (8 B index + 8 B
# edge id each) per directed edge; indptrs and in-degrees per node.
VALIDATION_EDGE_BYTES = 48
VALIDATION_NODE_BYTES = 24


def optimizer_slots(optimizer: str) -> int:
    """Float rows kept beside each embedding row by the PS optimizer (``ps.state_names``)."""
    return 2 if optimizer == "adam" else 1


@dataclass(frozen=True)
class NodeMemory:
    """One Ray node as the estimate sees it."""

    node_id: str
    memory_bytes: int   # Ray's 'memory' + 'object_store_memory' resources of the node
    cpus: float


@dataclass
class MemoryEstimate:
    """The per-node need of a job, its parts, and what it is compared with."""

    num_parts: int
    num_workers: int
    num_nodes: int
    embedding_bytes: int          # all PS shards
    graph_bytes: int              # all graph shards (object store)
    worker_bytes: int             # all training workers
    validation_bytes: int         # rank 0's validation (0 without it)
    per_node_bytes: int           # the most one node holds under the placement above
    node_memory_bytes: int        # the smallest node's memory
    parts_per_node: int
    workers_per_node: int

    @property
    def total_bytes(self) -> int:
        return self.embedding_bytes + self.graph_bytes + self.worker_bytes + self.validation_bytes

    @property
    def fits(self) -> bool:
        return self.per_node_bytes <= self.node_memory_bytes

    def summary(self) -> str:
        """One line for the job's output."""
        node = "node" if self.num_nodes == 1 else "nodes"
        val = f", validation {human_bytes(self.validation_bytes)}" if self.validation_bytes else ""
        return (f"memory estimate: {human_bytes(self.per_node_bytes)} on the busiest of {self.num_nodes} "
                f"{node} ({self.parts_per_node} of {self.num_parts} partitions, {self.workers_per_node} "
                f"of {self.num_workers} workers); job total {human_bytes(self.total_bytes)} = embeddings "
                f"{human_bytes(self.embedding_bytes)}, graph {human_bytes(self.graph_bytes)}, workers "
                f"{human_bytes(self.worker_bytes)}{val}; smallest node has {human_bytes(self.node_memory_bytes)}")


def partition_bytes(part: dict[str, Any], dim: int, optimizer: str) -> tuple[int, int]:
    """(PS shard bytes, graph shard bytes) of one manifest partition entry."""
    rows = int(part["gid_end"]) - int(part["gid_start"])
    row_bytes = dim * FLOAT_BYTES * (1 + optimizer_slots(optimizer)) + (ID_BYTES if optimizer == "adam" else 0)
    graph = ID_BYTES * (rows + 1) + ID_BYTES * int(part["num_edges"])
    return rows * row_bytes, graph


def estimate(manifest: dict[str, Any], dim: int, optimizer: str, num_workers: int,
             nodes: Sequence[NodeMemory], layers: int = 0, validation: bool = False) -> MemoryEstimate:
    """The estimate for ``num_workers`` workers over ``manifest``'s partitions on ``nodes``."""
    from distgnn.ray_runtime.worker import assigned_parts

    if not nodes:
        raise UserError("the Ray cluster reports no alive node; check 'ray status'")
    parts = manifest["parts"]
    per_part = [partition_bytes(p, dim, optimizer) for p in parts]
    emb = sum(e for e, _ in per_part)
    graph = sum(g for _, g in per_part)
    workers = []
    for rank in range(num_workers):
        n = sum(int(parts[p]["num_train_interactions"]) for p in assigned_parts(rank, num_workers, len(parts)))
        workers.append(n * (2 * ID_BYTES + 2 * ID_BYTES) + WORKER_RUNTIME_BYTES)
    val = 0
    if validation:
        num_nodes = sum(int(p["gid_end"]) - int(p["gid_start"]) for p in parts)
        interactions = int(manifest.get("num_interactions") or
                           sum(int(p["num_train_interactions"]) for p in parts))
        val = (VALIDATION_EDGE_BYTES * 2 * interactions + VALIDATION_NODE_BYTES * num_nodes
               + 2 * (layers + 1) * num_nodes * dim * FLOAT_BYTES)
    k = len(nodes)
    parts_per_node = math.ceil(len(parts) / k)
    largest_parts = sorted((e + g for e, g in per_part), reverse=True)[:parts_per_node]
    max_cpus = max(int(n.cpus) for n in nodes)
    workers_per_node = max(1, min(num_workers, max_cpus))
    largest_workers = sorted(workers, reverse=True)[:workers_per_node]
    per_node = sum(largest_parts) + sum(largest_workers) + val
    return MemoryEstimate(len(parts), num_workers, k, emb, graph, sum(workers), val, per_node,
                          min(n.memory_bytes for n in nodes), parts_per_node, workers_per_node)


def ray_nodes(node_memory: int | None = None) -> list[NodeMemory]:
    """The alive nodes of the connected Ray cluster; ``node_memory`` replaces what Ray reports
    (``--node-memory``: e.g. containers whose limit Ray does not see, or a user who accepts
    spilling)."""
    import ray

    out = []
    for n in ray.nodes():
        if not n.get("Alive", n.get("alive", False)):
            continue
        res = n.get("Resources", {})
        mem = int(res.get("memory", 0) + res.get("object_store_memory", 0))
        if mem <= 0:  # a node that does not report memory: this machine's, if it is this one
            import psutil

            mem = int(psutil.virtual_memory().total)
        out.append(NodeMemory(str(n.get("NodeID", "")), node_memory if node_memory else mem,
                              float(res.get("CPU", 0.0))))
    return out


def check(est: MemoryEstimate, overridden: bool = False) -> None:
    """Refuse a job whose estimate exceeds the smallest node's memory, naming the fixes."""
    if est.fits:
        return
    where = "--node-memory" if overridden else "Ray's memory + object store"
    val = (f"; validation on rank 0 alone needs {human_bytes(est.validation_bytes)} "
           f"(set train.eval_every=0 to train without it)"
           if est.validation_bytes > est.per_node_bytes // 2 else "")
    raise UserError(
        f"the job needs about {human_bytes(est.per_node_bytes)} on its busiest node but the smallest of "
        f"the {est.num_nodes} node(s) has {human_bytes(est.node_memory_bytes)} ({where}){val}; add nodes "
        f"(with more partitions, --num-parts, to spread over them), lower model.dim, or use fewer "
        f"--num-workers per node; pass --node-memory SIZE if the nodes really have more")
