"""Sampling off the critical path: minibatches are prepared on one sampling thread, ahead.

``prepare_step`` is the whole sampling stage of a training step (negatives, L-hop blocks, edge
weights). Its result is a function of ``(seed, epoch, step, interaction indices)`` because every
random draw it makes comes from a source seeded inside it:

- the negatives from a ``torch.Generator`` seeded with the step seed;
- the Ray store's per-hop sampling seeds from a second generator seeded with the step seed (the
  same draws it used to take from torch's global generator right after ``torch.manual_seed``);
- DGL's neighbour sampling from DGL's random engine. That engine is *thread-local and seeded
  with ``seed + thread number``*, the number counting the threads in the order they first used
  DGL's RNG; so the same seed samples differently on another thread. Hence **all** training
  sampling runs on one process-wide sampling thread (``sampling_thread``), also with
  ``train.prefetch: 0`` (then the step waits for it): the thread is created, and registered with
  DGL's RNG under one OpenMP thread, at the same point of every run, so its number, and with it
  the sampled sequence, is the same with or without prefetch, and in a resumed process.

Nothing here touches torch's global generator, which the training thread reseeds per step for
dropout. So any ``train.prefetch`` gives the same losses bit for bit, and a resumed run samples
what an uninterrupted one would (``tests/test_prefetch.py``).

The embedding rows are *not* pulled ahead: the previous step's push changes rows the next step
reads, so a pull before that push would train on stale rows.

``prefetched`` wraps the loop's ``(step, idx)`` iterator and keeps ``depth`` minibatches queued on
the sampling thread while the current step computes (bounded memory); a sampling error is raised
in the training thread at that step; ``close()`` (or the loop leaving the generator) cancels the
queued ones and waits for the one in progress.
"""
from __future__ import annotations

import concurrent.futures
import os
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from distgnn.sampler import MiniBatch, step_seed

JOIN_TIMEOUT_S = 60.0  # bounds close(); a sampling call in flight has its own deadline (Ray calls)


@dataclass
class PreparedStep:
    """A sampled minibatch and what the step derives from it on the host."""

    seed: int                       # the step seed (the training thread seeds dropout with it)
    mb: MiniBatch
    edge_weights: list | None       # per block, sqrt(deg_dst / deg_src) per edge (edge_norm: sym)


def prepare_step(trainer: Any, epoch: int, step: int, idx: torch.Tensor) -> PreparedStep:
    """Sample step ``step`` of ``epoch`` for the interaction indices ``idx`` (see module doc)."""
    import dgl

    s = step_seed(trainer.cfg.train.seed, epoch, step)
    if trainer.cfg.train.deterministic_sampling:
        _with_one_dgl_thread(dgl.seed, s)  # this thread's engine only (see module doc)
    else:
        dgl.seed(s)
    gen = torch.Generator().manual_seed(s)
    hop_gen = torch.Generator().manual_seed(s)
    mb = trainer.sampler.sample(idx, gen, hop_gen)
    ew = sym_edge_weights(trainer.sampler.graph, mb) if trainer.use_norm else None
    return PreparedStep(s, mb, ew)


def sym_edge_weights(graph: Any, mb: MiniBatch) -> list[torch.Tensor]:
    """Per block, ``sqrt(deg_dst / deg_src)`` per edge (``model.sym_edge_weight``), with the
    degrees of the minibatch's nodes only, asked of the graph store once per minibatch.

    Every block's source nodes are a prefix of the input block's (``input_gids``): the
    destination nodes of a block are the first source nodes, and they are the source nodes of the
    next block. So one ``graph.degrees(input_gids)`` call serves every block; the Ray store answers
    it from the worker's own partitions and one batched call per remote partition, with no table
    over all nodes (docs/architecture.md D28). The arithmetic is the one of the former per-node
    table (clamp to 1, float32, sqrt, then divide), so the weights are bit for bit the same."""
    all_gids = mb.input_gids
    sqrt_deg = graph.degrees(all_gids).clamp(min=1).to(torch.float32).sqrt()
    out = []
    for block, src in zip(mb.blocks, mb.block_gids):
        n = len(src)
        sd = sqrt_deg[:n] if torch.equal(src, all_gids[:n]) else \
            graph.degrees(src).clamp(min=1).to(torch.float32).sqrt()  # not a prefix: ask for it
        u, v = block.edges()
        out.append(sd[v] / sd[u])
    return out


_executor: concurrent.futures.ThreadPoolExecutor | None = None
_executor_pid = -1  # a forked child inherits the object but not its thread: it makes its own
_executor_lock = threading.Lock()


def _with_one_dgl_thread(fn, *args):
    """``fn(*args)`` with DGL's OpenMP at one thread (this thread's setting only)."""
    from dgl.utils import get_num_threads, set_num_threads

    threads = get_num_threads()
    set_num_threads(1)
    try:
        return fn(*args)
    finally:
        set_num_threads(threads)


def sampling_thread() -> concurrent.futures.ThreadPoolExecutor:
    """The process-wide sampling thread (see module doc), created on first use; its first job
    registers it with DGL's RNG, alone, before any sampling."""
    global _executor, _executor_pid
    with _executor_lock:
        if _executor is None or _executor_pid != os.getpid():
            import dgl

            ex = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="distgnn-sampler")
            ex.submit(_with_one_dgl_thread, dgl.seed, 0).result()
            _executor, _executor_pid = ex, os.getpid()
        return _executor


def sample_step(trainer: Any, epoch: int, step: int, idx: torch.Tensor) -> PreparedStep:
    """``prepare_step`` on the sampling thread, waited for (``train.prefetch: 0``)."""
    return sampling_thread().submit(prepare_step, trainer, epoch, step, idx).result()


def prefetched(trainer: Any, epoch: int, batches: Iterator[tuple[int, torch.Tensor]],
               depth: int) -> Iterator[tuple[int, torch.Tensor, PreparedStep]]:
    """``(step, idx, prepared)`` for each ``(step, idx)`` of ``batches``, with up to ``depth``
    later minibatches sampled meanwhile (0: each is sampled when its step asks for it)."""
    ex = sampling_thread()
    it = iter(batches)
    pending: deque = deque()

    def submit() -> None:
        for step, idx in it:
            pending.append((step, idx, ex.submit(prepare_step, trainer, epoch, step, idx)))
            return

    try:
        for _ in range(max(depth, 0) + 1):
            submit()
        while pending:
            step, idx, fut = pending.popleft()
            prepared = fut.result()
            yield step, idx, prepared  # while it computes, the next `depth` ones are sampled
            submit()
    finally:
        for _, _, fut in pending:
            fut.cancel()
        for _, _, fut in pending:
            if not fut.cancelled():
                concurrent.futures.wait([fut], JOIN_TIMEOUT_S)
