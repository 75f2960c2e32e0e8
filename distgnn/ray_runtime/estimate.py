"""Memory a Ray training job needs per node, checked against the cluster before any work.

A job that does not fit fails late and badly: a node runs out of memory while the shards load or
at the first validation, and Ray's OOM killer picks some process to kill. The arithmetic here is
the ``partition estimate`` kind: sizes that follow from the manifest and the config, no
sampling, so the driver prints it and refuses in milliseconds. The constants are measured
(docs/architecture.md D28: on the 10M-interaction graph, 4 partitions, 2 workers, the Gowalla
config estimates 14.5 GiB for 15.2 GiB of peak RSS summed over the job's processes, and with a
batch of 1024 11.6 GiB for 12.2 GiB).

What is counted, in bytes:

- **parameter-server shard**, per partition: its owned rows x (``dim`` x 4 B x (1 + optimizer
  slots), + 8 B for Adam's step counter), twice (a shard builds its rows, then copies them to
  shared memory), plus ``ACTOR_BYTES`` for the actor process (Python, torch, Ray);
- **graph shard**, per partition: the CSC (``indptr`` 8 B per owned node, ``indices`` 8 B per
  stored edge, in the object store; its trainer maps the same pages) plus
  ``GRAPH_LOAD_BYTES_PER_EDGE`` for reading and sorting its Parquet edges (the shards load at the
  same time, so their peaks coincide) plus ``ACTOR_BYTES``;
- **training worker**, per worker: ``WORKER_BASE_BYTES`` (process, model, its interactions) plus
  one minibatch, bounded from the config: seeds ``B x (2 + k)``, each hop's source nodes
  ``min(N, n x (1 + fanout))`` and sampled edges ``n x fanout``; ``MINIBATCH_EDGE_BYTES`` per
  edge (blocks, attention, edge weights, their gradients, the prefetched next minibatch's
  blocks) and ``16 x dim`` B per input node (pulled rows, gradients, device copies);
- **Ray Train's own actors** (its controller, synchronisation and placement helpers):
  ``RAY_BYTES`` once, on the busiest node (the raylet and GCS are outside Ray's figures anyway);
- **validation** (``train.eval_every > 0``), per worker, sharded (``distgnn.inference``, D29): the
  item rows it ranks against (all of them up to ``eval.item_budget_bytes``), one user batch's
  scores against them, and one inference chunk (``eval.node_batch`` nodes and their in-edges); a
  worker validates between steps, so its peak is the larger of a minibatch and a validation.

The phases of a job do not peak together: the graph shards load first (their Parquet decode is
transient), then the PS shards build their rows and copy them to shared memory (twice their size
for a moment), then the workers train. A node's need is the largest of the three phases.
Placement follows ``launch.job``: graph shards are dealt round-robin over the nodes that can run a
worker and each partition's PS shard sits beside its graph shard, so a node holds at most ``ceil(P / N)`` partitions (the largest
ones are assumed); Ray Train packs workers, so a node may hold as many workers as its CPUs allow.
The busiest node's need is compared with the smallest node's memory: Ray's ``memory`` plus
``object_store_memory`` resources, what Ray found available when the node started.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from distgnn.errors import UserError
from distgnn.stages import human_bytes

FLOAT_BYTES = 4
ID_BYTES = 8
ACTOR_BYTES = 2**29                # an actor process with torch, DGL and Ray imported: ~0.5 GiB
GRAPH_LOAD_BYTES_PER_EDGE = 48     # Parquet decode + src/dst arrays + CSC build (p100m part 0: 47)
WORKER_BASE_BYTES = 2**30          # a Ray Train worker's process, model and own interactions
MINIBATCH_EDGE_BYTES = 200         # per sampled edge of a minibatch (calibrated, see module doc)
DEFAULT_ITEM_BUDGET = 2**30         # eval.item_budget_bytes' default (distgnn.inference)
SCORE_BUDGET = 2**28                # one score block (distgnn.inference.SCORE_BUDGET)
RAY_BYTES = 3 * 2**29              # Ray Train's controller and helper actors of the job (~1.6 GiB)


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
    embedding_bytes: int          # all PS shards, steady (rows + optimizer state, shared memory)
    graph_bytes: int              # all graph shards, steady (CSC + actor)
    worker_bytes: int             # all training workers (each: process + max(minibatch, validation))
    validation_bytes: int         # all workers' validation share (0 without it)
    ray_bytes: int                # Ray Train's own actors, on the busiest node
    per_node_bytes: int           # the most one node holds, in its busiest phase
    node_memory_bytes: int        # the smallest node's memory
    parts_per_node: int
    workers_per_node: int
    phases: dict = None           # busiest node's need per phase: load, build, train

    @property
    def total_bytes(self) -> int:
        """The training phase's need over the whole job (a worker's figure covers its validation)."""
        return self.embedding_bytes + self.graph_bytes + self.worker_bytes + self.ray_bytes

    @property
    def fits(self) -> bool:
        return self.per_node_bytes <= self.node_memory_bytes

    def summary(self) -> str:
        """One line for the job's output."""
        node = "node" if self.num_nodes == 1 else "nodes"
        val = (f" (a validation takes {human_bytes(self.validation_bytes // max(self.num_workers, 1))} "
               f"per worker)" if self.validation_bytes else "")
        phase = max(self.phases or {"train": 0}, key=lambda k: (self.phases or {"train": 0})[k])
        return (f"memory estimate: {human_bytes(self.per_node_bytes)} on the busiest of {self.num_nodes} "
                f"{node} at its peak ({phase} phase; "
                + ", ".join(f"{k} {human_bytes(v)}" for k, v in (self.phases or {}).items()) + "): "
                f"{self.parts_per_node} of {self.num_parts} partitions, {self.workers_per_node} "
                f"of {self.num_workers} workers; job total {human_bytes(self.total_bytes)} = PS shards "
                f"{human_bytes(self.embedding_bytes)}, graph shards {human_bytes(self.graph_bytes)}, "
                f"workers {human_bytes(self.worker_bytes)}{val}, Ray {human_bytes(self.ray_bytes)}; "
                f"smallest node has "
                f"{human_bytes(self.node_memory_bytes)}")


