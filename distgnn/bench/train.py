"""``distgnn bench train``: training throughput of our local trainer vs a plain DGL loop.

Both run in this process on the same partition directory (the same DGL graph of training edges),
with the same fanouts, batch size, embedding dim, hidden size, heads, negatives and threads:

- **ours**: ``distgnn.trainer.Trainer.run_step`` (graph store -> sampler -> embedding store ->
  GAT -> sparse push), with its per-stage split;
- **reference**: what a DGL user writes from the docs: ``NeighborSampler`` +
  ``as_edge_prediction_sampler(exclude='reverse_id')`` with a negative sampler that draws ``k``
  items per positive + ``DataLoader``, an ``nn.Embedding(sparse=True)`` table with
  ``torch.optim.SparseAdam`` (only the rows a minibatch touches are updated, as in our embedding
  store), ``GATConv`` layers (dense Adam), dot-product scores and BPR loss. It takes the
  activation, residual, bias, head merge and layer combination from the config; what plain
  ``GATConv`` cannot reproduce (frozen/identity transform, zero attention init, degree scaling)
  is printed as its own setting. Until issue 12 the reference updated its whole embedding table
  with dense Adam every step, which made it slower than what a DGL user would write.

Throughput is positive training edges per second over ``--steps`` steps after ``--warmup`` steps.
"""
from __future__ import annotations

import argparse
import json
import statistics
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
    """Our trainer's step on consecutive minibatches of epoch 0 (wrapping around), sampled ahead
    by ``distgnn.prefetch`` as in ``Trainer.train`` (``train.prefetch``)."""

    def __init__(self, cfg, graph, tmp):
        from distgnn.prefetch import prefetched
        from distgnn.trainer import Trainer

        self.t = Trainer(cfg, tmp, graph=graph)
        self.batches = prefetched(self.t, 0, self._forever(), cfg.train.prefetch)
        self.timers: dict[str, float] = {}

    def _forever(self):
        sampler = self.t.sampler
        order, b, n = sampler.epoch_order(0), sampler.batch_size, sampler.steps_per_epoch()
        j = 0
        while True:
            yield j % n, order[(j % n) * b:(j % n + 1) * b]
            j += 1

    def steps(self, n: int, timed: bool = True) -> tuple[int, float]:
        timers = self.timers if timed else {}
        edges, start = 0, time.perf_counter()
        for _ in range(n):
            step, idx, prepared = next(self.batches)
            self.t.step_in_epoch = step
            self.t.run_step(idx, timers, prepared)
            edges += len(idx)
        return edges, time.perf_counter() - start

    def close(self) -> None:
        self.batches.close()


class ItemNegatives:
    """DGL negative sampler drawing ``k`` items (never users) uniformly per positive edge.

    ``dgl.dataloading.negative_sampler.Uniform`` draws destinations over all nodes, users
    included; a recommender's negatives are items, as ours are, so the reference draws them the
    way a DGL user would write it for a user-item graph (DGL's documented callable interface)."""

    def __init__(self, item_gids, k: int):
        self.item_gids, self.k = item_gids, k

    def __call__(self, g, eids):
        import torch

        src, _ = g.find_edges(eids)
        src = src.repeat_interleave(self.k)
        dst = self.item_gids[torch.randint(len(self.item_gids), (len(src),))]
        return src, dst


def reference_settings(cfg) -> dict:
    """What the plain DGL loop takes from the config (printed beside our settings): DGL's GATConv
    has a learned ``fc`` with xavier init and xavier attention, and no degree scaling, so
    ``model.transform``, ``model.attn_init`` and ``model.edge_norm`` are not reproduced."""
    m, tr = cfg.model, cfg.train
    return {"embedding": f"nn.Embedding(sparse=True)+SparseAdam(lr={cfg.embedding.lr})",
            "conv": f"GATConv({m.dim}->{m.hidden}x{m.heads}, residual={m.residual}, bias={m.bias})",
            "head_merge": m.head_merge, "activation": m.activation, "layer_combine": m.layer_combine,
            "transform": "learned", "attn_init": "xavier", "edge_norm": "none",
            "dense": f"Adam(lr={tr.dense_lr})", "negatives": f"{tr.num_negatives} uniform items",
            "loss": "bpr (no L2)", "sampler": "NeighborSampler+as_edge_prediction_sampler(reverse_id)"}


class _Reference:
    """The plain DGL loop (see module docstring), configured from the same config as ours as far
    as plain DGL allows (``reference_settings``)."""

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
        act = {"none": None, "elu": F.elu, "relu": F.relu}[m.activation]

        class Ref(nn.Module):
            def __init__(self):
                super().__init__()
                self.emb = nn.Embedding(g.num_nodes(), m.dim, sparse=True)
                nn.init.normal_(self.emb.weight, std=cfg.embedding.init_std)
                dims = [m.dim] + [m.out_dim] * m.layers
                self.convs = nn.ModuleList(GATConv(dims[i], m.hidden, m.heads, residual=m.residual,
                                                   bias=m.bias, allow_zero_in_degree=True)
                                           for i in range(m.layers))

            def forward(self, blocks, input_nodes):
                h = self.emb(input_nodes)
                n_out = blocks[-1].num_dst_nodes()
                outs = [h[:n_out]]
                for i, (conv, block) in enumerate(zip(self.convs, blocks)):
                    h = conv(block, h)
                    h = h.mean(1) if m.head_merge == "mean" else h.flatten(1)
                    if act is not None and i < len(self.convs) - 1:
                        h = act(h)
                    outs.append(h[:n_out])
                return torch.stack(outs).mean(0) if m.layer_combine == "mean" else h

        self.F = F
        self.model = Ref()
        self.sparse_opt = torch.optim.SparseAdam(list(self.model.emb.parameters()), lr=cfg.embedding.lr)
        self.opt = torch.optim.Adam(self.model.convs.parameters(), lr=cfg.train.dense_lr)
        sampler = dgl.dataloading.as_edge_prediction_sampler(
            dgl.dataloading.NeighborSampler(cfg.train.fanouts), exclude="reverse_id",
            reverse_eids=reverse,
            negative_sampler=ItemNegatives(torch.from_numpy(graph.book.item_gids()), k))
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
            self.sparse_opt.zero_grad()
            loss.backward()
            self.opt.step()
            self.sparse_opt.step()
            edges += pos_graph.num_edges()
        return edges, time.perf_counter() - start


