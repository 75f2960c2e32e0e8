"""The out-of-core partitioner: forced paths, quality, the validation split, faults and --resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distgnn import format as fmt
from distgnn.cli import main
from distgnn.gen import generate
from partition.pipeline import CreateOptions, create
from partition.verify import verify
from tests.conftest import write_parquet

FAIL_ENV = "DISTGNN_FAIL_WRITE_AFTER_BYTES"


@pytest.fixture(scope="module")
def gen1m(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gen1m") / "logs"
    generate(out, interactions=1_000_000, communities=16, seed=3, progress=False)
    return out


def _shard_keys(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """(user->item keys, item->user keys) as sorted (user_orig * 2^32 + item_orig), read independently."""
    manifest = fmt.load_manifest(root)
    book = fmt.PartitionBook.from_manifest(manifest)
    orig = {}
    for ntype in fmt.NTYPES:
        t = pq.read_table(root / fmt.id_map_path(ntype))
        lut = np.empty(book.num_nodes, dtype=np.int64)
        lut[t.column("gid").to_numpy()] = t.column("orig_id").to_numpy()
        orig[ntype] = lut
    fwd, rev = [], []
    for p in range(manifest["num_parts"]):
        src, dst = fmt.read_part_edges(root, p)
        to_user = book.ntype_of(dst) == fmt.USER
        rev.append(orig["user"][dst[to_user]] * 2**32 + orig["item"][src[to_user]])
        fwd.append(orig["user"][src[~to_user]] * 2**32 + orig["item"][dst[~to_user]])
    return np.sort(np.concatenate(fwd)), np.sort(np.concatenate(rev))


def _input_keys(path: Path) -> np.ndarray:
    t = pq.read_table(path)
    return np.unique(t.column("user_id").to_numpy() * 2**32 + t.column("item_id").to_numpy())


@pytest.mark.parametrize("metis_path", ["multilevel", "in-memory"])
def test_each_path_stores_every_interaction_once_per_direction(gen1m, tmp_path, metis_path):
    out = tmp_path / "parts"
    # multilevel with a small memory limit: several ingest buckets and streamed chunks
    limit = 400 * 2**20 if metis_path == "multilevel" else None
    m = create(CreateOptions(train=str(gen1m / "train"), test=str(gen1m / "test"), out=str(out),
                             num_parts=4, metis_path=metis_path, memory_limit=limit, progress=False))
    assert m["assignment"]["path"] == metis_path
    fwd, rev = _shard_keys(out)
    want = _input_keys(gen1m / "train")
    assert np.array_equal(fwd, want) and np.array_equal(rev, want)
    assert verify(out, train=str(gen1m / "train")) == []
    q = m["quality"]
    assert max(q["user_imbalance"], q["item_imbalance"], q["edge_imbalance"]) < 1.1
    # planted communities (80% inside): a METIS-quality cut is far below random's ~0.75
    assert q["edge_cut_fraction"] < 0.3
    if metis_path == "multilevel":
        assert m["assignment"]["level_sizes"][0] == m["num_nodes"]["user"] + m["num_nodes"]["item"]
        assert m["assignment"]["metis_nodes"] < m["assignment"]["level_sizes"][0] / 4


def test_multilevel_cut_close_to_in_memory_metis(gen1m, tmp_path):
    cuts = {}
    for path in ("multilevel", "in-memory"):
        m = create(CreateOptions(train=str(gen1m / "train"), out=str(tmp_path / path), num_parts=8,
                                 metis_path=path, progress=False))
        cuts[path] = m["quality"]["edge_cut_fraction"]
    assert cuts["multilevel"] <= 1.10 * cuts["in-memory"], cuts


def test_string_and_large_int_ids(tmp_path):
    rng = np.random.default_rng(0)
    u = rng.integers(0, 300, 4000)
    i = rng.integers(0, 200, 4000)
    big = write_parquet(tmp_path / "big.parquet", user_id=u * (2**40) + 7, item_id=i + 2**33)
    strs = write_parquet(tmp_path / "str.parquet", user_id=np.array([f"u{x}" for x in u]),
                         item_id=np.array([f"item-{x}" for x in i]))
    for src in (big, strs):
        out = tmp_path / f"out-{src.stem}"
        m = create(CreateOptions(train=str(src), out=str(out), num_parts=2, progress=False,
                                 metis_path="multilevel"))
        assert m["num_interactions"] == len(set(zip(u.tolist(), i.tolist())))
        assert verify(out, train=str(src)) == []


def test_valid_fraction_is_a_per_user_split_of_training(tmp_path):
    rng = np.random.default_rng(1)
    u = np.repeat(np.arange(200), 10)
    i = rng.integers(0, 300, len(u))
    u = np.append(u, 999)            # a user with one interaction stays whole
    i = np.append(i, 5)
    ts = rng.permutation(len(u)).astype(np.int64)
    src = write_parquet(tmp_path / "t.parquet", user_id=u, item_id=i, ts=ts)
    out = tmp_path / "p"
    m = create(CreateOptions(train=str(src), out=str(out), num_parts=2, valid_fraction=0.2, seed=5,
                             progress=False))
    assert m["heldout"]["valid"]["source"] == "carved"
    assert verify(out, train=str(src)) == []     # train + the carved split == the input
    vu, vi = fmt.read_targets(out, "valid")
    fwd, _ = _shard_keys(out)
    umap = pq.read_table(out / fmt.id_map_path("user"))
    imap = pq.read_table(out / fmt.id_map_path("item"))
    uo = dict(zip(umap["gid"].to_pylist(), umap["orig_id"].to_pylist()))
    io = dict(zip(imap["gid"].to_pylist(), imap["orig_id"].to_pylist()))
    valid = np.sort(np.array([uo[a] * 2**32 + io[b] for a, b in zip(vu, vi)]))
    assert not np.isin(valid, fwd).any(), "a validation interaction is in the training graph"
    assert np.array_equal(np.union1d(valid, fwd), _input_keys(src)), "train + valid != input"
    per_user = np.bincount((valid >> 32).astype(np.int64), minlength=1000)
    distinct = np.bincount(np.unique(u * 2**32 + i) >> 32, minlength=1000)
    has2 = distinct >= 2
    assert np.all(per_user[has2] >= 1) and np.all(per_user[has2] < distinct[has2])
    assert per_user[999] == 0
    # deterministic for a seed (same interactions held out, by orig ids), different for another
    def carved(out_dir):
        um = pq.read_table(out_dir / fmt.id_map_path("user"))
        im = pq.read_table(out_dir / fmt.id_map_path("item"))
        uo = dict(zip(um["gid"].to_pylist(), um["orig_id"].to_pylist()))
        io_ = dict(zip(im["gid"].to_pylist(), im["orig_id"].to_pylist()))
        a, b = fmt.read_targets(out_dir, "valid")
        return {(uo[x], io_[y]) for x, y in zip(a.tolist(), b.tolist())}

    for seed, out_name in ((5, "p2"), (6, "p2b")):
        create(CreateOptions(train=str(src), out=str(tmp_path / out_name), num_parts=2, valid_fraction=0.2,
                             seed=seed, progress=False))
    assert carved(tmp_path / "p2") == carved(out)
    assert carved(tmp_path / "p2b") != carved(out)
    # latest: each user's held-out interactions are its most recent ones
    out3 = tmp_path / "p3"
    create(CreateOptions(train=str(src), out=str(out3), num_parts=1, valid_fraction=0.2, valid_by="latest",
                         ts_col="ts", progress=False))
    t = pq.read_table(out3 / fmt.targets_path("valid"))
    e = pq.read_table(out3 / fmt.edges_path(0))
    book = fmt.PartitionBook.from_manifest(fmt.load_manifest(out3))
    to_user = book.ntype_of(e["dst_gid"].to_numpy()) == fmt.USER
    last_train = {}
    for d, s_ts in zip(e["dst_gid"].to_numpy()[to_user], e["ts"].to_numpy()[to_user]):
        last_train[d] = max(last_train.get(d, -1), s_ts)
    for ug, vts in zip(t["user_gid"].to_numpy(), t["ts"].to_numpy()):
        assert vts > last_train[ug]


@pytest.mark.parametrize("argv_extra, expected", [
    (["--valid-fraction", "0.7"], "--valid-fraction must be in [0, 0.5]"),
    (["--valid-fraction", "0.1", "--valid", "VALID"], "pass only one"),
    (["--valid-fraction", "0.1", "--valid-by", "latest"], "--valid-by latest needs timestamps"),
    (["--memory-limit", "1M", "--metis-path", "in-memory"], "above --memory-limit"),
    (["--memory-limit", "1M"], "--memory-limit"),
    (["--memory-limit", "lots"], "is not a size"),
])
def test_bad_options_one_line_exit_2(gen1m, tmp_path, capsys, argv_extra, expected):
    argv_extra = [str(gen1m / "test") if a == "VALID" else a for a in argv_extra]
    out = tmp_path / "out"
    rc = main(["partition", "create", "--train", str(gen1m / "train"), "--num-parts", "2", "--out", str(out),
               "--quiet", *argv_extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and expected in err, err
    assert not out.exists()


def test_mixed_id_types_and_corrupt_part_file(tmp_path, capsys):
    d = tmp_path / "mixed"
    write_parquet(d / "part-0.parquet", user_id=np.array([1, 2]), item_id=np.array([1, 2]))
    write_parquet(d / "part-1.parquet", user_id=np.array(["a", "b"]), item_id=np.array([1, 2]))
    c = tmp_path / "corrupt"
    for k in range(3):
        write_parquet(c / f"part-{k}.parquet", user_id=np.arange(100) + k, item_id=np.arange(100))
    (c / "part-1.parquet").write_bytes(b"PAR1" + bytes(300) + b"PAR1")
    for src in (d, c):
        out = tmp_path / f"out-{src.name}"
        rc = main(["partition", "create", "--train", str(src), "--num-parts", "2", "--out", str(out), "--quiet"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert not out.exists()
        assert not list(tmp_path.glob(f".out-{src.name}*"))


def test_full_disk_then_resume_reuses_completed_stages(gen1m, tmp_path, monkeypatch, capsys):
    out = tmp_path / "parts"
    args = ["partition", "create", "--train", str(gen1m / "train"), "--num-parts", "4", "--out", str(out)]
    # 1. The disk "fills" during ingest: nothing is committed, nothing is left.
    monkeypatch.setenv(FAIL_ENV, str(1 << 20))
    assert main(args + ["--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no space left" in err and len(err.splitlines()) == 1, err
    assert not out.exists() and not list(tmp_path.glob(".parts*"))
    # 2. It fills during dispatch: ingest and assign stay checkpointed, named in the error.
    ingest_bytes = 30 * 2**20   # well past ingest's scratch writes at 1M interactions
    monkeypatch.setenv(FAIL_ENV, str(ingest_bytes))
    assert main(args + ["--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no space left" in err and "--resume" in err, err
    scratch = tmp_path / ".parts.partition-scratch"
    assert (scratch / "stage-ingest.json").is_file() and (scratch / "stage-assign.json").is_file()
    assert not out.exists() and not list(tmp_path.glob(".parts.tmp-*"))
    # 3. --resume reuses both stages and finishes; the scratch is gone afterwards.
    monkeypatch.delenv(FAIL_ENV)
    assert main(args + ["--resume"]) == 0
    err = capsys.readouterr().err
    assert "ingest: reusing" in err and "assign: reusing" in err
    assert not scratch.exists()
    assert verify(out, train=str(gen1m / "train")) == []


def test_sigterm_mid_run_exits_130_and_keeps_only_resumable_stages(gen1m, tmp_path):
    out = tmp_path / "parts"
    env = {**os.environ, "DISTGNN_TEST_STAGE_DELAY": "dispatch:30"}
    proc = subprocess.Popen([sys.executable, "-m", "distgnn.cli", "partition", "create", "--train",
                             str(gen1m / "train"), "--num-parts", "2", "--out", str(out), "--quiet"],
                            env=env, stderr=subprocess.PIPE, text=True)
    scratch = tmp_path / ".parts.partition-scratch"
    deadline = time.time() + 120
    while not (scratch / "stage-assign.json").exists():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() else "timeout"
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    err = proc.stderr.read()
    assert rc == 130, err
    assert "--resume" in err, err
    assert not out.exists() and not list(tmp_path.glob(".parts.tmp-*"))
    kept = {p.name for p in scratch.iterdir()}
    assert "stage-ingest.json" in kept and "stage-assign.json" in kept and "part.npy" in kept
    assert not [k for k in kept if k.startswith("bucket")]


def test_all_null_column_is_one_line(tmp_path, capsys):
    p = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"user_id": pa.array([None, None], pa.int64()), "item_id": [1, 2]}), p)
    q = tmp_path / "nulltype.parquet"
    pq.write_table(pa.table({"user_id": pa.array([None, None]), "item_id": [1, 2]}), q)
    for src in (p, q):
        out = tmp_path / f"out-{src.stem}"
        rc = main(["partition", "create", "--train", str(src), "--num-parts", "1", "--out", str(out), "--quiet"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and "user_id" in err, err
        assert not out.exists()


def test_overwrite_refuses_a_directory_we_did_not_write(gen1m, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("the user's file")
    rc = main(["partition", "create", "--train", str(gen1m / "train"), "--num-parts", "2", "--out", str(out),
               "--overwrite", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "did not write" in err and len(err.splitlines()) == 1, err
    assert (out / "notes.txt").read_text() == "the user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"], "scratch or temp left behind"


def test_graph_build_in_many_buckets_and_transpose_passes(tmp_path):
    """A tiny memory budget: many ingest buckets, many transpose passes; same CSR as numpy's."""
    from partition.graph import IngestOptions, build_graph
    from partition.ingest import InputSpec
    from partition.scratch import Scratch

    rng = np.random.default_rng(4)
    u = rng.integers(0, 3000, 200_000)
    i = rng.integers(0, 2000, 200_000)
    ts = rng.integers(0, 10**9, 200_000)
    src = write_parquet(tmp_path / "t.parquet", user_id=u, item_id=i, ts=ts)
    scratch = Scratch(tmp_path / "scratch", "fp", resume=False)
    graph, _ = build_graph(IngestOptions(InputSpec(str(src), ts_col="ts"), memory_budget=1 << 16,
                                         progress=False), scratch)
    key = np.unique(u * 2000 + i)
    uu, ii = key // 2000, key % 2000
    assert graph.num_edges == len(key)
    assert np.array_equal(scratch.load("user_indices.npy"), ii)
    order = np.lexsort((uu, ii))
    assert np.array_equal(scratch.load("item_indices.npy"), uu[order])
    assert np.array_equal(np.diff(scratch.load("item_indptr.npy")), np.bincount(ii, minlength=2000))
    # earliest ts per pair, carried to both sides
    first = {}
    for a, b, t in zip(u, i, ts):
        first[(a, b)] = min(first.get((a, b), t), t)
    want_ts = np.array([first[(a, b)] for a, b in zip(uu, ii)])
    assert np.array_equal(scratch.load("user_ts.npy"), want_ts)
    assert np.array_equal(scratch.load("item_ts.npy"), want_ts[order])


def test_scratch_in_use_by_a_live_run_is_refused(gen1m, tmp_path, capsys):
    out = tmp_path / "parts"
    scratch = tmp_path / ".parts.partition-scratch"
    scratch.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (scratch / "scratch.json").write_text(json.dumps({"made_by": "distgnn partition create",
                                                          "pid": sleeper.pid}))
        rc = main(["partition", "create", "--train", str(gen1m / "train"), "--num-parts", "2", "--out",
                   str(out), "--quiet"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and f"pid {sleeper.pid}" in err, err
        assert (scratch / "scratch.json").is_file()
    finally:
        sleeper.kill()
        sleeper.wait()
    # once its owner is gone, the leftover scratch is ours to replace
    assert main(["partition", "create", "--train", str(gen1m / "train"), "--num-parts", "2", "--out",
                 str(out), "--quiet"]) == 0
    assert not scratch.exists()
