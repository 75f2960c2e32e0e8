"""``distgnn plot``: validation curves of one or more runs, as a PNG.

Reads each run's metrics through ``distgnn.metrics.read_metrics`` (every rank's file, or an older
run's single ``metrics.jsonl``) and draws its ``valid`` records' ``--metric`` against wall-clock
minutes or epochs, one line per run. Minutes are the ``valid`` record's ``wall_seconds`` (time since
the training loop of that invocation started), summed over the invocations of a resumed run, so a
resumed run's curve continues instead of starting again at 0. A resumed run that redid an epoch
keeps the later record of it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from distgnn.errors import UserError

PLOT_SOFTWARE = "distgnn plot"  # PNG "Software" text chunk: the marker --overwrite recognises


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot", help="plot runs' validation metric against wall-clock minutes or epochs (PNG)",
        description="One line per run: the validation metric of each 'valid' record in the run's "
                    "metrics, against wall-clock minutes of training (default) or epochs.",
        epilog="example: distgnn plot --runs runs/q* --metric recall@20 --out curves.png",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, metavar="RUN",
                   help="run directories written by 'distgnn train' (a shell glob such as runs/q*)")
    p.add_argument("--metric", default="recall@20",
                   help="a field of the runs' valid records, e.g. recall@20, ndcg@20 (default recall@20)")
    p.add_argument("--x", choices=["minutes", "epoch"], default="minutes",
                   help="x axis: wall-clock minutes of training (default) or epoch")
    p.add_argument("--out", required=True, help="output PNG path")
    p.add_argument("--title", help="figure title (default: the metric and the split)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if an earlier 'distgnn plot' wrote it")
    p.set_defaults(handler=run)


def curve(run_dir: Path, metric: str, x: str) -> tuple[list[float], list[float], str]:
    """(x values, metric values, split) of one run's validation records."""
    from distgnn.metrics import read_metrics

    if not run_dir.is_dir():
        raise UserError(f"--runs {run_dir} is not a directory; give run directories written by "
                        f"'distgnn train'")
    valid = read_metrics(run_dir).of_type("valid")
    if not valid:
        raise UserError(f"{run_dir} has no validation records; train with train.eval_every > 0 "
                        f"(or leave it out of --runs)")
    known = sorted({k for r in valid for k, v in r.items() if isinstance(v, (int, float))
                    and k not in ("epoch", "step", "train_seconds", "wall_seconds", "num_users")})
    if not any(metric in r for r in valid):
        raise UserError(f"{run_dir}: unknown metric {metric!r}; its validation records have "
                        f"{', '.join(known)}")
    by_epoch: dict[int, tuple[float, float]] = {}
    offset, prev = 0.0, 0.0
    for r in valid:
        wall = float(r.get("wall_seconds", r.get("train_seconds", 0.0)))
        if wall < prev:  # a resumed invocation starts its clock again
            offset += prev
        prev = wall
        if metric in r:
            xv = (offset + wall) / 60.0 if x == "minutes" else float(r["epoch"])
            by_epoch[int(r["epoch"])] = (xv, float(r[metric]))
    points = sorted(by_epoch.values())
    return [p[0] for p in points], [p[1] for p in points], str(valid[-1].get("split", "valid"))


def is_ours(path: Path) -> bool:
    """True if ``path`` is a PNG that 'distgnn plot' wrote (its Software text chunk says so)."""
    try:
        from PIL import Image
        with Image.open(path) as img:
            return img.format == "PNG" and img.info.get("Software") == PLOT_SOFTWARE
    except (OSError, ValueError):
        return False


def run(args: argparse.Namespace) -> int:
    from distgnn import atomic

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise UserError(f"--out {out} must end in .png (the plot is written as PNG)")
    if not out.parent.is_dir():
        raise UserError(f"parent directory {out.parent} of --out does not exist; create it first")
    atomic.check_replaceable(out, is_ours, args.overwrite, what="'distgnn plot'", kind="file")
    curves = [(Path(r), *curve(Path(r), args.metric, args.x)) for r in args.runs]  # all checked first

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for run_dir, xs, ys, _split in curves:
        ax.plot(xs, ys, marker="o", markersize=3, label=str(run_dir))
    splits = sorted({c[3] for c in curves})
    ax.set_xlabel("wall-clock minutes of training" if args.x == "minutes" else "epoch")
    ax.set_ylabel(f"{args.metric} ({'/'.join(splits)})")
    ax.set_title(args.title or f"{args.metric} on {'/'.join(splits)} by {args.x}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    with atomic.atomic_file(out) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": PLOT_SOFTWARE})
    plt.close(fig)
    print(out)
    return 0
