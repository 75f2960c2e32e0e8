"""Tests for ``distgnn gen`` (distgnn/gen.py): small graphs, so the whole file runs in seconds."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distgnn import gen
from distgnn.errors import UserError

N = 20_000


def _gen(out: Path, interactions: int = N, **kw) -> dict:
    kw.setdefault("progress", False)
    return gen.generate(out, interactions, **kw)


def _read(out: Path, split: str) -> pa.Table:
    files = sorted((out / split).glob("part-*.parquet"))
    assert files, f"no {split} parts in {out}"
    return pa.concat_tables([pq.read_table(f) for f in files])


def _cols(t: pa.Table, *names: str) -> list[np.ndarray]:
    return [t.column(n).to_numpy() for n in names]


def _pairs(t: pa.Table) -> set[tuple[int, int]]:
    u, i = _cols(t, "user_id", "item_id")
    return set(zip(u.tolist(), i.tolist()))


@pytest.fixture(scope="module")
def default_graph(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("g") / "default"
    return out, _gen(out, seed=3)


@pytest.fixture(scope="module")
def ts_graph(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("g") / "ts"
    return out, _gen(out, seed=4, timestamps=True, users=1500, items=2000, communities=5)


# ------------------------------------------------------------------------------------------
# Determinism
# ------------------------------------------------------------------------------------------

def _file_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_output(tmp_path):
    a = _gen(tmp_path / "a", seed=7, timestamps=True)
    b = _gen(tmp_path / "b", seed=7, timestamps=True)
    fa, fb = _file_bytes(tmp_path / "a"), _file_bytes(tmp_path / "b")
    assert set(fa) == {"gen.json", "train/part-00000.parquet", "test/part-00000.parquet"}
    assert fa == fb
    a.pop("seconds"), b.pop("seconds"), a.pop("out"), b.pop("out")
    assert a == b


def test_other_seed_gives_other_data(tmp_path):
    _gen(tmp_path / "a", seed=7)
    _gen(tmp_path / "b", seed=8)
    ta, tb = _read(tmp_path / "a", "train"), _read(tmp_path / "b", "train")
    assert not ta.equals(tb)
    overlap = len(_pairs(ta) & _pairs(tb)) / ta.num_rows
    assert overlap < 0.5, overlap


def test_chunk_size_changes_files_not_data(tmp_path):
    _gen(tmp_path / "big", users=3000, items=4000, seed=1, timestamps=True)
    res = _gen(tmp_path / "small", users=3000, items=4000, seed=1, timestamps=True,
               chunk_users=1000)  # rounded up to 1024 users per file -> 3 files
    assert res["train_files"] == 3
    assert len(list((tmp_path / "small" / "train").glob("*.parquet"))) == 3
    assert len(list((tmp_path / "small" / "test").glob("*.parquet"))) == 3
    for split in ("train", "test"):
        assert _read(tmp_path / "big", split).equals(_read(tmp_path / "small", split))
    # each file holds whole users, in ascending order
    u0 = pq.read_table(tmp_path / "small" / "train" / "part-00000.parquet")["user_id"].to_numpy()
    u1 = pq.read_table(tmp_path / "small" / "train" / "part-00001.parquet")["user_id"].to_numpy()
    assert u0.max() < 1024 <= u1.min() and u1.max() < 2048


# ------------------------------------------------------------------------------------------
# Schema, counts
# ------------------------------------------------------------------------------------------

def test_schema_and_dtypes(default_graph, ts_graph):
    out, _ = default_graph
    for split in ("train", "test"):
        schema = pq.read_schema(out / split / "part-00000.parquet")
        assert schema.names == ["user_id", "item_id"]
        assert all(f.type == pa.int64() for f in schema)
    out, _ = ts_graph
    for split in ("train", "test"):
        schema = pq.read_schema(out / split / "part-00000.parquet")
        assert schema.names == ["user_id", "item_id", "ts"]
        assert all(f.type == pa.int64() for f in schema)


def test_counts_close_to_request_and_match_files(default_graph):
    out, res = default_graph
    train, test = _read(out, "train"), _read(out, "test")
    assert res["train"] == train.num_rows and res["test"] == test.num_rows
    assert res["interactions"] == train.num_rows + test.num_rows
    assert abs(res["interactions"] - N) <= 0.01 * N, res
    meta = json.loads((out / "gen.json").read_text())
    assert meta["counts"]["interactions"] == res["interactions"]
    assert meta["requested_interactions"] == N


def test_ids_in_range_and_no_duplicates(default_graph):
    out, res = default_graph
    t = pa.concat_tables([_read(out, "train"), _read(out, "test")])
    u, i = _cols(t, "user_id", "item_id")
    assert u.min() >= 0 and u.max() < res["users"]
    assert i.min() >= 0 and i.max() < res["items"]
    assert len(np.unique(u * res["items"] + i)) == len(u)


def test_default_sizes_are_gowalla_like(default_graph):
    _, res = default_graph
    # 20k interactions: ~30 per user, ~20 per item (up to the rounding of the defaults)
    assert 25 <= res["interactions"] / res["users"] <= 35
    assert 15 <= res["interactions"] / res["items"] <= 25
    assert res["communities"] == gen.default_communities(res["users"], res["items"])
    assert 2 <= res["communities"] <= 64


def test_tiny_request_still_works(tmp_path):
    res = _gen(tmp_path / "one", 1)
    assert res["interactions"] == 1 and res["train"] == 1 and res["test"] == 0
    assert _read(tmp_path / "one", "test").num_rows == 0


# ------------------------------------------------------------------------------------------
# Held-out split
# ------------------------------------------------------------------------------------------

def test_no_test_pair_in_train(default_graph, ts_graph):
    for out, _ in (default_graph, ts_graph):
        train, test = _read(out, "train"), _read(out, "test")
        assert test.num_rows > 0
        assert not (_pairs(train) & _pairs(test))


def _check_split(out: Path, fraction: float) -> None:
    tu, = _cols(_read(out, "train"), "user_id")
    su, = _cols(_read(out, "test"), "user_id")
    n = int(max(tu.max(), su.max() if len(su) else 0)) + 1
    n_train, n_test = np.bincount(tu, minlength=n), np.bincount(su, minlength=n)
    total = n_train + n_test
    assert (n_train[n_test > 0] >= 1).all(), "a test user has no train interaction"
    assert (n_test[total >= 2] >= 1).all(), "a user with >= 2 interactions has no test item"
    assert (n_test[total == 1] == 0).all(), "a user's only interaction was held out"
    # each user's share is the fraction up to rounding (and the >= 1 train / >= 1 test rules)
    multi = total >= 2
    expected = np.clip(fraction * total[multi], 1, total[multi] - 1)
    assert (np.abs(n_test[multi] - expected) <= 1.0).all()
    # and overall: the fraction where no rule binds (clipped for users with few interactions)
    assert abs(n_test[multi].sum() - expected.sum()) < 0.02 * total.sum()


def test_per_user_split(default_graph):
    _check_split(default_graph[0], 0.2)


@pytest.mark.parametrize("fraction", [0.3, 0.9])
def test_split_with_sparse_users_and_other_fraction(tmp_path, fraction):
    # fewer interactions than users: many users have 0, 1 or 2 interactions
    out = tmp_path / "sparse"
    res = _gen(out, 3000, users=2000, items=3000, test_fraction=fraction, seed=5)
    u = np.concatenate(_cols(_read(out, "train"), "user_id") + _cols(_read(out, "test"), "user_id"))
    deg = np.bincount(u, minlength=2000)
    assert (deg == 1).sum() > 50 and (deg >= 2).sum() > 50
    _check_split(out, fraction)
    assert res["active_users"] == (deg > 0).sum()
    assert res["test_users"] == (deg >= 2).sum()


def test_zero_test_fraction_writes_empty_test(tmp_path):
    res = _gen(tmp_path / "z", 5000, test_fraction=0.0)
    assert res["test"] == 0 and _read(tmp_path / "z", "test").num_rows == 0
    assert _read(tmp_path / "z", "train").num_rows == res["interactions"]


def test_timestamps_give_temporal_split(ts_graph):
    out, _ = ts_graph
    train, test = _read(out, "train"), _read(out, "test")
    tu, tts = _cols(train, "user_id", "ts")
    su, sts = _cols(test, "user_id", "ts")
    assert tts.min() > 1_500_000_000 and max(tts.max(), sts.max()) < 1_800_000_000  # seconds
    max_train = np.full(int(tu.max()) + 1, np.iinfo(np.int64).min)
    np.maximum.at(max_train, tu, tts)
    assert (sts >= max_train[su]).all(), "a held-out interaction is older than a training one"
    # increasing per user in file order, and not all users share one time range
    same = tu[1:] == tu[:-1]
    assert (tts[1:][same] > tts[:-1][same]).all()
    first = tts[np.r_[True, ~same]]
    assert np.ptp(first) > 86_400 * 30


def test_random_split_is_unbiased(default_graph):
    # Without --timestamps the held-out items are a random subset of each user's items: they are
    # as popular as the training items (a split by draw order would hold out the rarer ones).
    out, res = default_graph
    train, test = _read(out, "train"), _read(out, "test")
    ti, = _cols(train, "item_id")
    si, = _cols(test, "item_id")
    pop = np.bincount(np.concatenate([ti, si]), minlength=res["items"])
    ratio = pop[si].mean() / pop[ti].mean()
    assert 0.93 < ratio < 1.07, ratio


# ------------------------------------------------------------------------------------------
# Structure: communities and skew
# ------------------------------------------------------------------------------------------

def _in_community_share(out: Path, communities: int) -> float:
    u, i = _cols(_read(out, "train"), "user_id", "item_id")
    return float(np.mean(u % communities == i % communities))


def test_community_share_matches_flag(default_graph, tmp_path):
    out, res = default_graph
    share = _in_community_share(out, res["communities"])
    assert abs(share - 0.8) < 0.02, share
    assert abs(res["in_community_fraction"] - share) < 1e-6
    res = _gen(tmp_path / "p5", users=700, items=1000, communities=8, in_community=0.5)
    share = _in_community_share(tmp_path / "p5", 8)
    assert abs(share - 0.5) < 0.02, share


def test_communities_are_not_random(tmp_path):
    # control: with in_community = 1/C, membership carries no signal (share ~ 1/C)
    _gen(tmp_path / "flat", users=700, items=1000, communities=4, in_community=0.25)
    assert abs(_in_community_share(tmp_path / "flat", 4) - 0.25) < 0.03
    _gen(tmp_path / "one", users=700, items=1000, communities=4, in_community=1.0)
    assert _in_community_share(tmp_path / "one", 4) == 1.0


def test_power_law_skew(default_graph, tmp_path):
    out, res = default_graph
    t = pa.concat_tables([_read(out, "train"), _read(out, "test")])
    u, i = _cols(t, "user_id", "item_id")
    pop = np.sort(np.bincount(i, minlength=res["items"]))[::-1]
    top = pop[: res["items"] // 10].sum() / pop.sum()
    assert top > 0.35, f"top 10% of items get only {top:.0%}"
    deg = np.bincount(u, minlength=res["users"])
    assert deg.max() > 5 * np.median(deg), (deg.max(), np.median(deg))
    # control: uniform popularity removes the item skew
    _gen(tmp_path / "flat", popularity_exponent=0.0, seed=3)
    i2, = _cols(_read(tmp_path / "flat", "train"), "item_id")
    pop2 = np.sort(np.bincount(i2, minlength=res["items"]))[::-1]
    assert pop2[: res["items"] // 10].sum() / pop2.sum() < 0.2


# ------------------------------------------------------------------------------------------
# Bad input, output directory handling
# ------------------------------------------------------------------------------------------

BAD = [
    (dict(interactions=0), "--interactions"),
    (dict(interactions=-5), "--interactions"),
    (dict(interactions=1.5), "--interactions"),
    (dict(users=0), "--users"),
    (dict(items=0), "--items"),
    (dict(communities=0), "--communities"),
    (dict(users=50, items=5000, communities=51), "--communities"),
    (dict(test_fraction=1.0), "--test-fraction"),
    (dict(test_fraction=-0.1), "--test-fraction"),
    (dict(in_community=1.5), "--in-community"),
    (dict(seed=-1), "--seed"),
    (dict(chunk_users=0), "--chunk-users"),
    (dict(users=10, items=10), "too dense"),
]


@pytest.mark.parametrize("kwargs,needle", BAD, ids=[f"{k}" for k, _ in BAD])
def test_bad_input_raises_user_error_and_writes_nothing(tmp_path, kwargs, needle):
    kwargs = dict(kwargs)
    n = kwargs.pop("interactions", 1000)
    out = tmp_path / "sub" / "out"
    with pytest.raises(UserError) as err:
        gen.generate(out, n, progress=False, **kwargs)
    msg = str(err.value)
    assert needle in msg
    assert "\n" not in msg and len(msg) < 300
    assert list(tmp_path.iterdir()) == []


def test_non_empty_out_needs_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="--overwrite"):
        _gen(out, 1000)
    # --overwrite still refuses to delete files gen did not write
    with pytest.raises(UserError, match="did not write"):
        _gen(out, 1000, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_overwrite_replaces_earlier_output(tmp_path):
    out = tmp_path / "out"
    first = _gen(out, 1000, seed=1)
    with pytest.raises(UserError):
        _gen(out, 2000, seed=1)
    assert _read(out, "train").num_rows == first["train"]
    second = _gen(out, 2000, seed=1, overwrite=True)
    assert _read(out, "train").num_rows == second["train"] != first["train"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp or old dirs left


def test_empty_existing_out_is_fine(tmp_path):
    (tmp_path / "out").mkdir()
    res = _gen(tmp_path / "out", 1000)
    assert _read(tmp_path / "out", "train").num_rows == res["train"]


def test_out_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="file"):
        _gen(tmp_path / "f", 1000)


def test_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    real = gen._gen_block
    calls = []

    def flaky(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(*args, **kw)

    monkeypatch.setattr(gen, "_gen_block", flaky)
    with pytest.raises(RuntimeError):
        _gen(tmp_path / "deep" / "out", 5000, users=3000, items=4000)
    assert len(calls) == 2
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distgnn")
    gen.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_runs_and_prints_counts(tmp_path, capsys):
    out = tmp_path / "cli"
    args = _parser().parse_args(["gen", "--interactions", "3k", "--seed", "2", "--timestamps",
                                 "--out", str(out), "--quiet"])
    assert args.handler(args) == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "gen.json").read_text())["counts"]
    assert f"{res['interactions']:,} interactions" in printed
    assert f"{res['train']:,} train" in printed
    assert pq.read_schema(out / "train" / "part-00000.parquet").names == ["user_id", "item_id", "ts"]


def test_cli_bad_input_is_user_error(tmp_path):
    args = _parser().parse_args(["gen", "-n", "1000", "--test-fraction", "1", "--out",
                                 str(tmp_path / "x"), "-q"])
    with pytest.raises(UserError, match="--test-fraction"):
        args.handler(args)
    assert not (tmp_path / "x").exists()


def test_cli_help_describes_output():
    sub = _parser()._subparsers._group_actions[0].choices["gen"]
    help_text = sub.format_help()
    for needle in ("--interactions", "about N", "communit", "train/part-00000.parquet",
                   "--timestamps", "--overwrite", "--test-fraction"):
        assert needle in help_text


@pytest.mark.parametrize("text,value", [("1000", 1000), ("10M", 10_000_000), ("2.5k", 2500),
                                        ("1e9", 10**9), ("1_000", 1000), ("3B", 3 * 10**9)])
def test_count_parser(text, value):
    assert gen._count(text) == value


@pytest.mark.parametrize("text", ["abc", "1.5", "-3", "10X"])
def test_count_parser_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        gen._count(text)
