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
    p.set_defaults(handler=run)


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
    from distgnn.evaluation import Evaluator, infer_all
    from distgnn.trainer import load_for_inference

    parts, ckpt_path = load_for_inference(args.run, cfg)
    evaluator = Evaluator(parts.graph, args.split)  # reads the targets first: a missing file fails fast
    emb = infer_all(parts.model, parts.graph, parts.emb, cfg.eval.node_batch, parts.device)
    metrics = evaluator.evaluate(emb, args.k, cfg.eval.user_batch, parts.device)
    out = {"split": args.split, "k": args.k, **selection(args.run, Path(ckpt_path), cfg.eval.split),
           "masked": ["train", *evaluator.masked_splits], **metrics}
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
            if key != "num_users":
                print(f"  {key:>14} {val:.4f}")
    sys.stdout.flush()
    return 0


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