def ps_shard_bytes(part: dict[str, Any], dim: int, optimizer: str, building: bool = True) -> int:
    """One partition's PS shard: while building (rows built, then copied to shared memory: twice)
    or steady (once, in shared memory), plus the actor process."""
    rows = int(part["gid_end"]) - int(part["gid_start"])
    row = dim * FLOAT_BYTES * (1 + optimizer_slots(optimizer)) + (ID_BYTES if optimizer == "adam" else 0)
    return (2 if building else 1) * rows * row + ACTOR_BYTES


def graph_shard_bytes(part: dict[str, Any], loading: bool = True) -> int:
    """One partition's graph shard: while loading (Parquet decode, CSC build) or steady (the CSC in
    the object store, its trainer mapping the same pages), plus the actor process."""
    rows, edges = int(part["gid_end"]) - int(part["gid_start"]), int(part["num_edges"])
    load = GRAPH_LOAD_BYTES_PER_EDGE * edges if loading else 0
    return ID_BYTES * (rows + 1) + (ID_BYTES * edges + load) + ACTOR_BYTES


def minibatch_bytes(num_nodes: int, batch_size: int, num_negatives: int, shared_negatives: bool,
                    fanouts: Sequence[int], dim: int) -> int:
    """An upper bound of one minibatch's footprint in a worker (see module doc)."""
    n = min(num_nodes, 2 * batch_size + (num_negatives if shared_negatives else batch_size * num_negatives))
    edges = 0
    for f in reversed(list(fanouts)):  # the last block (seeds) first, as the sampler goes
        f = n if f == -1 else f  # -1: every neighbour; bounded by the nodes below anyway
        edges += n * f
        n = min(num_nodes, n * (1 + f))
    return MINIBATCH_EDGE_BYTES * edges + 4 * FLOAT_BYTES * dim * n


