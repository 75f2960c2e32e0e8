"""``create``: ingest -> assign -> dispatch -> manifest, streamed, with per-stage time and memory.

This is the Python API behind ``distgnn partition create``; tests and benchmarks call it directly.

Stages and what they checkpoint in the scratch directory (``partition/scratch.py``):

1. ``ingest`` (``partition/graph.py``): id maps, the deduplicated user/item CSR, held-out splits.
2. ``assign`` (``partition/assign.py``): ``part.npy``, one partition id per raw node. The METIS
   path (in-memory or multilevel) is chosen here, from the exact graph size and ``--memory-limit``.
3. ``dispatch`` (``partition/dispatch.py``): the output directory, built under a hidden temporary
   name, manifest last, then renamed into place.

``--resume`` reuses the checkpointed stages of an earlier, failed run on the same input.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from distgnn import __version__, atomic
from distgnn import format as fmt
from distgnn.errors import UserError
from distgnn.stages import StageTimer, human_bytes
from partition import assign, dispatch, ingest
from partition.graph import (GRAPH_FILES, Graph, HeldOutSplit, IngestOptions, build_graph, load_heldout,
                             map_heldout, save_heldout)
from partition.idmap import IdMap
from partition.scratch import Scratch, disk_error, reset_write_budget

METIS_PATHS = ("auto", "in-memory", "multilevel")
# Resource model, fitted on measured `partition create` runs on the 2-core, 24 GB machine
# (BENCHMARKS.md, "Partitioning at scale"); `partition estimate` and the auto path choice use it.
BASE_RSS = 300 * 2**20                 # interpreter, numpy, pyarrow, numba and its kernels
INMEM_BYTES_PER_EDGE = 130             # METIS on the whole graph, per interaction (2 directed edges)
INMEM_BYTES_PER_NODE = 150
ML_BYTES_PER_NODE = 100                # labels, weights, ratings, gid map (plus 1 byte/part: halo maps)
ML_CHUNK_BYTES = 20                    # per streamed CSR entry
INMEM_SECONDS_PER_EDGE = 1.2e-6        # assign stage, METIS on the whole graph (10M: 9.5 s)
ML_SECONDS_PER_EDGE = 0.95e-6          # assign stage on graphs past the CPU caches (100M: 0.96, 1B: 0.93)
INGEST_SECONDS_PER_ROW = 0.28e-6       # two scans, buckets, dedup, transpose (10M..1B: 0.27-0.34)
DISPATCH_SECONDS_PER_EDGE = 0.36e-6    # streamed shards and checksums (100M: 0.38, 1B: 0.35)
START_SECONDS = 1.5
OUTPUT_BYTES_PER_EDGE = 11.5           # snappy Parquet shards + id maps (measured at 10M)
SCRATCH_BYTES_PER_ROW = 8              # int32 user + item per input row in the buckets
SCRATCH_BYTES_PER_NODE = 16            # the two indptr arrays
# while the multilevel path contracts: both CSR sides (8 bytes per edge) plus the cross-cluster
# records (12 bytes each, measured 0.34-0.44 per edge at 100M-1B)
SCRATCH_BYTES_PER_EDGE_CONTRACT = 8 + 12 * 0.45


@dataclass
class CreateOptions:
    train: str
    out: str
    num_parts: int
    method: str = "metis"
    test: str | None = None
    valid: str | None = None
    valid_fraction: float = 0.0
    valid_by: str = "random"
    user_col: str = "user_id"
    item_col: str = "item_id"
    ts_col: str | None = None
    seed: int = 0
    overwrite: bool = False
    progress: bool = True
    metis_path: str = "auto"
    memory_limit: int | None = None    # bytes; default 75% of available memory
    tmp_dir: str | None = None
    resume: bool = False


def default_memory_limit() -> int:
    import psutil
    return int(0.75 * psutil.virtual_memory().available)


def parse_bytes(text: str) -> int:
    """'16G', '512M', '2.5GiB', '1000000' -> bytes."""
    t = text.strip().upper().replace("IB", "").rstrip("B")
    mult = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    try:
        if t and t[-1] in mult:
            return int(float(t[:-1]) * mult[t[-1]])
        return int(float(t))
    except ValueError:
        raise UserError(f"--memory-limit {text!r} is not a size; write e.g. 8G or 512M") from None


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Fail before any work if the output directory cannot be (re)placed.

    ``--overwrite`` replaces only a partition directory this tool wrote (its ``manifest.json``
    names our format, and it holds nothing else but our files); anything else is refused, and
    nothing is touched (``distgnn.atomic.check_replaceable``, the rule of every ``--overwrite``).
    """
    def own_entry(name: str) -> bool:
        return name in (fmt.MANIFEST, "id_map", "targets") or name.startswith("part-")

    atomic.check_replaceable(
        out, atomic.json_marker(fmt.MANIFEST, format=fmt.FORMAT_NAME), overwrite,
        what="'distgnn partition create'", own_entry=own_entry,
        exists_hint=f"output directory {out} is not empty; pass --overwrite to replace it or choose another --out")


