"""Partitioning: correctness of shards, held-out handling, quality, verify, atomic output."""
from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from distgnn import format as fmt
from distgnn.cli import main
from distgnn.errors import UserError
from partition import dispatch
from partition.pipeline import CreateOptions, create
from partition.verify import verify
from tests.conftest import community_interactions, write_parquet


def _create(logs, out: Path, parts: int = 3, method: str = "metis", **kw) -> dict:
    return create(CreateOptions(train=str(logs["train"]), test=str(logs["test"]), out=str(out),
                                num_parts=parts, method=method, progress=False, **kw))


def _orig_pairs_from_shards(root: Path) -> set[tuple]:
    """Read every shard back into (user orig_id, item orig_id) pairs, independently of verify()."""
    manifest = fmt.load_manifest(root)
    book = fmt.PartitionBook.from_manifest(manifest)
    maps = {}
    for ntype in fmt.NTYPES:
        t = pq.read_table(root / fmt.id_map_path(ntype))
        maps[ntype] = dict(zip(t.column("gid").to_pylist(), t.column("orig_id").to_pylist()))
    pairs = []
    for p in range(manifest["num_parts"]):
        src, dst = fmt.read_part_edges(root, p)
        item_to_user = book.ntype_of(dst) == fmt.USER
        pairs += [(maps["user"][d], maps["item"][s]) for s, d in zip(src[item_to_user], dst[item_to_user])]
    return pairs


def test_shards_hold_every_interaction_once_in_its_owners_partition(logs):
    out = logs["tmp"] / "parts"
    manifest = _create(logs, out)
    t = pq.read_table(logs["train"])
    expected = set(zip(t.column("user_id").to_pylist(), t.column("item_id").to_pylist()))
    pairs = _orig_pairs_from_shards(out)
    assert len(pairs) == len(set(pairs)) == len(expected)
    assert set(pairs) == expected
    assert manifest["dropped"]["duplicates"] == t.num_rows - len(expected) >= 5

    book = fmt.PartitionBook.from_manifest(manifest)
    for p in range(3):
        src, dst = fmt.read_part_edges(out, p)
        assert np.all(book.part_of(dst) == p), "an edge is stored away from its destination's owner"
        assert np.all(np.diff(dst) >= 0), "edges not sorted by dst"
        gid, owned = fmt.read_part_nodes(out, p)
        halo = gid[~owned]
        assert set(halo) == set(src[book.part_of(src) != p]), "halo is not exactly the remote sources"
    assert verify(out, train=str(logs["train"])) == []


def test_heldout_never_in_graph_and_unscorable_rows_are_counted(logs, tmp_path):
    # Add held-out rows with an unknown user, an unknown item, and one already in train.
    t = pq.read_table(logs["test"])
    tr = pq.read_table(logs["train"])
    u = np.concatenate([t.column("user_id").to_numpy(), [10_000, 0, tr.column("user_id")[0].as_py()]])
    i = np.concatenate([t.column("item_id").to_numpy(), [0, 10_000, tr.column("item_id")[0].as_py()]])
    logs["test"] = write_parquet(tmp_path / "test2.parquet", user_id=u, item_id=i)
    out = tmp_path / "parts"
    manifest = _create(logs, out)
    h = manifest["heldout"]["test"]
    assert h["dropped_unknown"] == 2
    assert h["dropped_in_train"] >= 1
    assert h["rows"] + h["dropped_unknown"] + h["dropped_in_train"] + h["dropped_duplicates"] == len(u)

    user_gid, item_gid = fmt.read_targets(out, "test")
    held = set(zip(user_gid.tolist(), item_gid.tolist()))
    for p in range(manifest["num_parts"]):
        src, dst = fmt.read_part_edges(out, p)
        assert not held & set(zip(src.tolist(), dst.tolist())), "held-out user->item edge in graph"
        assert not held & set(zip(dst.tolist(), src.tolist())), "held-out item->user edge in graph"


def test_metis_cuts_far_fewer_edges_than_random_and_stays_balanced(logs, tmp_path):
    metis = _create(logs, tmp_path / "metis", parts=4, method="metis")["quality"]
    random = _create(logs, tmp_path / "random", parts=4, method="random")["quality"]
    assert metis["edge_cut_fraction"] < 0.5 * random["edge_cut_fraction"]
    for key in ("user_imbalance", "item_imbalance", "edge_imbalance"):
        assert metis[key] < 1.15, (key, metis[key])


