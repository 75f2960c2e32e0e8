"""``distgnn bench train``: training throughput of our local trainer vs a plain DGL loop.

Both run in this process on the same partition directory (the same DGL graph of training edges),
with the same fanouts, batch size, embedding dim, hidden size, heads, negatives and threads:

- **ours**: ``distgnn.trainer.Trainer.run_step`` (graph store -> sampler -> embedding store ->
  GAT -> sparse push), with its per-stage split;
- **reference**: what a DGL user writes from the docs: ``NeighborSampler`` +
  ``as_edge_prediction_sampler(exclude='reverse_id', negative_sampler=Uniform(k))`` +
  ``DataLoader``, an ``nn.Embedding`` table with standard (dense) Adam, ``GATConv`` layers with
  ELU between them, dot-product scores and BPR loss.

Throughput is positive training edges per second over ``--steps`` steps after ``--warmup`` steps.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="training edges/s: distgnn local trainer vs a plain DGL GAT loop",
        description="Runs our local trainer and a plain single-process DGL GAT link-prediction loop "
                    "on the same data with the same fanouts/batch/dims/heads/threads; prints edges/s "
                    "of both, the ratio, and our per-stage time split.")
    p.add_argument("--config", required=True, help="training config (YAML)")
    p.add_argument("--partitions", help="partition directory; overrides data.partitions")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="A.B=V",
                   help="config override, as in 'distgnn train'")
    p.add_argument("--steps", type=int, default=30, help="timed steps per side (default 30)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--rounds", type=int, default=5,
                   help="alternate ours/reference in this many rounds (default 5)")
    p.add_argument("--only", choices=["ours", "reference"], help="run one side only")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=run)


class _Ours:
    """Our trainer's step on consecutive minibatches of epoch 0."""

    def __init__(self, cfg, graph, tmp):
        from distgnn.trainer import Trainer

        self.t = Trainer(cfg, tmp, graph=graph)
        self.order = self.t.sampler.epoch_order(0)
        self.b = cfg.train.batch_size
        self.n_batches = self.t.sampler.steps_per_epoch()
        self.s = 0
        self.timers: dict[str, float] = {}

    def steps(self, n: int, timed: bool = True) -> tuple[int, float]:
        timers = self.timers if timed else {}
        edges, start = 0, time.perf_counter()
        for _ in range(n):
            j = self.s % self.n_batches
            self.t.step_in_epoch = j
            idx = self.order[j * self.b:(j + 1) * self.b]
            self.t.run_step(idx, timers)
            edges += len(idx)
            self.s += 1
        return edges, time.perf_counter() - start


class _Reference:
    """The plain DGL loop (see module docstring)."""

    def __init__(self, cfg, graph):
        import dgl
        import torch
        import torch.nn as nn
        import torch.nn.functional as F
        from dgl.nn import GATConv

        torch.manual_seed(cfg.train.seed)
        g = graph.g                                   # the same graph (all partitions, lid == gid)
        user_gid, item_gid = graph.train_interactions()
        eid_ui = g.edge_ids(user_gid, item_gid)       # the positive (user -> item) edges
        eid_iu = g.edge_ids(item_gid, user_gid)
        reverse = torch.empty(g.num_edges(), dtype=torch.int64)
        reverse[eid_ui] = eid_iu
        reverse[eid_iu] = eid_ui
        m = cfg.model
        self.k = k = cfg.train.num_negatives

        class Ref(nn.Module):
            def __init__(self):
                super().__init__()
                self.emb = nn.Embedding(g.num_nodes(), m.dim)
                nn.init.normal_(self.emb.weight, std=cfg.embedding.init_std)
                dims = [m.dim] + [m.out_dim] * m.layers
                self.convs = nn.ModuleList(GATConv(dims[i], m.hidden, m.heads, allow_zero_in_degree=True)
                                           for i in range(m.layers))

            def forward(self, blocks, input_nodes):
                h = self.emb(input_nodes)
                for i, (conv, block) in enumerate(zip(self.convs, blocks)):
                    h = conv(block, h)
                    h = h.mean(1) if m.head_merge == "mean" else h.flatten(1)
                    if i < len(self.convs) - 1:
                        h = F.elu(h)
                return h

        self.F = F
        self.model = Ref()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.train.dense_lr)
        sampler = dgl.dataloading.as_edge_prediction_sampler(
            dgl.dataloading.NeighborSampler(cfg.train.fanouts), exclude="reverse_id",
            reverse_eids=reverse, negative_sampler=dgl.dataloading.negative_sampler.Uniform(k))
        self.loader = dgl.dataloading.DataLoader(g, eid_ui, sampler, batch_size=cfg.train.batch_size,
                                                 shuffle=True, drop_last=False, num_workers=0)
        self.it = iter(self.loader)

    def _next(self):
        try:
            return next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            return next(self.it)

    def steps(self, n: int, timed: bool = True) -> tuple[int, float]:
        F = self.F
        edges, start = 0, time.perf_counter()
        for _ in range(n):
            input_nodes, pos_graph, neg_graph, blocks = self._next()
            h = self.model(blocks, input_nodes)
            pu, pv = pos_graph.edges()
            nu, nv = neg_graph.edges()
            pos = (h[pu] * h[pv]).sum(-1)
            neg = (h[nu] * h[nv]).sum(-1).view(-1, self.k)
            loss = -F.logsigmoid(pos.unsqueeze(1) - neg).mean()
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            edges += pos_graph.num_edges()
        return edges, time.perf_counter() - start


