"""The 100M scale path, scaled down to 1M interactions (issue #9): gen -> partition (4 parts) ->
Ray training with configs/scale.yaml on 2 workers -> sharded evaluate and recommend on 2 workers.
Every stage is the CLI a user runs; each has a deadline and shows its stderr when it fails."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import yaml

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, timeout: float = 420) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "distgnn.cli", *args], cwd=REPO, capture_output=True,
                       text=True, timeout=timeout)
    assert p.returncode == 0, f"distgnn {' '.join(args)} failed ({p.returncode}):\n{p.stderr[-4000:]}"
    return p


def test_scale_config_differs_from_gowalla_only_in_data_batch_and_user_sample():
    a = yaml.safe_load((REPO / "configs" / "gowalla_gat.yaml").read_text())
    b = yaml.safe_load((REPO / "configs" / "scale.yaml").read_text())
    assert a["model"] == b["model"] and a["embedding"] == b["embedding"]
    ta, tb = dict(a["train"]), dict(b["train"])
    assert ta.pop("batch_size") != tb.pop("batch_size")
    assert ta == tb
    ea, eb = dict(a["eval"]), dict(b["eval"])
    assert eb.pop("max_users") > 0 and ea == eb


def test_scale_path_at_1m(tmp_path):
    data, parts, run, recs = tmp_path / "g1m", tmp_path / "p1m", tmp_path / "run", tmp_path / "recs"
    cli("gen", "--interactions", "1M", "--seed", "3", "--out", str(data))
    cli("partition", "create", "--train", str(data / "train"), "--test", str(data / "test"),
        "--valid-fraction", "0.02", "--num-parts", "4", "--out", str(parts))
    cli("train", "--config", "configs/scale.yaml", "--partitions", str(parts), "--backend", "ray",
        "--num-workers", "2", "--max-steps", "6", "--out", str(run), "--set", "train.log_every=2",
        timeout=600)
    recs_train = [json.loads(line) for f in sorted((run / "metrics").glob("rank-*.jsonl"))
                  for line in f.read_text().splitlines()]
    assert {r["rank"] for r in recs_train if r["type"] == "train"} == {0, 1}
    p = cli("evaluate", "--run", str(run), "--backend", "ray", "--num-workers", "2", "--max-users", "2000",
            "--json")
    out = json.loads(p.stdout)
    assert out["backend"] == "ray" and out["num_workers"] == 2
    assert 1000 < out["num_users"] < 3000 and 0 <= out["recall@20"] <= 1
    assert "full-ranking on a seeded sample of ~2000 users" in out["protocol"]
    assert set(out["peak_rss_bytes"]) == {"worker0", "worker1"}
    cli("recommend", "--run", str(run), "--backend", "ray", "--num-workers", "2", "--k", "5",
        "--max-users", "500", "--out", str(recs))
    t = ds.dataset(recs / "recs").to_table()
    assert 250 < t.num_rows / 5 < 1000 and t.column_names == ["user_id", "rank", "item_id", "score"]
    n_users = ds.dataset(recs / "user_embeddings").count_rows()
    n_items = ds.dataset(recs / "item_embeddings").count_rows()
    manifest = json.loads((parts / "manifest.json").read_text())
    assert (n_users, n_items) == (manifest["num_nodes"]["user"], manifest["num_nodes"]["item"])
