"""The Ray parameter server (PSShard actors + RayEmbeddingStore client) and cluster setup errors.

One local Ray instance (2 CPUs) serves the whole module; failing tests get the Ray workers'
stdout/stderr attached to their report (distgnn.ray_runtime.testing)."""
from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import ray
import torch

from distgnn import checkpoint as ckpt
from distgnn import format as fmt
from distgnn.embedding_store import LocalEmbeddingStore
from distgnn.errors import UserError
from distgnn.ray_runtime import cluster
from distgnn.ray_runtime.ps import RayEmbeddingStore, create_ps_shards
from distgnn.ray_runtime.testing import make_partitions
from tests.ckpt_helpers import (V1_CKPT, V1_DIM, V1_PARTS, assert_state_matches, checkpoint_rows,
                                repartition, save_checkpoint)

pytestmark = pytest.mark.timeout(180)

DIM = 8


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return make_partitions(tmp_path_factory.mktemp("ps"), layouts=((2, "metis"), (3, "random")))


def _book(root) -> fmt.PartitionBook:
    return fmt.PartitionBook.from_manifest(fmt.load_manifest(root))


def _kill(actors):
    for a in actors:
        ray.kill(a)


def _state(store) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in store.state_dict().items()}


@pytest.mark.parametrize("opt", ["adam", "adagrad"])
def test_client_matches_in_process_store(ray_cluster, parts, opt):
    book = _book(parts[(2, "metis")])
    shards = create_ps_shards(book, DIM, optimizer=opt, lr=0.05, seed=3, timeout_s=60)
    try:
        store = RayEmbeddingStore(shards, book, DIM, opt, local_parts=[0], timeout_s=60,
                                  max_pending_pushes=2)  # async pushes: a client reads its own writes
        ref = LocalEmbeddingStore(book.num_nodes, DIM, optimizer=opt, lr=0.05, seed=0)
        ref.load_state_dict(store.state_dict())
        gen = torch.Generator().manual_seed(0)
        unique_pulled = 0
        for step in range(6):
            gids = torch.randint(0, book.num_nodes, (300,), generator=gen)  # with duplicates
            grads = torch.randn(300, DIM, generator=gen)
            assert torch.equal(store.pull(gids), ref.pull(gids)), step
            unique_pulled += len(torch.unique(gids))
            store.push(gids, grads)
            ref.push(gids, grads)
        u = torch.unique(torch.randint(0, book.num_nodes, (50,), generator=gen))
        g = torch.randn(len(u), DIM, generator=gen)
        store.push(u.flip(0), g.flip(0), unique=True)
        ref.push(u, g, unique=True)
        for name, val in ref.state_dict().items():
            assert torch.allclose(store.state_dict()[name], val, atol=1e-6), name
        c = store.counters()
        # each unique row crosses the wire once per pull, counted local (shard 0) or remote
        assert c["pull_rows_local"] + c["pull_rows_remote"] == unique_pulled
        assert c["pull_rows_local"] > 0 and c["pull_rows_remote"] > 0
        assert c["pull_bytes_remote"] == c["pull_rows_remote"] * (8 + DIM * 4)
        assert c["pull_calls"] == 6 and c["push_calls"] == 7
    finally:
        _kill(shards)


@ray.remote(num_cpus=0)
class _Barrier:
    def __init__(self, n: int):
        self.n, self.count, self.event = n, 0, asyncio.Event()

    async def wait(self):
        self.count += 1
        if self.count >= self.n:
            self.event.set()
        await asyncio.wait_for(self.event.wait(), 60)


@ray.remote(num_cpus=1)
def _push_many(store, batches, barrier, local_part=None):
    if local_part is not None:  # this client updates its own partition's rows in shared memory
        store.local_parts = (local_part,)
        assert store.attach_local(), "the shard's shared rows were not mapped"
    ray.get(barrier.wait.remote(), timeout=90)
    t0 = time.time()
    for gids, grads in batches:
        store.push(torch.tensor(gids), torch.tensor(grads))
    store.flush()
    return t0, time.time(), store.counters()


