"""``distgnn bench partition``: our partitioner vs ``dgl.distributed.partition_graph`` on one input.

Each side runs in its own child process, so its peak RSS (from ``wait4``'s rusage) is its own.
Both sides start from the same Parquet interactions and end with partitions on disk: ours runs
the full ``partition create``; the reference reads the Parquet with pyarrow, relabels ids with
numpy, builds the usual two-relation DGL heterograph and calls
``partition_graph(part_method="metis", balance_edges=True)`` (which balances users and items too).
Timings exclude interpreter start and imports on both sides.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from distgnn.bench import emit
from distgnn.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "partition", help="our partitioner vs DGL's partition_graph (time, peak RSS, edge cut)",
        description="Partition the same interactions with 'distgnn partition create --method metis' "
                    "and with dgl.distributed.partition_graph(part_method='metis', balance_edges=True), "
                    "each in its own process, and print wall time, peak RSS, edge-cut fraction and "
                    "imbalance side by side with the ratios.",
        epilog="examples:\n  distgnn bench partition --interactions 10000000 --num-parts 4\n"
               "  distgnn bench partition --train ../shared/data/gowalla/train.parquet --num-parts 8",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--interactions", type=int, metavar="N", help="generate N interactions (distgnn gen)")
    src.add_argument("--train", metavar="PATH", help="use these interactions instead of generating")
    p.add_argument("--num-parts", type=int, required=True, metavar="P")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.add_argument("--workdir", metavar="DIR", help="where inputs/outputs go (default: a temp dir, removed)")
    p.add_argument("--skip-dgl", action="store_true", help="run only ours (e.g. when DGL would not fit in RAM)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds allowed per side (default 3600)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(handler=run)


def _child(impl: str, train: str, out: str, num_parts: int, timeout: float) -> dict[str, Any]:
    """Run one side in a fresh interpreter; return its JSON result plus its own peak RSS."""
    cmd = [sys.executable, "-m", "distgnn.bench.partition_child", impl, train, out, str(num_parts)]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise UserError(f"bench: the {impl} side ran longer than --timeout {timeout:.0f}s")
            time.sleep(0.1)
        out_text = proc.stdout.read().decode()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace").strip().splitlines()[-1:]
            raise UserError(f"bench: the {impl} side failed (exit {proc.returncode}): {' '.join(tail)}")
    result = json.loads(out_text.strip().splitlines()[-1])
    result["peak_rss_bytes"] = rusage.ru_maxrss * 1024
    return result


def run(args: argparse.Namespace) -> int:
    if args.num_parts < 2:
        raise UserError("--num-parts must be >= 2 for a partitioning benchmark")
    with tempfile.TemporaryDirectory(prefix="distgnn-bench-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.train:
            from partition.ingest import count_rows

            count_rows(args.train)  # a missing or unreadable input: one line here, not a child traceback
            train = args.train
        else:
            from distgnn.gen import generate

            gen_dir = work / f"gen-{args.interactions}-s{args.seed}"
            if not (gen_dir / "train").is_dir():
                generate(str(gen_dir), interactions=args.interactions, seed=args.seed, test_fraction=0.0)
            train = str(gen_dir / "train")
        results = {"ours": _child("ours", train, str(work / "ours"), args.num_parts, args.timeout)}
        if not args.skip_dgl:
            results["dgl"] = _child("dgl", train, str(work / "dgl"), args.num_parts, args.timeout)
    report = {"input": train, "num_parts": args.num_parts, "command": "distgnn " + shlex.join(sys.argv[1:]),
              **results}
    if "dgl" in results:
        d, o = results["dgl"], results["ours"]
        report["speedup"] = d["seconds"] / o["seconds"]
        report["rss_ratio"] = o["peak_rss_bytes"] / d["peak_rss_bytes"]
        report["edge_cut_ratio"] = o["edge_cut_fraction"] / max(d["edge_cut_fraction"], 1e-12)
    return emit(report, args.json, format_table)


def format_table(report: dict[str, Any]) -> str:
    """A Markdown table (pastes into BENCHMARKS.md as is)."""
    sides = [s for s in ("ours", "dgl") if s in report]
    lines = [f"input: {report['input']} ({report['ours']['num_interactions']:,} interactions), "
             f"{report['num_parts']} parts\n",
             "| | " + " | ".join({"ours": "distgnn", "dgl": "DGL partition_graph"}[s] for s in sides)
             + (" | ratio |" if len(sides) == 2 else " |"),
             "|---" * (len(sides) + 1 + (len(sides) == 2)) + "|"]
    rows = [("wall time (s)", "seconds", "{:.1f}", "speedup", "{:.2f}x faster"),
            ("peak RSS (GiB)", "peak_rss_bytes", None, "rss_ratio", "{:.2f}x"),
            ("edge-cut fraction", "edge_cut_fraction", "{:.4f}", "edge_cut_ratio", "{:.3f}x"),
            ("node imbalance", "node_imbalance", "{:.3f}", None, None),
            ("edge imbalance", "edge_imbalance", "{:.3f}", None, None)]
    for label, key, f, ratio_key, rf in rows:
        cells = [f"{report[s][key] / 2**30:.2f}" if f is None else f.format(report[s][key]) for s in sides]
        ratio = [rf.format(report[ratio_key]) if ratio_key else ""] if len(sides) == 2 else []
        lines.append(f"| {label} | " + " | ".join(cells + ratio) + " |")
    return "\n".join(lines)
