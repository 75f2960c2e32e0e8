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
    assert (tmp_path / "ours" / "manifest.json").is_file() and (tmp_path / "dgl" / "bench.json").is_file()
