"""``distgnn partition {create,stats,verify,estimate}``."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from distgnn.errors import UserError
from distgnn.stages import human_bytes

def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "partition", help="partition interaction logs into METIS-balanced Parquet shards",
        description="Partition user-item interaction logs into per-partition Parquet shards plus a "
                    "versioned manifest (format: docs/format.md).")
    psub = parser.add_subparsers(dest="partition_command", metavar="SUBCOMMAND", required=True)

    c = psub.add_parser(
        "create", help="partition a Parquet/CSV interaction log",
        description="Read interactions (a Parquet file, a directory of Parquet part files, or CSV), "
                    "drop duplicates, assign nodes to partitions (METIS or random), and write shards, "
                    "id maps, held-out targets and manifest.json atomically (manifest last).",
        epilog="example: distgnn partition create --train logs/train --test logs/test "
               "--valid-fraction 0.1 --num-parts 4 --out parts/\n"
               "at scale: distgnn partition create --train s3-export/interactions/ --num-parts 8 "
               "--memory-limit 16G --out parts/ (out of core: bounded memory, scratch beside --out)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--train", required=True, metavar="PATH", help="training interactions (file or directory)")
    c.add_argument("--test", metavar="PATH", help="held-out test interactions, same columns")
    c.add_argument("--valid", metavar="PATH", help="held-out validation interactions, same columns")
    c.add_argument("--valid-fraction", type=float, default=0.0, metavar="F",
                   help="carve a validation split from training: a seeded random fraction F of each "
                        "user's interactions (users with fewer than 2 kept whole); default 0")
    c.add_argument("--valid-by", choices=["random", "latest"], default="random",
                   help="with --valid-fraction: random (default) or each user's latest (needs --ts-col)")
    c.add_argument("--user-col", default="user_id", metavar="C", help="user id column (default: user_id)")
    c.add_argument("--item-col", default="item_id", metavar="C", help="item id column (default: item_id)")
    c.add_argument("--ts-col", default=None, metavar="C", help="optional timestamp column, kept on edges")
    c.add_argument("--num-parts", type=int, required=True, metavar="P", help="number of partitions")
    c.add_argument("--method", choices=["metis", "random"], default="metis",
                   help="metis: min edge cut, balancing users, items and edges; random: baseline")
    c.add_argument("--metis-path", choices=["auto", "in-memory", "multilevel"], default="auto",
                   help="auto (default): the faster METIS path whose memory estimate fits --memory-limit; "
                        "in-memory: METIS on the whole graph; multilevel: out-of-core coarsening, METIS "
                        "on the coarse graph, refinement")
    c.add_argument("--memory-limit", default=None, metavar="SIZE",
                   help="cap on peak memory, e.g. 16G (default: 75%% of available memory)")
    c.add_argument("--tmp-dir", default=None, metavar="DIR",
                   help="scratch directory for the out-of-core stages (default: beside --out)")
    c.add_argument("--resume", action="store_true",
                   help="reuse the checkpointed stages (ingest, assign) of an earlier failed run")
    c.add_argument("--seed", type=int, default=0, help="seed for assignment and --valid-fraction (default 0)")
    c.add_argument("--out", required=True, metavar="DIR", help="output directory (created atomically)")
    c.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    c.add_argument("--quiet", action="store_true", help="no progress bars or report")
    c.add_argument("--json", action="store_true", help="print the stats as JSON instead of a table")
    c.set_defaults(handler=run_create)

    s = psub.add_parser("stats", help="print a partition directory's quality report",
                        description="Print partition sizes, edge cut, halo, balance and per-stage "
                                    "time/memory from manifest.json.",
                        epilog="example: distgnn partition stats parts/ --json")
    s.add_argument("dir", metavar="DIR")
    s.add_argument("--json", action="store_true", help="print a JSON object instead of a table")
    s.set_defaults(handler=run_stats)

    v = psub.add_parser("verify", help="check checksums and that every interaction is where the format says",
                        description="Check file checksums, schemas, ownership, halos and that every "
                                    "training interaction is stored exactly once per direction in the "
                                    "partition owning its destination. Exit 1 on any mismatch.",
                        epilog="example: distgnn partition verify parts/ --train logs/train")
    v.add_argument("dir", metavar="DIR")
    v.add_argument("--train", metavar="PATH", help="also compare against the original training input")
    v.set_defaults(handler=run_verify)

    e = psub.add_parser("estimate", help="RAM, disk and time a create would need",
                        description="Estimate peak RAM, output size and time of 'partition create' "
                                    "from the input's metadata (no data is read for Parquet).",
                        epilog="example: distgnn partition estimate --train logs/train --num-parts 8")
    e.add_argument("--train", required=True, metavar="PATH")
    e.add_argument("--num-parts", type=int, required=True, metavar="P")
    e.add_argument("--method", choices=["metis", "random"], default="metis")
    e.add_argument("--metis-path", choices=["auto", "in-memory", "multilevel"], default="auto")
    e.add_argument("--memory-limit", default=None, metavar="SIZE",
                   help="as for create (default: 75%% of available memory)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(handler=run_estimate)


def run_create(args: argparse.Namespace) -> int:
    from partition.pipeline import CreateOptions, create, parse_bytes

    manifest = create(CreateOptions(
        train=args.train, test=args.test, valid=args.valid, user_col=args.user_col,
        item_col=args.item_col, ts_col=args.ts_col, num_parts=args.num_parts, method=args.method,
        seed=args.seed, out=args.out, overwrite=args.overwrite, progress=not args.quiet,
        valid_fraction=args.valid_fraction, valid_by=args.valid_by, metis_path=args.metis_path,
        memory_limit=parse_bytes(args.memory_limit) if args.memory_limit else None,
        tmp_dir=args.tmp_dir, resume=args.resume))
    if args.json:
        print(json.dumps(stats_object(manifest), indent=2))
    elif not args.quiet:
        print(f"wrote {args.out}")
        print(format_report(manifest))
    return 0


def stats_object(manifest: dict[str, Any]) -> dict[str, Any]:
    q = manifest["quality"]
    return {
        "num_parts": manifest["num_parts"],
        "method": manifest["params"]["method"],
        "num_users": manifest["num_nodes"]["user"],
        "num_items": manifest["num_nodes"]["item"],
        "num_interactions": manifest["num_interactions"],
        "duplicates_dropped": manifest["dropped"]["duplicates"],
        "heldout": manifest.get("heldout", {}),
        **q,
        "parts": manifest["parts"],
        "stages": manifest["stages"],
    }


def format_report(manifest: dict[str, Any]) -> str:
    q = manifest["quality"]
    lines = [
        f"{manifest['num_nodes']['user']:,} users, {manifest['num_nodes']['item']:,} items, "
        f"{manifest['num_interactions']:,} interactions "
        f"({manifest['dropped']['duplicates']:,} duplicates dropped); "
        f"{manifest['num_parts']} parts by {manifest['params']['method']}",
    ]
    for split, h in manifest.get("heldout", {}).items():
        lines.append(f"held-out {split}: {h['rows']:,} kept; dropped {h['dropped_unknown']:,} with an unknown "
                     f"user/item, {h['dropped_in_train']:,} also in train, {h['dropped_duplicates']:,} duplicates")
    header = ("part", "users", "items", "halo", "edges", "train inter.")
    rows = [(str(p["part_id"]), f"{p['num_users']:,}", f"{p['num_items']:,}", f"{p['num_halo']:,}",
             f"{p['num_edges']:,}", f"{p['num_train_interactions']:,}") for p in manifest["parts"]]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines.append("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    lines.append(f"edge cut {q['edge_cut_fraction']:.4f}  halo nodes {q['halo_node_fraction']:.4f}  "
                 f"imbalance: nodes {q['node_imbalance']:.3f} users {q['user_imbalance']:.3f} "
                 f"items {q['item_imbalance']:.3f} edges {q['edge_imbalance']:.3f}")
    a = manifest.get("assignment") or {}
    if a:
        lines.append(f"assignment: {a.get('path')} ({a.get('why', '')})")
    lines.append("stages: " + ", ".join(f"{s['name']} {s['seconds']:.1f}s/{human_bytes(s['peak_rss_bytes'])}"
                                        for s in manifest["stages"]))
    return "\n".join(lines)


def run_stats(args: argparse.Namespace) -> int:
    from distgnn import format as fmt

    manifest = fmt.load_manifest(args.dir)
    if args.json:
        print(json.dumps(stats_object(manifest), indent=2))
    else:
        print(format_report(manifest))
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from partition.verify import verify

    problems = verify(args.dir, train=args.train)
    if problems:
        for p in problems:
            print(f"FAIL {p}", file=sys.stderr)
        print(f"verify: {len(problems)} problem(s) in {args.dir}", file=sys.stderr)
        return 1
    print(f"verify: OK ({args.dir})")
    return 0


def run_estimate(args: argparse.Namespace) -> int:
    from partition.ingest import count_rows, estimate_nodes
    from partition.pipeline import default_memory_limit, estimate, parse_bytes

    if args.num_parts < 1:
        raise UserError(f"--num-parts must be >= 1 (got {args.num_parts})")
    rows, size, fmt_name = count_rows(args.train)
    limit = parse_bytes(args.memory_limit) if args.memory_limit else default_memory_limit()
    nodes, nodes_how = estimate_nodes(args.train, rows)
    est = estimate(rows, nodes, args.num_parts, limit, args.metis_path, args.method)
    est["input_bytes"] = size
    est["rows_exact"] = fmt_name == "parquet"
    est["nodes_from"] = nodes_how
    if args.json:
        print(json.dumps(est, indent=2))
        return 0
    approx = "" if est["rows_exact"] else "about "
    print(f"input: {approx}{rows:,} interactions, {human_bytes(size)} ({fmt_name}); "
          f"about {nodes:,} users + items ({nodes_how})")
    print(f"partition create --num-parts {args.num_parts} --method {args.method} "
          f"--memory-limit {human_bytes(limit)} would use the {est['path']} path ({est['why']}) and need about:")
    print(f"  peak RAM  {human_bytes(est['peak_rss_bytes'])}")
    print(f"  scratch   {human_bytes(est['scratch_bytes'])} (beside --out, or --tmp-dir; removed at the end)")
    print(f"  output    {human_bytes(est['output_bytes'])} (plus the old output while --overwrite replaces it)")
    print(f"  time      {est['seconds']:.0f} s on a 2-core machine")
    return 0
