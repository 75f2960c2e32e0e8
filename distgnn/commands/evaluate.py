"""``distgnn evaluate``: full-ranking metrics of a trained run on its held-out split."""
from __future__ import annotations

import argparse
import json
import sys

from distgnn.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="Recall/NDCG@K (and more) over the full item catalogue",
        description="Layer-wise full-neighbour inference, then for each user with held-out items a "
                    "ranking of every item not already known (test: training and validation "
                    "interactions masked; valid: training ones). Uses the checkpoint selected during "
                    "training (best validation Recall@K), or else the latest, and says which.")
    p.add_argument("--run", required=True, help="run directory written by 'distgnn train'")
    p.add_argument("--k", type=int, default=20, help="cut-off K (default 20)")
    p.add_argument("--split", choices=["test", "valid"], default="test")
    p.add_argument("--partitions", help="partition directory (default: the run's data.partitions)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_backend_args(p)
    p.add_argument("--protocol", choices=["full", "sampled"],
                   help="full: rank every item (default, eval.protocol); sampled: rank the held-out "
                        "items among --num-negatives sampled items per user (big catalogues)")
    p.add_argument("--num-negatives", type=int, metavar="N", help="sampled protocol: negatives per user")
    p.add_argument("--max-users", type=int, metavar="N",
                   help="evaluate a seeded sample of about N users (eval.max_users); default: all")
    p.epilog = ("example: distgnn evaluate --run runs/g100m --backend ray --num-workers 2 "
                "--max-users 20000 --json")
    p.set_defaults(handler=run)


def add_backend_args(p: argparse.ArgumentParser) -> None:
    """--backend / --num-workers / --address, shared by evaluate and recommend."""
    p.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="local: one process holds the whole graph (small runs, the default); ray: "
                        "sharded inference on Ray workers, each holding only its own partitions")
    p.add_argument("--num-workers", type=int, metavar="N",
                   help="--backend ray: inference workers, each taking whole partitions "
                        "(default: one per partition)")
    p.add_argument("--address", metavar="ADDR",
                   help="--backend ray: join this Ray cluster ('auto', HOST:PORT, ray://HOST:PORT) "
                        "instead of starting a local one")
    p.add_argument("--timeout", type=float, default=3600.0, metavar="S",
                   help="--backend ray: deadline in seconds for each inference stage (default 3600)")


