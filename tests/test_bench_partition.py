"""`distgnn bench partition` compares both sides on the same input and reports honest ratios."""
from __future__ import annotations

import json

from distgnn.cli import main


def test_both_sides_partition_the_same_input(tmp_path, capsys):
    assert main(["bench", "partition", "--interactions", "6000", "--num-parts", "2",
                 "--workdir", str(tmp_path), "--json", "--timeout", "300"]) == 0
    report = json.loads(capsys.readouterr().out)
    ours, dgl = report["ours"], report["dgl"]
    assert ours["num_interactions"] == dgl["num_interactions"] > 4000
    for side in (ours, dgl):
        assert 0 < side["edge_cut_fraction"] < 0.5       # planted communities: far below random
        assert side["peak_rss_bytes"] > 100 * 2**20      # measured in the child, not the parent
        assert side["seconds"] > 0
    assert abs(report["speedup"] - dgl["seconds"] / ours["seconds"]) < 1e-9
    for side in (ours, dgl):
        assert side["process_seconds"] > side["seconds"]   # the whole process includes imports
    assert abs(report["process_speedup"] - dgl["process_seconds"] / ours["process_seconds"]) < 1e-9


def test_sweep_writes_json_and_plot(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["bench", "partition", "--sizes", "3000,6000", "--num-parts", "2", "--skip-dgl",
                 "--workdir", str(tmp_path / "w"), "--out", str(out), "--timeout", "300"]) == 0
    sweep = json.loads((out / "partition_sweep.json").read_text())
    assert [r["interactions"] for r in sweep["records"]] == [3000, 6000]
    assert all(r["ours"]["process_seconds"] > 0 and r["ours"]["peak_rss_bytes"] > 0 for r in sweep["records"])
    assert (out / "partition_sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_never_removes_a_directory_it_did_not_create(tmp_path, capsys):
    (tmp_path / "ours").mkdir()
    (tmp_path / "ours" / "notes.txt").write_text("mine")
    assert main(["bench", "partition", "--interactions", "3000", "--num-parts", "2",
                 "--workdir", str(tmp_path), "--timeout", "300"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "ours" / "notes.txt").read_text() == "mine"
