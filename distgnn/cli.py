"""The ``distgnn`` command: one entry point whose subcommands cover the whole system.

Each subcommand lives in its own module and contributes ``add_parser(subparsers)``; the module is
imported lazily so ``distgnn --help`` and light commands stay fast (torch/DGL/Ray import in seconds).
Every ``UserError`` becomes one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Sequence

from distgnn import __version__
from distgnn.errors import RayCallError, UserError

EXIT_USER_ERROR = 2
EXIT_RUNTIME_ERROR = 1

# Each module defines add_parser(subparsers) and sets a `handler` default on its parser(s).
# Modules must keep heavy imports (torch, dgl, ray) inside their handlers.
COMMAND_MODULES = [
    "distgnn.gen",
    "partition.cli",
    "distgnn.commands.train",
    "distgnn.commands.evaluate",
    "distgnn.commands.recommend",
    "distgnn.commands.plot",
    "distgnn.commands.doctor",
    "distgnn.bench",
]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distgnn",
        description="Train GAT recommenders on partitioned user-item interaction graphs.\n\n"
                    "Typical flow: 'distgnn gen' (or your own Parquet logs) -> 'distgnn partition create'"
                    " -> 'distgnn train' -> 'distgnn evaluate' -> 'distgnn recommend'"
                    " ('distgnn plot' draws runs' validation curves).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"distgnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int | None] = args.handler
    try:
        return int(handler(args) or 0)
    except UserError as exc:
        print(f"distgnn {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except RayCallError as exc:
        # A remote call that missed its deadline or a dead actor: one line, not a traceback.
        print(f"distgnn {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME_ERROR
    except KeyboardInterrupt:
        print(f"distgnn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