def _batches(seed: int, num_nodes: int, n: int = 40, rows: int = 200):
    # both clients hit the same hot rows (spread over both shards): their updates collide
    hot = np.random.default_rng(0).choice(num_nodes, 300, replace=False)
    rng = np.random.default_rng(seed)
    return [(hot[rng.integers(0, len(hot), rows)].astype(np.int64),
             rng.standard_normal((rows, DIM)).astype(np.float32)) for _ in range(n)]


@pytest.mark.parametrize("shared", [False, True], ids=["calls", "shared-memory"])
def test_concurrent_pushes_from_two_clients_add_up(ray_cluster, parts, tmp_path, shared):
    """Two Ray tasks push at once; the result is the sum of their single-client updates.

    shared-memory: each client owns one partition and updates its rows in the shard's shared
    memory while the other client's pushes to them go through the shard: the row lock must make
    the two paths atomic with each other.

    Adagrad with lr = eps = 1e8 is SGD with lr 1 (to 1e-7 relative): the weight change is then
    linear in the gradients, and Adagrad's accumulator sum_sq is a sum in any order."""
    book = _book(parts[(2, "metis")])
    kw = dict(optimizer="adagrad", lr=1e8, eps=1e8)
    shards = create_ps_shards(book, DIM, seed=1, timeout_s=60, shm_dir=str(tmp_path) if shared else None,
                              **kw)
    try:
        store = RayEmbeddingStore(shards, book, DIM, "adagrad", timeout_s=60)
        w0 = _state(store)
        a, b = _batches(1, book.num_nodes), _batches(2, book.num_nodes)
        singles = []
        for batches in (a, b):
            local = LocalEmbeddingStore(book.num_nodes, DIM, **kw)
            local.load_state_dict(w0)
            for gids, grads in batches:
                local.push(torch.from_numpy(gids), torch.from_numpy(grads))
            singles.append({k: v - w0[k] for k, v in local.state_dict().items()})

        barrier = _Barrier.remote(2)
        (s1, e1, c1), (s2, e2, c2) = cluster.get_with_deadline(
            [_push_many.remote(store, a, barrier, 0 if shared else None),
             _push_many.remote(store, b, barrier, 1 if shared else None)], 120, "two pushing tasks")
        got = store.state_dict()
        for name in ("weight", "sum_sq"):
            want = w0[name] + singles[0][name] + singles[1][name]
            assert torch.allclose(got[name], want, rtol=1e-5, atol=1e-4), (
                f"{name}: max diff {(got[name] - want).abs().max():.3g}; "
                f"task intervals {s1:.3f}-{e1:.3f} and {s2:.3f}-{e2:.3f}")
        # and the updates did collide: both clients changed some of the same rows
        touched_a = set(np.concatenate([g for g, _ in a]).tolist())
        touched_b = set(np.concatenate([g for g, _ in b]).tolist())
        assert len(touched_a & touched_b) > 50
        # every shard request a client sent was served; own-partition rows went through memory
        served = sum(c["push_calls"] for c in store.shard_counters())
        assert c1["push_calls"] == c2["push_calls"] == 40
        assert served == c1["requests_remote"] + c2["requests_remote"] >= 80
        assert (c1["push_rows_local"] > 0) == shared
    finally:
        _kill(shards)


