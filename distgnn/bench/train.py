"""``distgnn bench train`` (being written)."""
import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="training throughput: distgnn local trainer vs plain DGL")
    p.add_argument("--config", required=True)
    p.add_argument("--partitions")
    p.add_argument("--steps", type=int, default=30)
    p.set_defaults(handler=lambda a: 0)