def _fingerprint(files: list[dict]) -> str:
    """Cheap identity of the input: paths and sizes (not a content hash: inputs can be TBs)."""
    h = hashlib.sha256()
    for f in files:
        h.update(f"{Path(f['path']).resolve()}\0{f['bytes']}\n".encode())
    return h.hexdigest()[:16]


def _validate(opts: CreateOptions) -> None:
    if opts.num_parts < 1:
        raise UserError(f"--num-parts must be >= 1 (got {opts.num_parts})")
    if opts.method not in ("metis", "random"):
        raise UserError(f"unknown --method {opts.method!r}; choose metis or random")
    if opts.metis_path not in METIS_PATHS:
        raise UserError(f"--metis-path must be one of {', '.join(METIS_PATHS)} (got {opts.metis_path!r})")
    if not 0.0 <= opts.valid_fraction <= 0.5:
        raise UserError(f"--valid-fraction must be in [0, 0.5] (got {opts.valid_fraction})")
    if opts.valid and opts.valid_fraction > 0:
        raise UserError("--valid and --valid-fraction both give a validation split; pass only one")
    if opts.valid_by not in ("random", "latest"):
        raise UserError(f"--valid-by must be random or latest (got {opts.valid_by!r})")
    if opts.valid_by == "latest" and opts.valid_fraction > 0 and not opts.ts_col:
        raise UserError("--valid-by latest needs timestamps: name the timestamp column with --ts-col")
    if opts.memory_limit is not None and opts.memory_limit <= 0:
        raise UserError("--memory-limit must be positive")


def path_estimates(num_nodes: int, num_edges: int, num_parts: int, chunk_entries: int) -> dict[str, dict]:
    """Peak RSS (bytes) and assign-stage seconds of each METIS path, for a graph of this size."""
    return {
        "in-memory": {"peak_rss_bytes": BASE_RSS + INMEM_BYTES_PER_EDGE * num_edges
                      + INMEM_BYTES_PER_NODE * num_nodes,
                      "assign_seconds": INMEM_SECONDS_PER_EDGE * num_edges},
        "multilevel": {"peak_rss_bytes": BASE_RSS + (ML_BYTES_PER_NODE + num_parts) * num_nodes
                       + ML_CHUNK_BYTES * chunk_entries,
                       "assign_seconds": ML_SECONDS_PER_EDGE * num_edges * _cache_factor(num_nodes)},
    }


def _cache_factor(num_nodes: int) -> float:
    """Label propagation's random accesses cost less while the node arrays fit the CPU caches:
    measured 0.40 us per edge at 0.8M nodes, 0.96 at 8M, 0.93 at 80M."""
    return float(np.clip(0.4 + 0.6 * np.log10(max(num_nodes, 1) / 0.8e6), 0.4, 1.0))


