import pytest
import torch

from distgnn import format as fmt
from distgnn.embedding_store import LocalEmbeddingStore
from distgnn.errors import UserError
from tests.ckpt_helpers import (V1_DIM, V1_PARTS, assert_state_matches, checkpoint_rows, repartition,
                                save_checkpoint)


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
    """Saved over one partitioning, loaded into another of the same nodes (other gids, as after
    re-partitioning): every row and its optimizer state follow their orig id."""
    s = LocalEmbeddingStore(100, V1_DIM, optimizer=opt, lr=0.1, seed=0)
    s.push(torch.tensor([0, 1, 4, 57, 99]), torch.randn(5, V1_DIM))
    path = save_checkpoint(s, tmp_path / "run", V1_PARTS)
    other = repartition(tmp_path / "other", 2, seed=7)
    t = LocalEmbeddingStore(100, V1_DIM, optimizer=opt, lr=0.1, seed=9)
    t.load(path, other)
    assert_state_matches({k: v.numpy() for k, v in t.state_dict().items()}, other, checkpoint_rows(path))
    assert not torch.equal(t.weight, s.weight), "the other partitioning has other gids"


def test_load_rejects_other_optimizer_and_other_data(tmp_path):
    path = save_checkpoint(LocalEmbeddingStore(100, V1_DIM, optimizer="adam"), tmp_path / "run", V1_PARTS)
    with pytest.raises(UserError, match="adam"):
        LocalEmbeddingStore(100, V1_DIM, optimizer="adagrad").load(path, V1_PARTS)
    from tests.train_data import partitioned  # integer ids: the fixture's are strings
    ints = partitioned(tmp_path / "ints", num_users=30, num_items=20, per_user=5, communities=2)
    n = fmt.PartitionBook.from_manifest(fmt.load_manifest(ints)).num_nodes
    with pytest.raises(UserError, match="belongs to other data"):
        LocalEmbeddingStore(n, V1_DIM, optimizer="adam").load(path, ints)


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


def test_attaching_to_missing_or_cut_shared_files_fails_instead_of_mapping_zeros(tmp_path):
    """torch.from_file would create a missing file (or grow a short one) as zeros: a trainer
    attaching to a gone shard's rows would then train on zeros silently. Attaching checks first,
    so the caller falls back to calls and says so (RayEmbeddingStore.attach_local)."""
    import os

    owner = LocalEmbeddingStore(50, 8, optimizer="adam", lr=0.1, seed=4)
    spec = owner.move_to_files(str(tmp_path / "ps0"))
    weight_path = spec["weight"][0]
    os.truncate(weight_path, 100)
    with pytest.raises(ValueError, match=r"ps0.weight has 100 bytes, expected 1600"):
        LocalEmbeddingStore.attach(spec, "adam", 0.1)
    os.remove(weight_path)
    with pytest.raises(FileNotFoundError):
        LocalEmbeddingStore.attach(spec, "adam", 0.1)
    assert not os.path.exists(weight_path), "attaching created the missing file"