def test_string_ids_csv_and_directory_input(tmp_path):
    users, items = community_interactions(num_users=60, num_items=40, per_user=5)
    table = pa.table({"uid": [f"u{x}" for x in users], "iid": [f"item-{x}" for x in items],
                      "when": np.arange(len(users), dtype=np.int64)})
    csv_path = tmp_path / "logs.csv"
    pacsv.write_csv(table, csv_path)
    spark_dir = tmp_path / "spark"
    spark_dir.mkdir()
    pq.write_table(table.slice(0, 100), spark_dir / "part-00000.parquet")
    pq.write_table(table.slice(100), spark_dir / "part-00001.parquet")
    (spark_dir / "_SUCCESS").write_text("")
    for src in (csv_path, spark_dir):
        out = tmp_path / f"out-{src.name}"
        m = create(CreateOptions(train=str(src), out=str(out), num_parts=2, user_col="uid",
                                 item_col="iid", ts_col="when", progress=False))
        assert m["id_dtype"] == {"user": "string", "item": "string"} and m["has_ts"]
        assert verify(out, train=str(src), user_col="uid", item_col="iid") == []
        ids = pq.read_table(out / "id_map/user.parquet").column("orig_id").to_pylist()
        assert set(ids) == {f"u{x}" for x in users}


def test_duplicates_keep_earliest_timestamp(tmp_path):
    train = write_parquet(tmp_path / "t.parquet", user_id=np.array([1, 1, 1, 2]),
                          item_id=np.array([5, 5, 6, 5]), ts=np.array([30, 10, 20, 40]))
    out = tmp_path / "p"
    m = create(CreateOptions(train=str(train), out=str(out), num_parts=1, ts_col="ts", progress=False))
    assert m["dropped"]["duplicates"] == 1
    t = pq.read_table(out / fmt.edges_path(0))
    users = pq.read_table(out / "id_map/user.parquet")
    items = pq.read_table(out / "id_map/item.parquet")
    g = {("u", o): gid for o, gid in zip(users["orig_id"].to_pylist(), users["gid"].to_pylist())}
    g |= {("i", o): gid for o, gid in zip(items["orig_id"].to_pylist(), items["gid"].to_pylist())}
    rows = set(zip(t["src_gid"].to_pylist(), t["dst_gid"].to_pylist(), t["ts"].to_pylist()))
    assert (g[("u", 1)], g[("i", 5)], 10) in rows and (g[("i", 5)], g[("u", 1)], 10) in rows


def test_verify_catches_corruption_and_missing_interactions(logs, tmp_path):
    out = tmp_path / "parts"
    _create(logs, out, parts=2)
    assert main(["partition", "verify", str(out)]) == 0

    # Drop one edge but fix up the checksum and counts: only the content checks can notice.
    manifest = json.loads((out / "manifest.json").read_text())
    path = out / fmt.edges_path(0)
    t = pq.read_table(path)
    pq.write_table(t.slice(1), path)
    info = manifest["files"][fmt.edges_path(0)]
    info.update(rows=t.num_rows - 1, bytes=path.stat().st_size, sha256=fmt.sha256_file(path))
    manifest["parts"][0]["num_edges"] -= 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    problems = verify(out)
    assert problems and any("edge" in p for p in problems)

    # Flip bytes in a file: checksum mismatch, exit 1.
    out2 = tmp_path / "parts2"
    _create(logs, out2, parts=2)
    with open(out2 / fmt.nodes_path(1), "r+b") as f:
        f.seek(10)
        f.write(b"\x00\x01\x02")
    assert main(["partition", "verify", str(out2)]) == 1


def test_failed_create_leaves_nothing_and_overwrite_replaces(logs, tmp_path, monkeypatch):
    out = tmp_path / "parts"
    real = dispatch.write_table
    calls = [0]

    def crash(*a, **kw):
        calls[0] += 1
        if calls[0] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **kw)

    monkeypatch.setattr(dispatch, "write_table", crash)
    with pytest.raises(UserError, match="no space left"):
        _create(logs, out, parts=2)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".parts.tmp")], "temp dir left behind"
    monkeypatch.setattr(dispatch, "write_table", real)

    _create(logs, out, parts=2)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".parts")], "scratch left behind"
    _create(logs, out, parts=3, overwrite=True)
    assert fmt.load_manifest(out)["num_parts"] == 3
    assert not (out / fmt.part_dir(3)).exists() and (out / fmt.part_dir(2)).exists()
    assert verify(out) == []


def test_stats_json_and_table(logs, tmp_path, capsys):
    out = tmp_path / "parts"
    _create(logs, out, parts=2)
    assert main(["partition", "stats", str(out), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    for key in ("num_parts", "edge_cut_fraction", "halo_node_fraction", "node_imbalance",
                "edge_imbalance", "parts"):
        assert key in stats
    assert stats["num_parts"] == len(stats["parts"]) == 2
    assert 0 < stats["edge_cut_fraction"] < 1
    assert sum(p["num_train_interactions"] for p in stats["parts"]) == stats["num_interactions"]
    assert main(["partition", "stats", str(out)]) == 0
    assert "edge cut" in capsys.readouterr().out


def test_estimate_reads_metadata_only(logs, capsys):
    assert main(["partition", "estimate", "--train", str(logs["train"]), "--num-parts", "4", "--json"]) == 0
    est = json.loads(capsys.readouterr().out)
    assert est["rows"] == pq.read_metadata(logs["train"]).num_rows and est["rows_exact"]
    assert est["peak_rss_bytes"] > 0 and est["output_bytes"] > 0