@pytest.mark.parametrize("opt", ["adam", "adagrad"])
def test_save_then_load_into_other_number_of_shards_is_lossless(ray_cluster, parts, tmp_path, opt):
    root2, root3 = parts[(2, "metis")], parts[(3, "random")]
    book2, book3 = _book(root2), _book(root3)
    s2 = create_ps_shards(book2, DIM, optimizer=opt, lr=0.1, seed=5, timeout_s=60)
    s3 = create_ps_shards(book3, DIM, optimizer=opt, lr=0.1, seed=6, timeout_s=60)
    try:
        a = RayEmbeddingStore(s2, book2, DIM, opt, timeout_s=60)
        gen = torch.Generator().manual_seed(2)
        for _ in range(3):  # some rows touched (optimizer state non-zero), most not
            gids = torch.randint(0, book2.num_nodes, (400,), generator=gen)
            a.push(gids, torch.randn(400, DIM, generator=gen))
        ck = save_checkpoint(a, tmp_path / "run2", root2)  # every shard writes its own two files
        assert sorted(p.name for p in (ck / "embeddings").iterdir()) == [
            "item-00000.parquet", "item-00001.parquet", "user-00000.parquet", "user-00001.parquet"]
        sa = {k: v.numpy() for k, v in a.state_dict().items()}
        assert_state_matches(sa, root2, checkpoint_rows(ck))

        b = RayEmbeddingStore(s3, book3, DIM, opt, timeout_s=60)  # 3 shards, other gids: re-keyed
        b.load(ck, root3)
        sb = {k: v.numpy() for k, v in b.state_dict().items()}
        assert_state_matches(sb, root3, checkpoint_rows(ck))
        assert (sa["sum_sq" if opt == "adagrad" else "step"] != 0).any()

        # the files are LocalEmbeddingStore's: the in-process store reads them identically
        local = LocalEmbeddingStore(book3.num_nodes, DIM, optimizer=opt, lr=0.1)
        local.load(ck, root3)
        for name, val in local.state_dict().items():
            np.testing.assert_array_equal(val.numpy(), sb[name], err_msg=name)
        # and a round trip through the 3-shard store writes the same rows again
        ck3 = save_checkpoint(b, tmp_path / "run3", root3)
        assert_state_matches(sa, root2, checkpoint_rows(ck3))
    finally:
        _kill(s2 + s3)


def test_load_rejects_other_optimizer(ray_cluster, parts, tmp_path):
    root = parts[(2, "metis")]
    book = _book(root)
    ck = save_checkpoint(LocalEmbeddingStore(book.num_nodes, DIM, optimizer="adam"), tmp_path / "run", root)
    shards = create_ps_shards(book, DIM, optimizer="adagrad", timeout_s=60)
    try:
        with pytest.raises(UserError, match="holds adam embeddings"):
            RayEmbeddingStore(shards, book, DIM, "adagrad", timeout_s=60).load(ck, root)
    finally:
        _kill(shards)


def test_local_and_ray_stores_write_the_same_files(ray_cluster, tmp_path):
    """Both backends write checkpoint v2 byte for byte alike, so a checkpoint moves between them."""
    book = _book(V1_PARTS)
    local = LocalEmbeddingStore(book.num_nodes, V1_DIM, optimizer="adam", lr=0.1, seed=1)
    local.push(torch.arange(0, book.num_nodes, 3), torch.randn(len(range(0, book.num_nodes, 3)), V1_DIM))
    shards = create_ps_shards(book, V1_DIM, optimizer="adam", lr=0.1, seed=2, timeout_s=60)
    try:
        ray_store = RayEmbeddingStore(shards, book, V1_DIM, "adam", timeout_s=60)
        ray_store.load_state_dict(local.state_dict())
        a = save_checkpoint(local, tmp_path / "local", V1_PARTS)
        b = save_checkpoint(ray_store, tmp_path / "ray", V1_PARTS)
        fa = json.loads((a / "manifest.json").read_text())["files"]
        fb = json.loads((b / "manifest.json").read_text())["files"]
        emb = sorted(rel for rel in fa if rel.startswith("embeddings/"))
        assert len(emb) == 4 and emb == sorted(rel for rel in fb if rel.startswith("embeddings/"))
        assert all(fa[rel] == fb[rel] for rel in emb)
        # and each loads into the other backend
        ray_store.reset()
        ray_store.load(a, V1_PARTS)
        back = LocalEmbeddingStore(book.num_nodes, V1_DIM, optimizer="adam", seed=3)
        back.load(b, V1_PARTS)
        for name, val in local.state_dict().items():
            assert torch.equal(ray_store.state_dict()[name], val), name
            assert torch.equal(back.state_dict()[name], val), name
    finally:
        _kill(shards)


