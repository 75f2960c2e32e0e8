"""``distgnn bench``: benchmarks that run our code and the plain-DGL reference in one run.

Each benchmark module defines ``add_parser(bench_subparsers)``; they are listed here.
"""
from __future__ import annotations

import argparse
import importlib
import json
from typing import Any, Callable

BENCH_MODULES = [
    "distgnn.bench.partition",
    "distgnn.bench.train",
    "distgnn.bench.locality",
    "distgnn.bench.ps",
    "distgnn.bench.overhead",
    "distgnn.bench.scaling",
    "distgnn.bench.chaos",
]


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "bench", help="benchmarks: ours vs plain DGL, side by side",
        description="Benchmarks (not tests). Each runs distgnn and the plain-DGL reference on the "
                    "same input in one run and prints both and their ratio.")
    bench_sub = parser.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
    for name in BENCH_MODULES:
        importlib.import_module(name).add_parser(bench_sub)


def emit(report: dict[str, Any], as_json: bool, table: Callable[[dict[str, Any]], str]) -> int:
    """Print a benchmark's report as JSON (for scripts) or as its Markdown table (for people)."""
    print(json.dumps(report, indent=2) if as_json else table(report))
    return 0