def run(args: argparse.Namespace) -> int:
    from distgnn.config import load_config
    from distgnn.errors import UserError

    if args.steps <= 0 or args.warmup < 0:
        raise UserError("--steps must be > 0 and --warmup >= 0")
    cfg = load_config(args.config, args.overrides, args.partitions)
    from distgnn.commands import set_threads
    set_threads(cfg.train.threads)
    import torch

    from distgnn.graph_store import LocalGraphStore
    from distgnn.trainer import STAGES

    torch.set_num_threads(cfg.train.threads)
    graph = LocalGraphStore(cfg.data.partitions, deterministic=cfg.train.deterministic_sampling)
    m, tr = cfg.model, cfg.train
    setup = {"partitions": cfg.data.partitions, "edges": int(graph.manifest["num_interactions"]),
             "batch_size": tr.batch_size, "fanouts": tr.fanouts, "dim": m.dim, "hidden": m.hidden,
             "heads": m.heads, "layers": m.layers, "negatives": tr.num_negatives, "threads": tr.threads,
             "deterministic_sampling": tr.deterministic_sampling}
    result = {"setup": setup}
    sides = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.only != "reference":
            sides["ours"] = _Ours(cfg, graph, tmp)
        if args.only != "ours":
            sides["reference"] = _Reference(cfg, graph)
        for side in sides.values():
            side.steps(args.warmup, timed=False)
        # alternate rounds so both sides see the same machine conditions
        totals = {name: [0, 0.0] for name in sides}
        rounds = max(1, min(args.rounds, args.steps))
        for r in range(rounds):
            n = args.steps // rounds + (1 if r < args.steps % rounds else 0)
            for name, side in sides.items():
                e, dt = side.steps(n)
                totals[name][0] += e
                totals[name][1] += dt
        for name, (e, dt) in totals.items():
            result[name] = {"edges_per_s": e / dt, "seconds": dt, "steps": args.steps}
        if "ours" in sides:
            timers = sides["ours"].timers
            total = sum(timers.values()) or 1.0
            result["ours"]["stage_seconds"] = {k: round(timers.get(k, 0.0), 3) for k in STAGES}
            result["ours"]["stage_fraction"] = {k: round(timers.get(k, 0.0) / total, 3) for k in STAGES}
    if "ours" in result and "reference" in result:
        result["ratio"] = result["ours"]["edges_per_s"] / result["reference"]["edges_per_s"]
    if args.json:
        print(json.dumps(result))
        return 0
    print("setup: " + ", ".join(f"{k}={v}" for k, v in setup.items()))
    if "ours" in result:
        o = result["ours"]
        print(f"distgnn local trainer : {o['edges_per_s']:10.0f} edges/s  ({o['steps']} steps, {o['seconds']:.1f} s)")
        split = "  ".join(f"{k} {v * 100:.0f}%" for k, v in o["stage_fraction"].items())
        print(f"  stage split         : {split}")
    if "reference" in result:
        r = result["reference"]
        print(f"plain DGL reference   : {r['edges_per_s']:10.0f} edges/s  ({r['steps']} steps, {r['seconds']:.1f} s)")
    if "ratio" in result:
        print(f"ratio (ours / DGL)    : {result['ratio']:.2f}x")
    sys.stdout.flush()
    return 0