def chunk_entries_for(limit: int) -> int:
    """CSR entries per streamed chunk: about a 400th of the memory limit."""
    return int(max(1 << 16, min(1 << 26, limit // 400)))


def estimate(rows: int, num_nodes: int, num_parts: int, limit: int, metis_path: str = "auto",
             method: str = "metis") -> dict[str, Any]:
    """Whole-run RAM, disk and time for ``rows`` input interactions (``partition estimate``)."""
    edges = rows  # before deduplication: an upper bound
    chunk = min(chunk_entries_for(limit), 2 * edges)
    paths = path_estimates(num_nodes, edges, num_parts, chunk)
    if method == "random":
        path, why = "random", "--method random"
        rss = BASE_RSS + (ML_BYTES_PER_NODE + num_parts) * num_nodes + ML_CHUNK_BYTES * chunk
        assign_s = 0.02e-6 * edges
    else:
        try:
            path, why = choose_path(metis_path, num_nodes, edges, num_parts, limit, chunk)
        except UserError as exc:
            path, why = "none", str(exc)
        p = paths.get(path, paths["multilevel"])
        rss, assign_s = p["peak_rss_bytes"], p["assign_seconds"]
    # ingest: id maps (5 bytes per possible id), one bucket (~48 bytes per row) or the transpose buffer
    ingest_rss = BASE_RSS + 5 * num_nodes + max(min(limit // 16, 48 * rows), min(limit // 8, 4 * edges))
    return {
        "rows": rows, "num_nodes_estimate": num_nodes, "num_parts": num_parts, "method": method,
        "memory_limit": limit, "path": path, "why": why,
        "peak_rss_bytes": int(max(rss, ingest_rss)),
        "scratch_bytes": int(max(SCRATCH_BYTES_PER_ROW * rows,
                                 SCRATCH_BYTES_PER_EDGE_CONTRACT * edges if path == "multilevel" else 8 * edges)
                             + SCRATCH_BYTES_PER_NODE * num_nodes),
        "output_bytes": int(OUTPUT_BYTES_PER_EDGE * edges),
        "seconds": START_SECONDS + INGEST_SECONDS_PER_ROW * rows + assign_s + DISPATCH_SECONDS_PER_EDGE * edges,
        "paths": paths,
    }


def choose_path(requested: str, num_nodes: int, num_edges: int, num_parts: int, limit: int,
                chunk_entries: int) -> tuple[str, str]:
    """(path, why): the faster path whose peak-memory estimate fits ``limit``."""
    est = path_estimates(num_nodes, num_edges, num_parts, chunk_entries)
    if requested != "auto":
        need = est[requested]["peak_rss_bytes"]
        if need > limit:
            raise UserError(f"--metis-path {requested} needs about {human_bytes(need)} for {num_edges:,} "
                            f"interactions, above --memory-limit {human_bytes(limit)}; raise the limit"
                            + (" or use --metis-path multilevel" if requested == "in-memory" else ""))
        return requested, f"forced by --metis-path {requested}"
    fits = [p for p in ("in-memory", "multilevel") if est[p]["peak_rss_bytes"] <= limit]
    if not fits:
        need = est["multilevel"]["peak_rss_bytes"]
        raise UserError(f"--memory-limit {human_bytes(limit)} is below what even the multilevel path needs "
                        f"for {num_nodes:,} nodes (about {human_bytes(need)}); raise --memory-limit")
    best = min(fits, key=lambda p: est[p]["assign_seconds"])
    why = (f"auto: {best} estimated {est[best]['assign_seconds']:.0f} s / "
           f"{human_bytes(est[best]['peak_rss_bytes'])}")
    other = [p for p in ("in-memory", "multilevel") if p != best][0]
    why += (f"; {other} {est[other]['assign_seconds']:.0f} s / {human_bytes(est[other]['peak_rss_bytes'])}"
            + ("" if other in fits else " (over the memory limit)"))
    return best, why


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C: the same cleanup, exit 130."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def quality(parts: list[dict], cut: int, num_edges: int, num_nodes: int) -> dict[str, float]:
    def imbalance(key: str) -> float:
        counts = np.array([p[key] for p in parts], dtype=np.float64)
        return float(counts.max() / counts.mean()) if counts.mean() > 0 else 1.0

    owned = np.array([p["num_users"] + p["num_items"] for p in parts], dtype=np.float64)
    return {
        "edge_cut_fraction": float(cut / num_edges) if num_edges else 0.0,
        "edge_cut": int(cut),
        "halo_node_fraction": float(sum(p["num_halo"] for p in parts) / max(num_nodes, 1)),
        "node_imbalance": float(owned.max() / owned.mean()),
        "user_imbalance": imbalance("num_users"),
        "item_imbalance": imbalance("num_items"),
        "edge_imbalance": imbalance("num_edges"),
    }


def _warn_if_disk_short(opts: CreateOptions, out: Path, scratch_root: Path, limit: int) -> None:
    """One warning line when the estimate says the disks will not hold scratch and output."""
    from partition.scratch import free_bytes

    rows = ingest.count_rows(opts.train)[0]
    est = estimate(rows, max(1, rows // 12), opts.num_parts, limit, "multilevel")
    for where, need in ((scratch_root.parent, est["scratch_bytes"]), (out.resolve().parent, est["output_bytes"])):
        free = free_bytes(where)
        if free < need:
            print(f"partition create: warning: {where} has {human_bytes(free)} free, the run may need about "
                  f"{human_bytes(need)} there (--tmp-dir moves the scratch)", file=sys.stderr)


def _test_delay(stage: str) -> None:
    """``DISTGNN_TEST_STAGE_DELAY=stage:seconds`` pauses before a stage (tests send signals then)."""
    spec = os.environ.get("DISTGNN_TEST_STAGE_DELAY", "")
    if spec.startswith(stage + ":"):
        import time
        time.sleep(float(spec.split(":", 1)[1]))


def _scratch_root(opts: CreateOptions, out: Path) -> Path:
    base = Path(opts.tmp_dir) if opts.tmp_dir else out.resolve().parent
    return base / f".{out.name}.partition-scratch"


def create(opts: CreateOptions) -> dict[str, Any]:
    """Partition the interactions in ``opts.train``; return the manifest that was written."""
    out = Path(opts.out)
    _validate(opts)
    check_output_dir(out, opts.overwrite)
    atomic.sweep_stale(out.resolve().parent)   # our own dead runs' temp dirs; never the scratch
    limit = opts.memory_limit or default_memory_limit()
    train_inp = ingest.open_input(opts.train)
    fp_parts = [_fingerprint(train_inp.files), opts.user_col, opts.item_col, str(opts.ts_col),
                str(opts.valid_fraction), opts.valid_by, str(opts.seed)]
    for path in (opts.valid, opts.test):
        fp_parts.append(_fingerprint(ingest.open_input(path).files) if path else "-")
    fingerprint = hashlib.sha256("|".join(fp_parts).encode()).hexdigest()[:16]
    _warn_if_disk_short(opts, out, _scratch_root(opts, out), limit)
    scratch = Scratch(_scratch_root(opts, out), fingerprint, opts.resume)
    reset_write_budget()
    try:
        with _sigterm_as_interrupt():
            manifest = _run(opts, out, scratch, limit)
    except (UserError, OSError) as exc:
        err = disk_error(exc, scratch.root) if isinstance(exc, OSError) else exc
        if scratch.keep_only_committed():
            err = UserError(f"{err} (completed stages kept in {scratch.root}: rerun with --resume "
                            f"to reuse them)")
        raise err from None
    except BaseException:
        if scratch.keep_only_committed():
            print(f"partition create: completed stages kept in {scratch.root}; rerun with --resume "
                  f"to reuse them", file=sys.stderr)
        raise
    scratch.remove()
    return manifest


def _run(opts: CreateOptions, out: Path, scratch: Scratch, limit: int) -> dict[str, Any]:
    timer = StageTimer()
    chunk_entries = chunk_entries_for(limit)
    spec = ingest.InputSpec(opts.train, opts.user_col, opts.item_col, opts.ts_col)

    # ---- 1. ingest -----------------------------------------------------------------------
    info = scratch.completed("ingest") if opts.resume else None
    with timer.stage("ingest"):
        if info is None:
            graph, carved = build_graph(IngestOptions(spec, memory_budget=limit // 16,
                                                      valid_fraction=opts.valid_fraction,
                                                      valid_by=opts.valid_by, seed=opts.seed,
                                                      progress=opts.progress), scratch)
            heldout: dict[str, HeldOutSplit] = {}
            if carved is not None:
                heldout["valid"] = carved
            for split, path in (("valid", opts.valid), ("test", opts.test)):
                if path:
                    heldout[split] = map_heldout(ingest.InputSpec(path, opts.user_col, opts.item_col,
                                                                  opts.ts_col), graph)
            files = list(GRAPH_FILES) + ["idmap-user.parquet", "idmap-item.parquet"]
            if graph.has_ts:
                files += ["user_ts.npy", "item_ts.npy"]
            held_info = {}
            for split, h in heldout.items():
                files += save_heldout(scratch, split, h)
                held_info[split] = {**h.counts(), "files": h.files}
            info = {"num_users": graph.num_users, "num_items": graph.num_items, "num_edges": graph.num_edges,
                    "has_ts": graph.has_ts, "rows_read": graph.rows_read, "duplicates": graph.duplicates,
                    "files": graph.files, "id_kind": {"user": graph.user_map.kind, "item": graph.item_map.kind},
                    "heldout": held_info}
            scratch.commit("ingest", files, info)
        else:
            if opts.progress:
                print(f"ingest: reusing the checkpointed stage in {scratch.root}", file=sys.stderr)
            graph = Graph(scratch, info["num_users"], info["num_items"], info["num_edges"], info["has_ts"],
                          IdMap.load(scratch.path("idmap-user.parquet"), info["id_kind"]["user"]),
                          IdMap.load(scratch.path("idmap-item.parquet"), info["id_kind"]["item"]),
                          info["rows_read"], info["duplicates"], info["files"])
            heldout = {s: load_heldout(scratch, s, h) for s, h in info["heldout"].items()}
    num_nodes = graph.num_nodes
    if graph.num_edges == 0:
        raise UserError(f"input {opts.train} has no interactions left after removing duplicates and "
                        f"the validation split; pass more data")
    if opts.num_parts > num_nodes:
        raise UserError(f"--num-parts {opts.num_parts} is larger than the number of nodes ({num_nodes}); "
                        f"use at most {num_nodes} parts")

    # ---- 2. assign -----------------------------------------------------------------------
    if opts.method == "random":
        path, why = "random", "--method random"
    else:
        path, why = choose_path(opts.metis_path, num_nodes, graph.num_edges, opts.num_parts, limit,
                                min(chunk_entries, 2 * graph.num_edges))
    ainfo = scratch.completed("assign") if opts.resume else None
    if ainfo is not None and ainfo.get("path") != path:
        ainfo = None
    with timer.stage("assign"):
        if ainfo is None:
            if opts.progress:
                print(f"assign: {path} into {opts.num_parts} parts ({num_nodes:,} nodes, "
                      f"{graph.num_edges:,} interactions; {why})", file=sys.stderr, flush=True)
            aopts = assign.AssignOptions(opts.num_parts, seed=opts.seed, chunk_entries=chunk_entries,
                                         coarse_budget_entries=max(1 << 20, limit // 20),
                                         progress=opts.progress)
            fn = {"random": assign.assign_random, "in-memory": assign.assign_metis_in_memory,
                  "multilevel": assign.assign_multilevel}[path]
            part = fn(graph, aopts)
            scratch.save("part.npy", part)
            ainfo = {**aopts.info, "path": path, "why": why}
            scratch.commit("assign", ["part.npy"], ainfo)
        else:
            if opts.progress:
                print(f"assign: reusing the checkpointed stage in {scratch.root}", file=sys.stderr)
            part = scratch.load("part.npy")

    # ---- 3. dispatch ---------------------------------------------------------------------
    _test_delay("dispatch")
    files: dict[str, dict] = {}
    with atomic.AtomicDir(out, opts.overwrite) as tmp:
        with timer.stage("dispatch"):
            rl = dispatch.relabel(part, graph.num_users, opts.num_parts)
            dispatch.write_id_maps(tmp, graph, rl, files)
            parts, cut = dispatch.write_shards(tmp, graph, part, rl, opts.num_parts, chunk_entries, files,
                                               opts.progress)
            for split, held in heldout.items():
                dispatch.write_targets(tmp, split, held, graph.num_users, rl, files)
        with timer.stage("checksum"):
            dispatch.add_checksums(tmp, files)

        inputs = {"train": {"files": graph.files, "rows": graph.rows_read,
                            "fingerprint": _fingerprint(graph.files)}}
        for split, held in heldout.items():
            if held.source == "file":
                inputs[split] = {"files": held.files, "rows": held.rows_read,
                                 "fingerprint": _fingerprint(held.files)}
        manifest = {
            "format": fmt.FORMAT_NAME,
            "format_version": fmt.FORMAT_VERSION,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "created_by": f"distgnn {__version__}",
            "params": {"method": opts.method, "num_parts": opts.num_parts, "seed": opts.seed,
                       "user_col": opts.user_col, "item_col": opts.item_col, "ts_col": opts.ts_col,
                       "train": opts.train, "test": opts.test, "valid": opts.valid,
                       "valid_fraction": opts.valid_fraction, "valid_by": opts.valid_by,
                       "metis_path": opts.metis_path, "memory_limit": limit},
            "assignment": ainfo,
            "input": inputs,
            "num_nodes": {"user": graph.num_users, "item": graph.num_items},
            "num_interactions": graph.num_edges,
            "dropped": {"duplicates": graph.duplicates},
            "heldout": {split: h.counts() for split, h in heldout.items()},
            "id_dtype": {"user": "string" if graph.user_map.kind == "string" else "int64",
                         "item": "string" if graph.item_map.kind == "string" else "int64"},
            "has_ts": graph.has_ts,
            "num_parts": opts.num_parts,
            "parts": parts,
            "quality": quality(parts, cut, graph.num_edges, num_nodes),
            "stages": timer.as_dicts(),
            "files": files,
        }
        (tmp / fmt.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
