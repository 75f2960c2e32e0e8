"""Assign: node -> partition, as one int array over the raw node space.

The raw node space puts users first (``0..U-1``) and items after (``U..U+I-1``). An assigner sees
only the interaction arrays and returns ``part[raw_node]``; it writes nothing. Dispatch turns any
assignment into shards, so METIS, random and later out-of-core assigners are interchangeable.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from typing import Callable

import numpy as np

from distgnn.errors import UserError

Assigner = Callable[[np.ndarray, np.ndarray, int, int, int, int], np.ndarray]


def assign_random(user_raw: np.ndarray, item_raw: np.ndarray, num_users: int, num_items: int,
                  num_parts: int, seed: int) -> np.ndarray:
    """Baseline: a random balanced assignment, users and items dealt out separately."""
    rng = np.random.default_rng(seed)
    user_part = rng.permutation(num_users) % num_parts
    item_part = rng.permutation(num_items) % num_parts
    return np.concatenate([user_part, item_part]).astype(np.int64)


def assign_metis(user_raw: np.ndarray, item_raw: np.ndarray, num_users: int, num_items: int,
                 num_parts: int, seed: int) -> np.ndarray:
    """METIS (DGL's built-in) on the bipartite interaction graph, multi-constraint balanced.

    Constraints: number of users, number of items, and the degree (stored edges) of each, per
    part; DistDGL found balancing node types and edges necessary for METIS to beat random on
    training time. ``seed`` is unused: DGL's METIS build takes no seed, and its result can
    differ slightly between processes (Gowalla, 4 parts: edge cut 0.1747 or 0.1769).
    """
    import torch
    import dgl

    if num_parts == 1:
        return np.zeros(num_users + num_items, dtype=np.int64)
    # METIS itself is sequential; with the default OpenMP/torch thread pools spinning beside it the
    # stage measured slower on 2 cores (Gowalla: 1.3 s vs 0.75 s; no difference at 10M), so use one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _metis(dgl, torch, user_raw, item_raw + num_users, num_users, num_items, num_parts)
    finally:
        torch.set_num_threads(threads)


def _metis(dgl, torch, user_raw, item_node, num_users, num_items, num_parts) -> np.ndarray:
    # Both directions so that in-degree == degree, which DGL uses as the edge-balance weight.
    src = torch.from_numpy(np.concatenate([user_raw, item_node]))
    dst = torch.from_numpy(np.concatenate([item_node, user_raw]))
    # Keep only the CSC form: DGL symmetrises from it, and dropping the COO copy lowered this
    # stage's peak by ~300 MiB at 10M interactions (1.86 -> 1.56 GiB above the ingest baseline).
    graph = dgl.graph((src, dst), num_nodes=num_users + num_items, idtype=torch.int64).formats("csc")
    del src, dst
    ntype = torch.cat([torch.zeros(num_users, dtype=torch.int64), torch.ones(num_items, dtype=torch.int64)])
    # DGL prints timings to stdout and METIS logs to stderr; keep our CLI output clean (we time
    # stages ourselves) but keep what it said for the error message if it fails.
    with _captured_native_output() as log, contextlib.redirect_stdout(io.StringIO()):
        try:
            part = dgl.metis_partition_assignment(graph, num_parts, balance_ntypes=ntype,
                                                  balance_edges=True)
        except Exception as exc:  # DGL's C++ errors
            log.seek(0)
            raise UserError(f"METIS failed on {num_parts} parts ({exc}; {log.read().strip()[-200:]}); "
                            f"try fewer parts or --method random") from None
    if part is None:
        raise UserError(f"METIS could not split the graph into {num_parts} parts; use fewer parts "
                        f"or --method random")
    return part.numpy().astype(np.int64)


@contextlib.contextmanager
def _captured_native_output():
    """Redirect the process's fd 1 and 2 (C++ logging) into a temp file for the block."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield log
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            log.seek(0)


ASSIGNERS: dict[str, Assigner] = {"metis": assign_metis, "random": assign_random}


def get_assigner(method: str) -> Assigner:
    try:
        return ASSIGNERS[method]
    except KeyError:
        raise UserError(f"unknown --method {method!r}; choose one of {', '.join(ASSIGNERS)}") from None