@pytest.mark.parametrize("num_parts", [2, 3])
def test_v1_checkpoint_loads_into_ps_shards(ray_cluster, tmp_path, num_parts):
    """The committed v1 checkpoint (written before format v2) loads into PS shards: into its own
    2 partitions, and into a re-partitioning of the same input with 3 (other gids and ranges)."""
    root = V1_PARTS if num_parts == 2 else repartition(tmp_path / "parts", num_parts)
    book = _book(root)
    assert book.num_parts == num_parts
    shards = create_ps_shards(book, V1_DIM, optimizer="adam", seed=4, timeout_s=60)
    try:
        store = RayEmbeddingStore(shards, book, V1_DIM, "adam", timeout_s=60)
        store.load(V1_CKPT, root)
        assert_state_matches({k: v.numpy() for k, v in store.state_dict().items()}, root,
                             checkpoint_rows(V1_CKPT))
    finally:
        _kill(shards)


def _wait_restarted(shard, generation: int = 1, timeout_s: float = 60) -> dict:
    """The shard's ``info`` (unfenced) once Ray has restarted it into ``generation``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            info = ray.get(shard.info.remote(), timeout=10)
            if info["generation"] >= generation:
                return info
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass
        assert time.monotonic() < deadline, "the crashed shard was not restarted"
        time.sleep(0.5)


def _part_rows(state: dict, book, part: int) -> dict[str, np.ndarray]:
    a, b = int(book.gid_start[part]), int(book.gid_end[part])
    return {k: np.asarray(v[a:b]) for k, v in state.items()}


def _assert_rows_equal(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]), err_msg=k)


def test_crash_mid_push_is_fenced(ray_cluster, parts, tmp_path):
    """A shard dies in the middle of a push. The push in flight fails with one clear error (never a
    hang, never retried: it would apply twice). Ray restarts the shard as generation 1, which
    reloads its rows and optimizer state from the last committed checkpoint (not its initial
    values), names its shared files by its generation and removes generation 0's. Calls naming
    generation 0 are refused (StaleGenerationError), including a checkpoint save, so nothing
    written by or for the old incarnation can reach a checkpoint; a co-located client still
    writing generation 0's mapped rows is caught by the health check, which drops those views.
    Clients that sync carry on, and the injected fault does not fire again."""
    root = parts[(2, "metis")]
    book = _book(root)
    run, shm = tmp_path / "run", tmp_path / "shm"
    shards = create_ps_shards(book, DIM, optimizer="adam", lr=0.05, timeout_s=60, crash=(1, 3),
                              shm_dir=str(shm), run_dir=run, partitions_root=root)
    try:
        caller = RayEmbeddingStore(shards, book, DIM, "adam", timeout_s=20)  # every row by call
        mapped = RayEmbeddingStore(shards, book, DIM, "adam", local_parts=[1], timeout_s=20)
        assert mapped.attach_local() and caller.generations == [0, 0]
        assert sorted(p.name for p in shm.glob("ps1-g0-*")), "generation 0's shared files"
        lo, hi = int(book.gid_start[1]), int(book.gid_end[1])
        gen = torch.Generator().manual_seed(0)
        for _ in range(2):  # pushes 1 and 2 of shard 1: then a checkpoint
            caller.push(torch.arange(book.num_nodes), torch.randn(book.num_nodes, DIM, generator=gen))
        committed = save_checkpoint(caller, run, root)
        at_commit = _part_rows(_state(caller), book, 1)
        mapped.push(torch.arange(lo, hi), torch.ones(hi - lo, DIM))  # in shared memory, no call
        t = time.monotonic()
        with pytest.raises(cluster.RayCallError, match=r"PSShard 1\b.*died"):
            caller.push(torch.arange(book.num_nodes), torch.ones(book.num_nodes, DIM))  # push 3: crash
        assert time.monotonic() - t < 20
        info = _wait_restarted(shards[1])
        assert info["generation"] == 1 and info["loaded_from"] == committed.name
        # the restarted shard holds the checkpoint's rows and optimizer state, not its initial ones
        _assert_rows_equal(ray.get(shards[1].state_dict.remote()), at_commit)
        assert not list(shm.glob("ps1-g0-*")) and list(shm.glob("ps1-g1-*")), sorted(shm.iterdir())
        # calls naming generation 0 are refused, whatever they are
        with pytest.raises(cluster.StaleGenerationError,
                           match=r"PSShard 1 is generation 1 \(rows reloaded from step-0+1\) but the "
                                 r"pull expected generation 0"):
            caller.pull(torch.arange(book.num_nodes))
        with pytest.raises(cluster.StaleGenerationError, match=r"checkpoint save.*PSShard 1 is generation 1"):
            save_checkpoint(caller, run, root, step=2)
        assert ckpt.latest(run) == committed, "a checkpoint was committed across the restart"
        # the co-located client's pushes went to generation 0's orphaned files: the health check
        # finds the restart and drops the mapped views
        assert 1 in mapped._views
        with pytest.raises(cluster.StaleGenerationError, match=r"health check before checkpoint: "
                                                               r"PSShard 1 is generation 1"):
            mapped.check_generations("before checkpoint")
        assert mapped._views == {}
        # a client that syncs (a restarted worker) talks to generation 1; no second crash
        caller.sync_generations()
        assert caller.generations == [0, 1]
        caller.push(torch.arange(lo, hi), torch.ones(hi - lo, DIM))
        caller.push(torch.arange(lo, hi), torch.ones(hi - lo, DIM))
        assert ray.get(shards[1].info.remote())["generation"] == 1
    finally:
        ray.get([s.close.remote() for s in shards])
        _kill(shards)
    # the shards remove the job's directory on their node too (the driver only does on its own;
    # a two-host run found it left behind, launch/multihost.py)
    assert not shm.exists(), f"shared files left behind: {sorted(shm.iterdir())}"


def test_crash_while_idle_is_found_before_a_checkpoint(ray_cluster, parts, tmp_path):
    """A shard that dies while no call is in flight is not noticed by any call; Ray restarts it.
    Before the first checkpoint it comes back with its initial rows (nothing to reload); after one,
    with that checkpoint's rows. Either way the health check run before writing a checkpoint finds
    the new generation within its deadline, and the fenced save cannot commit its rows."""
    root = parts[(2, "metis")]
    book = _book(root)
    run = tmp_path / "run"
    shards = create_ps_shards(book, DIM, optimizer="adagrad", lr=0.1, seed=2, timeout_s=60,
                              run_dir=run, partitions_root=root)
    try:
        store = RayEmbeddingStore(shards, book, DIM, "adagrad", timeout_s=20)
        initial = _part_rows(_state(store), book, 0)
        ray.kill(shards[0], no_restart=False)  # idle, before any checkpoint
        info = _wait_restarted(shards[0])
        assert info["loaded_from"] is None
        _assert_rows_equal(ray.get(shards[0].state_dict.remote()), initial)
        with pytest.raises(cluster.StaleGenerationError, match=r"health check before checkpoint: "
                                                               r"PSShard 0 is generation 1 \(rows from its "
                                                               r"initial values\), expected 0"):
            store.check_generations("before checkpoint")
        store.sync_generations()

        gen = torch.Generator().manual_seed(1)
        store.push(torch.arange(book.num_nodes), torch.randn(book.num_nodes, DIM, generator=gen))
        committed = save_checkpoint(store, run, root)
        at_commit = _part_rows(_state(store), book, 1)
        store.push(torch.arange(book.num_nodes), torch.randn(book.num_nodes, DIM, generator=gen))
        assert store.check_generations("before checkpoint")[1]["generation"] == 0  # healthy
        ray.kill(shards[1], no_restart=False)  # idle again, after a checkpoint
        info = _wait_restarted(shards[1])
        assert info["loaded_from"] == committed.name
        _assert_rows_equal(ray.get(shards[1].state_dict.remote()), at_commit)
        t = time.monotonic()
        with pytest.raises(cluster.StaleGenerationError, match=r"PSShard 1 is generation 1 \(rows from "
                                                               r"step-0+1\), expected 0"):
            store.check_generations("before checkpoint")
        assert time.monotonic() - t < 20
        with pytest.raises(cluster.StaleGenerationError):  # and the save itself is fenced too
            save_checkpoint(store, run, root, step=2)
        assert ckpt.latest(run) == committed
    finally:
        _kill(shards)


def test_failed_attach_falls_back_to_calls_and_says_why(ray_cluster, parts, tmp_path):
    """A shard's shared files that cannot be mapped (here: one removed behind its back) are never
    mapped as fresh zeros: the client uses calls for that partition and records the reason, which
    the trainer's warning record carries to the driver."""
    book = _book(parts[(2, "metis")])
    shm = tmp_path / "shm"
    shards = create_ps_shards(book, DIM, optimizer="adagrad", timeout_s=60, shm_dir=str(shm))
    try:
        (weight,) = shm.glob("ps0-g0-*.weight")
        weight.unlink()
        store = RayEmbeddingStore(shards, book, DIM, "adagrad", local_parts=[0, 1], timeout_s=20)
        assert not store.attach_local()
        assert sorted(store._views) == [1]
        assert store.shm_fallbacks[0].startswith("mapping PSShard 0's rows failed (FileNotFoundError"), \
            store.shm_fallbacks
        assert not weight.exists(), "attaching re-created the removed file"
        lo, hi = int(book.gid_start[0]), int(book.gid_end[0])
        rows = store.pull(torch.arange(lo, hi))  # by call: the shard's own (intact) rows
        assert torch.equal(rows, torch.from_numpy(ray.get(shards[0].state_dict.remote())["weight"]))
    finally:
        ray.get([s.close.remote() for s in shards])
        _kill(shards)


