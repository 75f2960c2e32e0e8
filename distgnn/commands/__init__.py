"""CLI subcommands of the training core: ``train``, ``evaluate``, ``recommend``.

Each module defines ``add_parser(subparsers)``; heavy imports (torch, DGL) happen in handlers.
"""
import os


def set_threads(threads: int) -> None:
    """Thread count for torch and DGL's OpenMP sampling; must run before torch is imported."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
