import numpy as np
import pyarrow as pa
import pytest
import torch

from distgnn.embedding_store import LocalEmbeddingStore
from distgnn.errors import UserError


@pytest.mark.parametrize("opt", ["adam", "adagrad"])
def test_only_touched_rows_change(opt):
    s = LocalEmbeddingStore(50, 8, optimizer=opt, lr=0.1, seed=1)
    before = s.state_dict()
    rows = torch.tensor([3, 7, 7, 20])
    s.push(rows, torch.randn(4, 8))
    after = s.state_dict()
    touched = torch.zeros(50, dtype=torch.bool)
    touched[rows] = True
    for name in before:
        changed = (before[name] != after[name]).reshape(50, -1).any(1)
        assert torch.equal(changed, touched), name


@pytest.mark.parametrize("opt", ["adam", "adagrad"])
def test_duplicates_are_summed(opt):
    a = LocalEmbeddingStore(10, 4, optimizer=opt, lr=0.1, seed=0)
    b = LocalEmbeddingStore(10, 4, optimizer=opt, lr=0.1, seed=0)
    g1, g2 = torch.randn(1, 4), torch.randn(1, 4)
    a.push(torch.tensor([5, 5]), torch.cat([g1, g2]))
    b.push(torch.tensor([5]), g1 + g2)
    assert torch.allclose(a.pull(torch.arange(10)), b.pull(torch.arange(10)))


@pytest.mark.parametrize("opt,torch_opt", [("adam", torch.optim.Adam), ("adagrad", torch.optim.Adagrad)])
def test_matches_torch_optimizer_on_a_row_touched_every_step(opt, torch_opt):
    s = LocalEmbeddingStore(6, 4, optimizer=opt, lr=0.05, seed=3, eps=1e-8)
    w = torch.nn.Parameter(s.pull(torch.tensor([2])).clone())
    kw = {"eps": 1e-8} if opt == "adam" else {"eps": 1e-8, "initial_accumulator_value": 0.0}
    ref = torch_opt([w], lr=0.05, **kw)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        g = torch.randn(1, 4, generator=gen)
        s.push(torch.tensor([2]), g)
        w.grad = g.clone()
        ref.step()
    assert torch.allclose(s.pull(torch.tensor([2])), w.detach(), atol=1e-6)


def test_gradient_flow_through_pull():
    s = LocalEmbeddingStore(10, 4, optimizer="adagrad", lr=0.5, seed=0)
    gids = torch.tensor([1, 4])
    x = s.pull(gids).requires_grad_(True)
    loss = (x * torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])).sum()
    loss.backward()
    before = s.pull(torch.arange(10)).clone()
    s.push(gids, x.grad)
    after = s.pull(torch.arange(10))
    # descending the gradient lowers the loss; exactly the two rows move
    assert after[1, 0] < before[1, 0] and after[4, 1] < before[4, 1]
    assert torch.equal((after != before).any(1).nonzero().flatten(), gids)


@pytest.mark.parametrize("opt", ["adam", "adagrad"])
def test_save_load_keyed_by_orig_id(tmp_path, opt):
    s = LocalEmbeddingStore(6, 3, optimizer=opt, lr=0.1, seed=0)
    s.push(torch.tensor([0, 1, 4]), torch.randn(3, 3))
    maps = {"user": (np.array([0, 1, 2]), pa.array(["a", "b", "c"])),
            "item": (np.array([3, 4, 5]), pa.array(["x", "y", "z"]))}
    s.save(tmp_path, maps)
    # the same orig ids under another gid assignment (as after re-partitioning)
    t = LocalEmbeddingStore(6, 3, optimizer=opt, lr=0.1, seed=9)
    maps2 = {"user": (np.array([3, 4, 5]), pa.array(["c", "a", "b"])),
             "item": (np.array([0, 1, 2]), pa.array(["z", "y", "x"]))}
    t.load(tmp_path, maps2)
    perm = torch.tensor([5, 4, 3, 2, 0, 1])  # new gid -> old gid
    for name, val in s.state_dict().items():
        assert torch.equal(t.state_dict()[name], val[perm]), name


def test_load_rejects_other_optimizer_and_missing_ids(tmp_path):
    s = LocalEmbeddingStore(2, 3, optimizer="adam")
    maps = {"user": (np.array([0]), pa.array([10])), "item": (np.array([1]), pa.array([11]))}
    s.save(tmp_path, maps)
    with pytest.raises(UserError, match="adam"):
        LocalEmbeddingStore(2, 3, optimizer="adagrad").load(tmp_path, maps)
    other = {"user": (np.array([0]), pa.array([99])), "item": (np.array([1]), pa.array([11]))}
    with pytest.raises(UserError, match="no row in the checkpoint"):
        LocalEmbeddingStore(2, 3, optimizer="adam").load(tmp_path, other)


def test_rows_moved_to_shared_files_are_updated_in_place_by_an_attached_store(tmp_path):
    """The Ray backend's co-located path: the shard moves its rows to files, the trainer attaches
    and pushes; the shard sees the update with no copy, and the optimizer state is shared too."""
    owner = LocalEmbeddingStore(50, 8, optimizer="adam", lr=0.1, seed=4)
    reference = LocalEmbeddingStore(50, 8, optimizer="adam", lr=0.1, seed=4)
    spec = owner.move_to_files(str(tmp_path / "ps0"))
    assert torch.equal(owner.weight, reference.weight)
    view = LocalEmbeddingStore.attach(spec, "adam", 0.1)
    gids, grads = torch.tensor([3, 7, 7, 20]), torch.randn(4, 8)
    view.push(gids, grads)
    reference.push(gids, grads)
    for name in ("weight", "exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(getattr(owner, name), getattr(reference, name)), name
    assert torch.equal(view.pull(gids), reference.pull(gids))