def test_rows_of_one_mapped_partition_skip_the_routing_and_match_the_local_store(ray_cluster, parts,
                                                                                  tmp_path):
    """Ids that all lie in one partition whose rows are mapped (every pull and push of a
    one-partition job's worker) are read and stepped in place without the sort by owner (D34):
    the same rows and the same updates as the in-process store, counted as mapped local rows; ids
    that span partitions still take the routed path."""
    book = _book(parts[(2, "metis")])
    shm = tmp_path / "shm"
    shards = create_ps_shards(book, DIM, optimizer="adam", lr=0.05, seed=3, timeout_s=60, shm_dir=str(shm))
    try:
        store = RayEmbeddingStore(shards, book, DIM, "adam", local_parts=[0], timeout_s=60)
        assert store.attach_local()
        ref = LocalEmbeddingStore(book.num_nodes, DIM, optimizer="adam", lr=0.05, seed=0)
        ref.load_state_dict(store.state_dict())
        lo, hi = int(book.gid_start[0]), int(book.gid_end[0])
        gen = torch.Generator().manual_seed(1)
        for step in range(4):
            own = torch.randperm(hi - lo, generator=gen)[:100] + lo  # unique, unsorted, partition 0
            assert store._single_view(own) == 0
            grads = torch.randn(len(own), DIM, generator=gen)
            assert torch.equal(store.pull(own), ref.pull(own)), step
            store.push(own, grads, unique=True)
            ref.push(own, grads, unique=True)
        both = torch.tensor([lo, hi])  # spans partitions 0 and 1: routed
        assert store._single_view(both) is None
        assert torch.equal(store.pull(both), ref.pull(both))
        for name, val in ref.state_dict().items():
            assert torch.equal(store.state_dict()[name], val), name
        c = store.counters()
        assert c["pull_rows_mapped"] == c["pull_rows_local"] == 4 * 100 + 1
        assert c["push_rows_mapped"] == c["push_rows_local"] == 4 * 100
        assert c["pull_calls"] == 5 and c["push_calls"] == 4 and c["pull_rows_remote"] == 1
    finally:
        ray.get([s.close.remote() for s in shards])
        _kill(shards)


