"""``distgnn recommend``: top-K recommendations and embeddings, keyed by the user's own ids."""
from __future__ import annotations

import argparse

from distgnn.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "recommend", help="write top-K recommendations and embeddings to Parquet",
        description="Writes PATH (columns: user id, rank, item id, score; items already in the user's "
                    "training set excluded) and, beside it, <stem>.user_embeddings.parquet and "
                    "<stem>.item_embeddings.parquet (orig id, embedding). Ids are the input's own ids.")
    p.add_argument("--run", required=True, help="run directory written by 'distgnn train'")
    p.add_argument("--k", type=int, required=True, help="recommendations per user")
    p.add_argument("--out", required=True, help="output Parquet path for the recommendations")
    p.add_argument("--partitions", help="partition directory (default: the run's data.partitions)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace PATH and its two embedding files if an earlier 'distgnn recommend' "
                        "wrote them (other files are never replaced)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    if args.k <= 0:
        raise UserError(f"--k must be a positive integer (got {args.k})")
    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give a file path such as {out}/recs.parquet")
    if not out.parent.exists():
        raise UserError(f"parent directory {out.parent} of --out does not exist; create it first")
    from distgnn.config import load_run_config
    cfg = load_run_config(args.run)
    if args.partitions:
        cfg.data.partitions = args.partitions
    from distgnn.commands import set_threads
    set_threads(cfg.train.threads)  # before torch is imported (by export)
    from distgnn import atomic, export
    for path in export.output_paths(out):  # all three are checked before anything is computed
        atomic.check_replaceable(path, export.is_ours, args.overwrite, what="'distgnn recommend'",
                                 kind="file")
    atomic.sweep_stale(out.parent)
    paths = export.recommend(args.run, cfg, args.k, out)
    for p in paths:
        print(p)
    return 0