def check_backend_args(args: argparse.Namespace, num_parts: int) -> int | None:
    """The number of Ray workers, or None for the local backend (after checking the options)."""
    if args.backend == "local":
        if args.num_workers is not None or args.address:
            raise UserError("--num-workers and --address need --backend ray")
        return None
    n = num_parts if args.num_workers is None else args.num_workers
    if not 1 <= n <= num_parts:
        raise UserError(f"--num-workers {n} does not fit the {num_parts} partitions: each worker takes "
                        f"whole partitions; pass --num-workers between 1 and {num_parts}")
    if args.timeout <= 0:
        raise UserError(f"--timeout must be positive (got {args.timeout})")
    return n


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    if args.k <= 0:
        raise UserError(f"--k must be a positive integer (got {args.k})")
    from distgnn.config import load_run_config
    cfg = load_run_config(args.run)
    if args.partitions:
        cfg.data.partitions = args.partitions
    from distgnn.commands import set_threads
    set_threads(cfg.train.threads)
    from distgnn import format as fmt
    manifest = fmt.load_manifest(cfg.data.partitions)
    if args.split not in manifest.get("heldout", {}):
        raise UserError(f"{cfg.data.partitions} has no '{args.split}' split; partition with "
                        f"--{args.split} or choose --split {'valid' if args.split == 'test' else 'test'}")
    if args.protocol:
        cfg.eval.protocol = args.protocol
    if args.num_negatives is not None:
        if args.num_negatives <= 0:
            raise UserError(f"--num-negatives must be positive (got {args.num_negatives})")
        cfg.eval.num_negatives = args.num_negatives
    if args.max_users is not None:
        if args.max_users <= 0:
            raise UserError(f"--max-users must be positive (got {args.max_users})")
        cfg.eval.max_users = args.max_users
    num_workers = check_backend_args(args, len(manifest["parts"]))
    if num_workers is None and cfg.eval.protocol == "sampled":
        raise UserError("the sampled protocol runs on the sharded evaluator; add --backend ray "
                        "(a local Ray instance is started for you)")
    from distgnn import checkpoint as ckpt

    ckpt_path = Path(ckpt.for_inference(args.run))
    if num_workers is not None:
        from launch import infer

        res = infer.evaluate(cfg, args.run, ckpt_path, args.split, args.k, num_workers, args.address,
                             args.timeout)
        metrics, masked = res["metrics"], res["masked"]
        extra = {"backend": "ray", "num_workers": num_workers,
                 "peak_rss_bytes": {f"worker{p['rank']}": p["peak_rss_bytes"] for p in res["processes"]}}
    else:
        from distgnn.evaluation import Evaluator, infer_all
        from distgnn.trainer import load_for_inference

        parts, ckpt_path = load_for_inference(args.run, cfg)
        evaluator = Evaluator(parts.graph, args.split, cfg.eval.max_users, cfg.train.seed)
        emb = infer_all(parts.model, parts.graph, parts.emb, cfg.eval.node_batch, parts.device)
        metrics = evaluator.evaluate(emb, args.k, cfg.eval.user_batch, parts.device)
        masked = ["train", *evaluator.masked_splits]
        extra = {"backend": "local"}
    sel = selection(args.run, Path(ckpt_path), cfg.eval.split)
    sel["protocol"] = protocol_name(cfg.eval, sel)
    out = {"split": args.split, "k": args.k, **sel, "masked": masked, **extra, **metrics}
    if args.json:
        print(json.dumps(out))
    else:
        sel = out["selected_on"]
        how = (f"selected on {sel['split']} {sel['metric']}={sel['value']:.4f}" if sel
               else "the latest: no validation ran, so nothing was selected")
        print(f"checkpoint {out['checkpoint']} (epoch {out['checkpoint_epoch']}, {how})")
        print(f"{args.run} on {args.split} ({out['protocol']}; masked: {', '.join(out['masked'])}), "
              f"{metrics['num_users']} users:")
        for key, val in metrics.items():
            if key not in ("num_users",):
                print(f"  {key:>14} {val:.4f}")
    sys.stdout.flush()
    return 0


def protocol_name(e, sel: dict) -> str:
    """The protocol that produced the numbers: ranking (full or sampled, over which users) and
    how the checkpoint was chosen."""
    rank = ("full-ranking" if e.protocol == "full"
            else f"sampled ranking ({e.num_negatives} negatives per user)")
    if e.max_users is not None:
        rank += f" on a seeded sample of ~{e.max_users} users"
    return rank + sel["protocol"][len("full-ranking"):]


def selection(run_dir: str, path, default_split: str) -> dict:
    """Which checkpoint was read and how it was chosen: its path and epoch, the validation metric
    it was selected on (None when no validation ran and the latest was used), and the protocol.
    A best.json from before the split was recorded is taken to be on the run's eval.split."""
    from distgnn import checkpoint as ckpt

    rec = ckpt.best_record(run_dir)
    epoch = ckpt.read_meta(path)["epoch"]
    if rec is not None and rec["path"].name == path.name:
        sel = {"split": rec.get("split", default_split), "metric": rec["metric"], "value": rec["value"]}
        protocol = f"full-ranking, selected on {sel['split']}"
    else:
        sel, protocol = None, "full-ranking, latest checkpoint (not selected)"
    return {"checkpoint": str(path), "checkpoint_epoch": epoch, "selected_on": sel, "protocol": protocol}
