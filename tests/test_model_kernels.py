"""Our GAT layer equals DGL's GATConv (same parameters) up to float rounding, in both directions."""
import dgl
import pytest
import torch
from dgl.nn import GATConv

from distgnn.config import ModelConfig
from distgnn.model import GATRec


def _block(n_src=60, n_dst=20, n_edges=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(n_src, (n_edges,), generator=g)
    dst = torch.randint(n_dst, (n_edges,), generator=g)
    return dgl.create_block((src, dst), num_src_nodes=n_src, num_dst_nodes=n_dst)


@pytest.mark.parametrize("model_kw", [
    dict(transform="learned", residual=True, bias=True, attn_init="xavier", hidden=8, head_merge="concat",
         layer_combine="last"),
    dict(transform="identity", attn_init="xavier"),
    dict(transform="identity_init", residual=True, attn_init="xavier"),
])
@pytest.mark.parametrize("weighted", [False, True])
def test_gat_layer_equals_gatconv(model_kw, weighted):
    torch.manual_seed(0)
    cfg = ModelConfig(dim=16, hidden=model_kw.pop("hidden", 16), heads=2, layers=1, **model_kw)
    ours = GATRec(cfg).convs[0]
    with torch.no_grad():  # non-trivial attention and bias
        ours.attn_l.normal_()
        ours.attn_r.normal_()
        if ours.has_explicit_bias:
            ours.bias.normal_()
    ref = GATConv(16, cfg.hidden, 2, residual=cfg.residual, bias=cfg.bias, allow_zero_in_degree=True)
    ref.load_state_dict(ours.state_dict(), strict=False)
    if cfg.transform == "identity":
        with torch.no_grad():
            ref.fc.weight.copy_(torch.eye(16).repeat(2, 1))
    else:
        ref.fc = ours.fc
    block = _block()
    ew = torch.rand(block.num_edges()) if weighted else None
    x1 = torch.randn(60, 16, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    y1 = ours(block, x1, edge_weight=ew)
    y2 = ref(block, x2, edge_weight=ew)
    assert torch.allclose(y1, y2, atol=1e-5, rtol=1e-4)
    w = torch.randn_like(y1)
    (y1 * w).sum().backward()
    (y2 * w).sum().backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-5, rtol=1e-4)
    assert torch.allclose(ours.attn_l.grad, ref.attn_l.grad, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(y1, torch.zeros_like(y1))
