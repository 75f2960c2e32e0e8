"""Model: a multi-head GAT (DGL ``GATConv``) over ID embeddings, dot-product link scores.

Layer 0 is the ID embedding of each node (pulled from the embedding store); each of the L layers
is one ``GATConv`` on a DGL block. Borrowed from LightGCN, all configurable (``ModelConfig``):

- ``transform``: GATConv's linear map can be frozen to the identity or identity-initialised, so
  the model starts as pure (attention-weighted) neighbourhood smoothing;
- ``activation: none``: no nonlinearity between layers;
- ``edge_norm: sym``: attention is multiplied by ``sqrt(deg_dst/deg_src)``; with uniform attention
  (``attn_init: zero``) that is exactly LightGCN's ``1/sqrt(deg_src*deg_dst)`` (and with sampled
  neighbours an unbiased estimate of it); attention then learns to deviate from it;
- ``layer_combine: mean``: the output is the mean of layers 0..L;
- ``attention: uniform``: the attention vectors are frozen at zero, so every neighbour gets the
  same weight (the ablation of learned attention; with ``edge_norm: sym`` this is LightGCN's
  propagation inside the same GATConv code).

The same ``layer()`` method serves training (sampled blocks) and layer-wise full inference.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from distgnn.config import ModelConfig


def _activation(name: str):
    return {"none": None, "elu": F.elu, "relu": F.relu}[name]


class RepeatHeads(nn.Module):
    """GATConv's ``fc`` when the transform is a frozen identity: copies the input per head.

    Same output as a Linear whose weight is the stacked identity, without the matmul and its
    backward (a third of the step time at dim 64, 2 heads).
    """

    def __init__(self, heads: int):
        super().__init__()
        self.heads = heads

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.repeat(1, self.heads) if self.heads > 1 else h


class GATRec(nn.Module):
    def __init__(self, cfg: ModelConfig):
        from dgl.nn import GATConv

        super().__init__()
        self.cfg = cfg
        self.convs = nn.ModuleList()
        in_dim = cfg.dim
        for _ in range(cfg.layers):
            conv = GATConv(in_dim, cfg.hidden, cfg.heads, feat_drop=cfg.dropout,
                           attn_drop=cfg.attn_dropout, residual=cfg.residual, activation=None,
                           allow_zero_in_degree=True, bias=cfg.bias)
            self._init_conv(conv, in_dim)
            self.convs.append(conv)
            in_dim = cfg.out_dim
        self.act = _activation(cfg.activation)

    def _init_conv(self, conv, in_dim: int) -> None:
        cfg = self.cfg
        if cfg.transform in ("identity_init", "identity"):
            with torch.no_grad():
                w = conv.fc.weight.view(cfg.heads, cfg.hidden, in_dim)
                for h in range(cfg.heads):
                    nn.init.eye_(w[h])
            if cfg.transform == "identity" and in_dim == cfg.hidden:
                conv.fc = RepeatHeads(cfg.heads)
        if cfg.attn_init == "zero" or cfg.attention == "uniform":
            nn.init.zeros_(conv.attn_l)
            nn.init.zeros_(conv.attn_r)
        if cfg.attention == "uniform":  # logits stay 0: softmax gives every in-neighbour 1/deg
            conv.attn_l.requires_grad_(False)
            conv.attn_r.requires_grad_(False)
        res = getattr(conv, "res_fc", None)
        if isinstance(res, nn.Linear) and cfg.transform != "learned":
            with torch.no_grad():
                w = res.weight.view(cfg.heads, cfg.hidden, in_dim)
                for h in range(cfg.heads):
                    nn.init.eye_(w[h])

    def layer(self, i: int, block, h_src: torch.Tensor, edge_weight: torch.Tensor | None) -> torch.Tensor:
        """Apply layer ``i`` on one block: [num_src, in] -> [num_dst, out]."""
        out = self.convs[i](block, h_src, edge_weight=edge_weight)  # [num_dst, heads, hidden]
        out = out.mean(1) if self.cfg.head_merge == "mean" else out.flatten(1)
        if self.act is not None and i < len(self.convs) - 1:
            out = self.act(out)
        return out

    def forward(self, blocks: list, x: torch.Tensor, edge_weights: list | None = None) -> torch.Tensor:
        """Embeddings of the last block's dst nodes from the input nodes' layer-0 embeddings."""
        if not blocks:
            return x
        n_out = blocks[-1].num_dst_nodes()
        h = x
        outs = [x[:n_out]]
        for i, block in enumerate(blocks):
            h = self.layer(i, block, h, edge_weights[i] if edge_weights else None)
            outs.append(h[:n_out])
        if self.cfg.layer_combine == "mean":
            return torch.stack(outs, 0).mean(0)
        return h


def sym_edge_weight(block, src_deg: torch.Tensor, dst_deg: torch.Tensor) -> torch.Tensor:
    """sqrt(deg_dst / deg_src) per block edge (see module docstring)."""
    u, v = block.edges()
    return (dst_deg[v].clamp(min=1).to(torch.float32) / src_deg[u].clamp(min=1).to(torch.float32)).sqrt()


def link_scores(hu: torch.Tensor, hp: torch.Tensor, hn: torch.Tensor, cosine: bool = False):
    """hu, hp [B, d]; hn [B, k, d] (per-positive negatives) or [k, d] (shared): pos [B], neg [B, k]."""
    if cosine:
        hu, hp, hn = F.normalize(hu, dim=-1), F.normalize(hp, dim=-1), F.normalize(hn, dim=-1)
    pos = (hu * hp).sum(-1)
    neg = (hu.unsqueeze(1) * hn).sum(-1) if hn.dim() == 3 else hu @ hn.T
    return pos, neg


def softmax_loss(pos: torch.Tensor, neg: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Sampled softmax: -log(exp(pos/t) / (exp(pos/t) + sum_k exp(neg_k/t)))."""
    logits = torch.cat([pos.unsqueeze(1), neg], 1) / temperature
    return -F.log_softmax(logits, 1)[:, 0].mean()


def bpr_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """pos [B], neg [B, k]: mean of -log sigmoid(pos - neg) over all pairs."""
    return -F.logsigmoid(pos.unsqueeze(1) - neg).mean()


def bce_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    return (F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos))
            + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg)))


def ccl_loss(pos: torch.Tensor, neg: torch.Tensor, margin: float, negative_weight: float) -> torch.Tensor:
    """SimpleX's cosine contrastive loss on cosine scores pos [B], neg [B, k]:
    mean over positives of (1 - pos) + negative_weight * mean_k relu(neg_k - margin).

    The margin ignores negatives that are already far (the many easy ones), and the weight
    balances a single positive against k negatives; together they keep a large negative pool
    from drowning the positive term (why plain cosine softmax lost NDCG to popular items)."""
    return ((1.0 - pos) + negative_weight * F.relu(neg - margin).mean(1)).mean()


LOSSES = {"bpr": bpr_loss, "bce": bce_loss, "softmax": softmax_loss, "ccl": ccl_loss}


def make_loss(train) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``loss(pos, neg)`` for a ``TrainConfig``, its options bound (the config validated them)."""
    fn = LOSSES[train.loss]
    if train.loss == "softmax":
        return partial(fn, temperature=train.temperature)
    if train.loss == "ccl":
        return partial(fn, margin=train.ccl_margin, negative_weight=train.ccl_negative_weight)
    return fn