def run(args: argparse.Namespace) -> int:
    from distgnn.config import load_config
    from distgnn.errors import UserError

    if args.steps <= 0 or args.warmup < 0:
        raise UserError("--steps must be > 0 and --warmup >= 0")
    cfg = load_config(args.config, args.overrides, args.partitions)
    if cfg.train.loss != "bpr" or cfg.train.shared_negatives or cfg.model.score != "dot":
        # the reference is BPR over dot products with k negatives per positive: another loss or a
        # shared pool of 1,024 negatives would compare unlike work (and draw 1,024 per positive there)
        raise UserError(f"bench train compares against a plain DGL loop with BPR, dot-product scores "
                        f"and negatives per positive, but the config has loss {cfg.train.loss!r}, "
                        f"score {cfg.model.score!r}, shared_negatives {cfg.train.shared_negatives}; "
                        f"use configs/bench_gat.yaml or --set train.loss=bpr --set model.score=dot "
                        f"--set train.shared_negatives=false")
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
    ours_model = {"embedding": f"{cfg.embedding.optimizer} store (lr={cfg.embedding.lr})",
                  "transform": m.transform, "activation": m.activation, "residual": m.residual,
                  "attn_init": m.attn_init, "edge_norm": m.edge_norm, "layer_combine": m.layer_combine,
                  "head_merge": m.head_merge, "bias": m.bias, "loss": tr.loss, "l2": tr.l2,
                  "prefetch": tr.prefetch}
    result = {"setup": setup, "ours_settings": ours_model, "reference_settings": reference_settings(cfg)}
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
        per_round: dict[str, list[float]] = {name: [] for name in sides}
        rounds = max(1, min(args.rounds, args.steps))
        for r in range(rounds):
            n = args.steps // rounds + (1 if r < args.steps % rounds else 0)
            for name, side in sides.items():
                e, dt = side.steps(n)
                totals[name][0] += e
                totals[name][1] += dt
                per_round[name].append(e / dt)
        for name, (e, dt) in totals.items():
            result[name] = {"edges_per_s": e / dt, "seconds": dt, "steps": args.steps,
                            "round_edges_per_s": [round(x, 1) for x in per_round[name]]}
        if "ours" in sides:
            timers = sides["ours"].timers
            total = sum(timers.values()) or 1.0
            result["ours"]["stage_seconds"] = {k: round(timers.get(k, 0.0), 3) for k in STAGES}
            result["ours"]["stage_fraction"] = {k: round(timers.get(k, 0.0) / total, 3) for k in STAGES}
            sides["ours"].close()
    if "ours" in result and "reference" in result:
        # a shared machine's load moves between rounds: the median of the per-round ratios (each
        # round runs both sides back to back) is the figure; the ratio of totals is printed too
        ratios = [o / r for o, r in zip(result["ours"]["round_edges_per_s"],
                                        result["reference"]["round_edges_per_s"])]
        result["round_ratios"] = [round(x, 3) for x in ratios]
        result["ratio"] = statistics.median(ratios)
        result["ratio_of_totals"] = result["ours"]["edges_per_s"] / result["reference"]["edges_per_s"]
    if args.json:
        print(json.dumps(result))
        return 0
    print("setup: " + ", ".join(f"{k}={v}" for k, v in setup.items()))
    print("ours: " + ", ".join(f"{k}={v}" for k, v in ours_model.items()))
    print("reference: " + ", ".join(f"{k}={v}" for k, v in result["reference_settings"].items()))
    if "ours" in result:
        o = result["ours"]
        print(f"distgnn local trainer : {o['edges_per_s']:10.0f} edges/s  ({o['steps']} steps, {o['seconds']:.1f} s)")
        split = "  ".join(f"{k} {v * 100:.0f}%" for k, v in o["stage_fraction"].items())
        print(f"  stage split         : {split}")
    if "reference" in result:
        r = result["reference"]
        print(f"plain DGL reference   : {r['edges_per_s']:10.0f} edges/s  ({r['steps']} steps, {r['seconds']:.1f} s)")
    if "ratio" in result:
        print(f"ratio (ours / DGL)    : {result['ratio']:.2f}x median of {len(result['round_ratios'])} "
              f"rounds ({', '.join(f'{x:.2f}' for x in result['round_ratios'])}); "
              f"totals {result['ratio_of_totals']:.2f}x")
    sys.stdout.flush()
    return 0