def test_learning_rate_reaches_every_shard(ray_cluster, parts):
    """lr_decay: the trainer sets emb.lr every epoch; the shards must apply it."""
    book = _book(parts[(2, "metis")])
    shards = create_ps_shards(book, DIM, optimizer="adagrad", lr=0.1, timeout_s=60)
    try:
        store = RayEmbeddingStore(shards, book, DIM, "adagrad", timeout_s=20, lr=0.1)
        store.lr = 0.025
        assert [i["lr"] for i in ray.get([s.info.remote() for s in shards])] == [0.025, 0.025]
        local = LocalEmbeddingStore(book.num_nodes, DIM, optimizer="adagrad", lr=0.025)
        local.load_state_dict(store.state_dict())
        gids, grads = torch.arange(book.num_nodes), torch.randn(book.num_nodes, DIM)
        store.push(gids, grads)
        local.push(gids, grads)
        assert torch.allclose(store.pull(gids), local.pull(gids), atol=1e-6)
    finally:
        _kill(shards)


def test_deadline_names_what_was_waited_for(ray_cluster):
    @ray.remote(num_cpus=0)
    def slow():
        time.sleep(60)

    ref = slow.remote()
    t = time.monotonic()
    with pytest.raises(cluster.RayCallError, match=r"slow task \(sleeper\) did not answer within the 0.5s"):
        cluster.get_with_deadline([ref], 0.5, "slow task", ["sleeper"])
    assert time.monotonic() - t < 5
    ray.cancel(ref, force=True)