def validation_worker_bytes(manifest: dict[str, Any], cfg) -> int:
    """One worker's sharded validation (D29): item rows (all, up to the budget), one user batch's
    scores against them, one inference chunk's edges."""
    parts = manifest["parts"]
    nodes = sum(int(p["gid_end"]) - int(p["gid_start"]) for p in parts)
    items = int(manifest["num_nodes"]["item"])
    row = cfg.model.dim * FLOAT_BYTES
    budget = cfg.eval.item_budget_bytes or DEFAULT_ITEM_BUDGET
    item_rows = min(items * row, budget)
    scores = 2 * SCORE_BUDGET  # one score block (inference.SCORE_BUDGET), and top-k's copy
    avg_in = 2 * int(manifest.get("num_interactions") or 0) / max(nodes, 1)
    chunk = int(MINIBATCH_EDGE_BYTES * cfg.eval.node_batch * avg_in)
    return item_rows + scores + chunk


def worker_bytes(cfg, num_nodes: int, validation: int = 0) -> int:
    """One training worker's peak: process, model, own interactions, and the larger of one
    minibatch and one validation."""
    t = cfg.train
    return WORKER_BASE_BYTES + max(minibatch_bytes(num_nodes, t.batch_size, t.num_negatives,
                                                   t.shared_negatives, t.fanouts, cfg.model.dim),
                                   validation)


def estimate(manifest: dict[str, Any], cfg, num_workers: int, nodes: Sequence[NodeMemory]) -> MemoryEstimate:
    """The estimate for ``num_workers`` workers training ``cfg`` over ``manifest``'s partitions on
    ``nodes``."""
    if not nodes:
        raise UserError("the Ray cluster reports no alive node; check 'ray status'")
    parts = manifest["parts"]
    num_nodes = sum(int(p["gid_end"]) - int(p["gid_start"]) for p in parts)
    dim, opt = cfg.model.dim, cfg.embedding.optimizer
    val = validation_worker_bytes(manifest, cfg) if cfg.train.eval_every else 0
    worker = worker_bytes(cfg, num_nodes, val)
    k = len(nodes)
    parts_per_node = math.ceil(len(parts) / k)
    workers_per_node = max(1, min(num_workers, max(int(n.cpus) for n in nodes)))

    def busiest(f) -> int:  # the node holding the largest partitions
        return sum(sorted((f(p) for p in parts), reverse=True)[:parts_per_node])

    phases = {
        "load": busiest(graph_shard_bytes),
        "build": busiest(lambda p: graph_shard_bytes(p, loading=False) + ps_shard_bytes(p, dim, opt)),
        "train": busiest(lambda p: graph_shard_bytes(p, loading=False) + ps_shard_bytes(p, dim, opt, building=False))
        + workers_per_node * worker + RAY_BYTES,
    }
    return MemoryEstimate(len(parts), num_workers, k,
                          sum(ps_shard_bytes(p, dim, opt, building=False) for p in parts),
                          sum(graph_shard_bytes(p, loading=False) for p in parts), num_workers * worker,
                          num_workers * val, RAY_BYTES, max(phases.values()),
                          min(n.memory_bytes for n in nodes), parts_per_node, workers_per_node, phases)


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
        if mem <= 0:  # a node that reports no memory: assume this machine's
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
    val = ""
    raise UserError(
        f"the job needs about {human_bytes(est.per_node_bytes)} on its busiest node but the smallest of "
        f"the {est.num_nodes} node(s) has {human_bytes(est.node_memory_bytes)} ({where}){val}; add nodes "
        f"(with more partitions, --num-parts, to spread over them), lower model.dim or "
        f"train.batch_size, or use fewer --num-workers per node; pass --node-memory SIZE if the nodes "
        f"really have more")
