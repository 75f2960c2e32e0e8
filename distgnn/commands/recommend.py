"""``distgnn recommend``: top-K recommendations and embeddings, keyed by the user's own ids."""
from __future__ import annotations

import argparse

from distgnn.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "recommend", help="write top-K recommendations and embeddings to Parquet",
        description="Local backend: writes PATH (columns: user id, rank, item id, score; items already "
                    "in the user's training or validation set excluded) and, beside it, "
                    "<stem>.user_embeddings.parquet and <stem>.item_embeddings.parquet (orig id, "
                    "embedding). --backend ray: PATH is a directory of part files written by the "
                    "workers, PATH/recs/part-*.parquet, PATH/user_embeddings/part-*.parquet, "
                    "PATH/item_embeddings/part-*.parquet, and PATH/manifest.json written last. "
                    "Ids are the input's own ids.",
        epilog="examples: distgnn recommend --run runs/demo --k 20 --out recs.parquet\n"
               "          distgnn recommend --run runs/g100m --k 20 --backend ray --num-workers 2 "
               "--out recs_dir",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run directory written by 'distgnn train'")
    p.add_argument("--k", type=int, required=True, help="recommendations per user")
    p.add_argument("--out", required=True, help="output Parquet path for the recommendations")
    p.add_argument("--partitions", help="partition directory (default: the run's data.partitions)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace PATH and its two embedding files (or, with --backend ray, the "
                        "directory PATH) if an earlier 'distgnn recommend' wrote them (other files "
                        "are never replaced)")
    p.add_argument("--max-users", type=int, metavar="N",
                   help="recommend for a seeded sample of about N users only (a trial on a big "
                        "graph); embeddings are still written for every node")
    from distgnn.commands.evaluate import add_backend_args
    add_backend_args(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    if args.k <= 0:
        raise UserError(f"--k must be a positive integer (got {args.k})")
    if args.max_users is not None and args.max_users <= 0:
        raise UserError(f"--max-users must be positive (got {args.max_users})")
    out = Path(args.out)
    if not out.parent.exists():
        raise UserError(f"parent directory {out.parent} of --out does not exist; create it first")
    from distgnn.config import load_run_config
    cfg = load_run_config(args.run)
    if args.partitions:
        cfg.data.partitions = args.partitions
    from distgnn.commands import set_threads
    set_threads(cfg.train.threads)  # before torch is imported (by export)
    from distgnn import atomic, export
    from distgnn import format as fmt
    from distgnn.commands.evaluate import check_backend_args
    num_workers = check_backend_args(args, len(fmt.load_manifest(cfg.data.partitions)["parts"]))
    if num_workers is not None:
        from distgnn import checkpoint as ckpt
        from launch import infer

        replace = atomic.check_replaceable(out, export.is_our_dir, args.overwrite,
                                           what="'distgnn recommend'", kind="dir")
        atomic.sweep_stale(out.parent)
        ckpt_path = ckpt.for_inference(args.run)
        res = infer.recommend(cfg, args.run, ckpt_path, args.k, out, num_workers, args.address,
                              args.max_users, args.timeout, overwrite=replace)
        rows = sum(v["rows"] for k, v in res["manifest"]["files"].items() if k.startswith("recs/"))
        print(f"{out}: {rows} recommendations from {num_workers} workers (checkpoint {ckpt_path.name})")
        for rel in res["manifest"]["files"]:
            print(out / rel)
        return 0
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give a file path such as {out}/recs.parquet "
                        f"(a directory output is written by --backend ray)")
    for path in export.output_paths(out):  # all three are checked before anything is computed
        atomic.check_replaceable(path, export.is_ours, args.overwrite, what="'distgnn recommend'",
                                 kind="file")
    atomic.sweep_stale(out.parent)
    paths = export.recommend(args.run, cfg, args.k, out, args.max_users)
    for p in paths:
        print(p)
    return 0