def test_too_many_workers_is_one_clear_error(ray_cluster):
    with pytest.raises(UserError, match=r"asked for 4 workers x 1 CPU, the cluster has 2 CPUs; "
                                        r"lower --num-workers"):
        cluster.check_resources(4, cpus_per_worker=1)
    with pytest.raises(UserError, match=r"the cluster has 0 GPUs"):
        cluster.check_resources(1, cpus_per_worker=1, gpus_per_worker=1)
    assert cluster.check_resources(2, cpus_per_worker=1)["workers_fit"] == 2


def _connect_in_fresh_process(address: str, timeout_s: float) -> tuple[float, int, str]:
    code = textwrap.dedent(f"""
        from distgnn.ray_runtime.cluster import connect
        from distgnn.errors import UserError
        try:
            connect({address!r}, timeout_s={timeout_s})
        except UserError as exc:
            print("USERERROR", exc)
            raise SystemExit(2)
    """)
    t = time.monotonic()
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    return time.monotonic() - t, p.returncode, p.stdout + p.stderr


@pytest.mark.parametrize("kind", ["refused", "ray-client-refused", "silent"])
def test_bad_address_fails_fast_with_one_clear_line(kind):
    srv = None
    if kind == "silent":  # accepts TCP, never speaks Ray
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        address = f"127.0.0.1:{srv.getsockname()[1]}"
    else:
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        address = f"127.0.0.1:{port}" if kind == "refused" else f"ray://127.0.0.1:{port}"
    try:
        elapsed, rc, out = _connect_in_fresh_process(address, timeout_s=5)
    finally:
        if srv is not None:
            srv.close()
    assert rc == 2, out
    line = [x for x in out.splitlines() if x.startswith("USERERROR")]
    assert line and f"no Ray cluster at {address}" in line[0], out
    assert "ray start --head" in line[0] and "omit --address" in line[0]
    assert elapsed < 30, (elapsed, out)
