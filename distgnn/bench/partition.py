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


# The plain-DGL side needs about this many bytes per interaction at peak (measured: 4.71 GiB at
# 10M, BENCHMARKS.md). A sweep does not start it where that would exceed the machine's memory:
# the OOM killer would take other processes with it. The plot says where its curve stops and why.
DGL_BYTES_PER_INTERACTION = 510


def add_parser(sub: argparse._SubParsersAction) -> None:
    from distgnn.gen import _count

    p = sub.add_parser(
        "partition", help="our partitioner vs DGL's partition_graph (time, peak RSS, edge cut)",
        description="Partition the same interactions with 'distgnn partition create --method metis' "
                    "and with dgl.distributed.partition_graph(part_method='metis', balance_edges=True), "
                    "each in its own process, and print wall time (in-process, and of the whole "
                    "process including imports), peak RSS, edge-cut fraction and imbalance side by "
                    "side with the ratios. --sizes runs a sweep and writes JSON and a log-log plot.",
        epilog="examples:\n  distgnn bench partition --interactions 10M --num-parts 4\n"
               "  distgnn bench partition --train ../shared/data/gowalla/train.parquet --num-parts 8\n"
               "  distgnn bench partition --sizes 1M,10M,100M,1B --num-parts 8 --workdir /big/disk "
               "--out bench-out/",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--interactions", type=_count, metavar="N", help="generate N interactions (distgnn gen)")
    src.add_argument("--train", metavar="PATH", help="use these interactions instead of generating")
    src.add_argument("--sizes", metavar="N,N,...", help="a sweep over generated sizes, e.g. 1M,10M,100M,1B")
    p.add_argument("--num-parts", type=int, required=True, metavar="P")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.add_argument("--metis-path", choices=["auto", "in-memory", "multilevel"], default="auto",
                   help="our METIS path (default auto)")
    p.add_argument("--workdir", metavar="DIR", help="where inputs/outputs go (default: a temp dir, removed); "
                   "generated inputs found there (gen-N-sS) are reused")
    p.add_argument("--out", metavar="DIR", help="with --sizes: write partition_sweep.json and "
                   "partition_sweep.png here")
    p.add_argument("--skip-dgl", action="store_true", help="run only ours (e.g. when DGL would not fit in RAM)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds allowed per side (default 3600)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(handler=run)


def _child(impl: str, train: str, out: str, num_parts: int, timeout: float,
           metis_path: str = "auto") -> dict[str, Any]:
    """Run one side in a fresh interpreter; return its JSON result plus its own peak RSS and the
    wall time of the whole process (interpreter start and imports included), as a user waits."""
    cmd = [sys.executable, "-m", "distgnn.bench.partition_child", impl, train, out, str(num_parts), metis_path]
    with tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
        deadline = started + timeout
        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise UserError(f"bench: the {impl} side ran longer than --timeout {timeout:.0f}s")
            time.sleep(0.05)
        process_seconds = time.monotonic() - started
        out_text = proc.stdout.read().decode()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace").strip().splitlines()[-1:]
            raise UserError(f"bench: the {impl} side failed (exit {proc.returncode}): {' '.join(tail)}")
    result = json.loads(out_text.strip().splitlines()[-1])
    result["peak_rss_bytes"] = rusage.ru_maxrss * 1024
    result["process_seconds"] = process_seconds
    return result


def _generated(work: Path, interactions: int, seed: int) -> str:
    from distgnn.gen import generate

    gen_dir = work / f"gen-{interactions}-s{seed}"
    if not (gen_dir / "train").is_dir():
        generate(str(gen_dir), interactions=interactions, seed=seed, test_fraction=0.0)
    return str(gen_dir / "train")


def _compare(train: str, work: Path, args: argparse.Namespace, skip_dgl: bool, why_skip: str = "") -> dict:
    import shutil

    # Each side writes into a directory this run creates, and removes it afterwards (a sweep's
    # outputs add up to tens of GB); a directory that is already there is refused, never removed.
    for side in ("ours", "dgl"):
        if (work / side).exists():
            raise UserError(f"bench: {work / side} already exists; remove it or choose another --workdir "
                            f"(the benchmark only deletes outputs it created)")
    results: dict[str, Any] = {"ours": _child("ours", train, str(work / "ours"), args.num_parts, args.timeout,
                                              args.metis_path)}
    shutil.rmtree(work / "ours", ignore_errors=True)
    if not skip_dgl:
        results["dgl"] = _child("dgl", train, str(work / "dgl"), args.num_parts, args.timeout)
        shutil.rmtree(work / "dgl", ignore_errors=True)
    elif why_skip:
        results["dgl_skipped"] = why_skip
    report = {"input": train, "num_parts": args.num_parts, **results}
    if "dgl" in results:
        d, o = results["dgl"], results["ours"]
        report["speedup"] = d["seconds"] / o["seconds"]
        report["process_speedup"] = d["process_seconds"] / o["process_seconds"]
        report["rss_ratio"] = o["peak_rss_bytes"] / d["peak_rss_bytes"]
        report["edge_cut_ratio"] = o["edge_cut_fraction"] / max(d["edge_cut_fraction"], 1e-12)
    return report


def run(args: argparse.Namespace) -> int:
    if args.num_parts < 2:
        raise UserError("--num-parts must be >= 2 for a partitioning benchmark")
    if args.sizes:
        return run_sweep(args)
    with tempfile.TemporaryDirectory(prefix="distgnn-bench-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.train:
            from partition.ingest import count_rows

            count_rows(args.train)  # a missing or unreadable input: one line here, not a child traceback
            train = args.train
        else:
            train = _generated(work, args.interactions, args.seed)
        report = _compare(train, work, args, args.skip_dgl)
    report["command"] = "distgnn " + shlex.join(sys.argv[1:])
    return emit(report, args.json, format_table)


def run_sweep(args: argparse.Namespace) -> int:
    """Time and peak RSS against input size, ours and DGL's, as JSON and a log-log plot."""
    from distgnn.gen import _count

    try:
        sizes = [_count(s) for s in args.sizes.split(",")]
    except (ValueError, argparse.ArgumentTypeError):
        raise UserError(f"--sizes {args.sizes!r}: write sizes like 1M,10M,100M,1B") from None
    if not args.out:
        raise UserError("--sizes needs --out DIR for the JSON and the plot")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    with tempfile.TemporaryDirectory(prefix="distgnn-bench-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for n in sizes:
            rec = sweep_point(n, args, work)
            records.append(rec)
            print(format_table(rec), flush=True)
    sweep = {"command": "distgnn " + shlex.join(sys.argv[1:]), "num_parts": args.num_parts, "records": records}
    (out / "partition_sweep.json").write_text(json.dumps(sweep, indent=2) + "\n")
    plot_sweep(sweep, out / "partition_sweep.png")
    print(f"wrote {out / 'partition_sweep.json'} and {out / 'partition_sweep.png'}")
    return 0


def sweep_point(n: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One size of the sweep: generate ``n`` interactions in ``work`` (or reuse them), partition
    them with both sides (DGL's only where its measured memory per interaction fits the machine),
    and return the record. ``args`` needs ``seed``, ``num_parts``, ``metis_path``, ``timeout`` and
    ``skip_dgl``; ``bench scaling`` calls this size by size, to resume a sweep."""
    import psutil

    train = _generated(work, n, args.seed)
    mem = psutil.virtual_memory().total
    need = DGL_BYTES_PER_INTERACTION * n
    skip = args.skip_dgl or need > 0.9 * mem
    why = "" if not skip or args.skip_dgl else (
        f"not run: needs about {need / 2**30:.0f} GiB by its measured {DGL_BYTES_PER_INTERACTION} "
        f"bytes per interaction, the machine has {mem / 2**30:.0f} GiB")
    rec = _compare(train, work / f"run-{n}", args, skip, why)
    rec["interactions"] = n
    return rec


def plot_sweep(sweep: dict, path: Path) -> None:
    """Two log-log panels: whole-process wall time and peak RSS against interactions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = sweep["records"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label, scale in ((axes[0], "process_seconds", "wall time, whole process (s)", 1.0),
                                  (axes[1], "peak_rss_bytes", "peak RSS (GiB)", 2**-30)):
        for side, name, style in (("ours", "distgnn partition create", "o-"),
                                  ("dgl", "DGL partition_graph (METIS)", "s--")):
            xs = [r["interactions"] for r in recs if side in r]
            ys = [r[side][key] * scale for r in recs if side in r]
            if xs:
                ax.plot(xs, ys, style, label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        stopped = [r for r in recs if r.get("dgl_skipped")]
        if stopped:
            x0 = stopped[0]["interactions"]
            ax.axvline(x0, color="grey", lw=0.8, ls=":")
            ax.text(x0, 0.03, " DGL not run from here:\n would not fit in memory", fontsize=8, color="grey",
                    va="bottom", transform=ax.get_xaxis_transform())
        ax.set_xlabel("interactions")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Partitioning into {sweep['num_parts']} parts on this machine (2 cores, 24 GB)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_table(report: dict[str, Any]) -> str:
    """A Markdown table (pastes into BENCHMARKS.md as is)."""
    sides = [s for s in ("ours", "dgl") if s in report]
    lines = [f"input: {report['input']} ({report['ours']['num_interactions']:,} interactions), "
             f"{report['num_parts']} parts\n",
             "| | " + " | ".join({"ours": "distgnn", "dgl": "DGL partition_graph"}[s] for s in sides)
             + (" | ratio |" if len(sides) == 2 else " |"),
             "|---" * (len(sides) + 1 + (len(sides) == 2)) + "|"]
    rows = [("wall time, in-process (s)", "seconds", "{:.1f}", "speedup", "{:.2f}x faster"),
            ("wall time, whole process (s)", "process_seconds", "{:.1f}", "process_speedup", "{:.2f}x faster"),
            ("peak RSS (GiB)", "peak_rss_bytes", None, "rss_ratio", "{:.2f}x"),
            ("edge-cut fraction", "edge_cut_fraction", "{:.4f}", "edge_cut_ratio", "{:.3f}x"),
            ("node imbalance", "node_imbalance", "{:.3f}", None, None),
            ("edge imbalance", "edge_imbalance", "{:.3f}", None, None)]
    for label, key, f, ratio_key, rf in rows:
        cells = [f"{report[s][key] / 2**30:.2f}" if f is None else f.format(report[s][key]) for s in sides]
        ratio = [rf.format(report[ratio_key]) if ratio_key else ""] if len(sides) == 2 else []
        lines.append(f"| {label} | " + " | ".join(cells + ratio) + " |")
    if "ours" in report and report["ours"].get("path"):
        lines.append(f"\nours: METIS path {report['ours']['path']}")
    if report.get("dgl_skipped"):
        lines.append(f"DGL: {report['dgl_skipped']}")
    return "\n".join(lines)
