"""`distgnn bench scaling`: the smoke sweep writes JSON, Markdown and PNGs that parse and hold the
documented fields; a re-run resumes; the per-step arithmetic and the projection model are checked
on hand-made records.

The smoke sweep is multi-process (a simulated 2-node Ray cluster, child drivers, child benchmarks):
it has a deadline, and a failing configuration's reason (with the tail of its log) is in the
assertion message.
"""
from __future__ import annotations

import json

import pytest

from distgnn.bench import scaling
from distgnn.cli import main

pytestmark = pytest.mark.timeout(900)  # the smoke sweep's deadline (its fixture counts too)

COMMON = {"kind", "key", "status", "seconds", "loadavg", "finished"}
FIELDS = {
    "partition": {"interactions", "num_parts", "ours"},
    "train": {"interactions", "workers", "num_parts", "nodes", "sweeps", "batch_size", "steps_measured",
              "edges_per_s", "edges_per_s_per_worker", "step_seconds", "cpu_seconds_per_step",
              "compute_cpu_seconds_per_step", "stage_seconds_per_step", "bytes_per_step", "rows_per_step",
              "sample_per_step", "remote_fraction", "peak_rss_bytes", "placement"},
    "reference": {"interactions", "edges_per_s", "steps", "peak_rss_bytes", "settings"},
    "locality": {"interactions", "num_parts", "metis", "random"},
}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("scaling") / "out"
    code = main(["bench", "scaling", "--preset", "smoke", "--out", str(out)])
    data = json.loads((out / "scaling.json").read_text())
    failed = [f"{r['key']}: {r.get('reason')}" for r in data["records"] if r["status"] != "ok"]
    assert code == 0 and not failed, "\n".join(failed)
    return out, data


def test_smoke_sweep_writes_every_output(smoke):
    out, data = smoke
    assert data["format"] == scaling.FORMAT and data["version"] == scaling.VERSION
    assert data["preset"] == "smoke" and len(data["invocations"]) == 1
    assert len(data["invocations"][0]["loadavg_start"]) == 3, "the machine's load is recorded"
    kinds = {r["kind"] for r in data["records"]}
    assert kinds == set(FIELDS)
    for r in data["records"]:
        missing = (COMMON | FIELDS[r["kind"]]) - set(r)
        assert not missing, (r["key"], missing)
    assert len({r["key"] for r in data["records"]}) == len(data["records"])
    train = {(r["interactions"], r["workers"]): r for r in data["records"] if r["kind"] == "train"}
    assert set(train) == {(20_000, 2), (40_000, 2)}, "data, strong and weak share their runs"
    assert set(train[(20_000, 2)]["sweeps"]) == {"data", "strong"}
    assert set(train[(40_000, 2)]["sweeps"]) == {"data", "weak"}
    for r in train.values():
        assert r["edges_per_s"] > 0 and r["steps_measured"] >= 2
        assert r["peak_rss_bytes"]["total"] >= r["peak_rss_bytes"]["max_worker"] > 50 * 2**20
        assert len(r["peak_rss_bytes"]["workers"]) == 2 == len(r["peak_rss_bytes"]["ps_shards"])
        # two simulated nodes: each worker trains the partition held on its own node, and half of
        # what it samples and pulls is on the other node
        assert r["placement"] == {"nodes_used": 2, "parts_on_worker_node": 2, "num_parts": 2, "missing": []}
        assert r["bytes_per_step"]["ps_pull_remote"] > 0 and r["bytes_per_step"]["sample_remote"] > 0
        assert 0 < r["remote_fraction"]["pull_rows"] < 1
        assert 0 < r["compute_cpu_seconds_per_step"] <= r["cpu_seconds_per_step"]
        assert (out / "runs" / r["key"].replace("/", "_") / "metrics" / "driver.jsonl").is_file()
    proj = data["projection"]
    assert proj["modelled"] is True and proj["rows"]
    assert {row["nodes"] for row in proj["rows"]} == set(scaling.PROJECTED_NODES)
    # PNGs: valid images that matplotlib reads back
    import matplotlib.image as mpimg

    for name in ("partition", "data", "workers", "stages", "locality", "projection"):
        path = out / f"scaling_{name}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        h, w = mpimg.imread(path).shape[:2]
        assert h > 200 and w > 300, name
    md = (out / "scaling.md").read_text()
    for heading in ("## Partitioning", "## Data scaling", "## Strong and weak scaling", "## Per-stage time",
                    "## Locality", "## Projection to 8-128 nodes: a MODEL, not a measurement"):
        assert heading in md, heading
    assert md.count("|---") >= 6 and "](scaling_projection.png)" in md


def test_rerun_resumes_without_measuring_again(smoke, capsys):
    out, data = smoke
    assert main(["bench", "scaling", "--preset", "smoke", "--out", str(out)]) == 0
    again = json.loads((out / "scaling.json").read_text())
    assert len(again["invocations"]) == 2
    assert again["records"] == data["records"], "measured configurations were run again"
    assert "(7 already measured)" in capsys.readouterr().err


def test_other_settings_are_refused_not_mixed(smoke, capsys):
    out, _ = smoke
    assert main(["bench", "scaling", "--preset", "smoke", "--out", str(out), "--set", "train.batch_size=64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other training settings" in err[0]


def _rec(rank, step, edges_per_s, cpu, compute, **traffic):
    return {"type": "train", "rank": rank, "step": step, "edges": 100, "edges_per_s": edges_per_s,
            "cpu_seconds": cpu, "compute_cpu_seconds": compute,
            "stage_seconds": {"forward": 0.2, "backward": 0.2, "all_reduce": 0.05},
            "traffic": {"pull_bytes_remote": traffic.get("pr", 0), "pull_bytes_local": traffic.get("pl", 0),
                        "pull_rows_remote": traffic.get("rr", 0), "pull_rows_local": traffic.get("rl", 0),
                        "remote_seeds": traffic.get("rs", 0), "local_seeds": traffic.get("ls", 0)}}


def test_steady_figures_skip_warmup_and_difference_counters():
    records = [
        _rec(0, 2, 1.0, 10.0, 1.0),                                          # warm-up: excluded
        _rec(0, 4, 100.0, 11.0, 1.4, pr=400, pl=400, rr=4, rl=12, rs=10, ls=30),
        _rec(0, 6, 100.0, 12.0, 1.8, pr=800, pl=800, rr=8, rl=24, rs=20, ls=60),
        _rec(1, 2, 1.0, 20.0, 2.0),
        _rec(1, 4, 300.0, 20.5, 2.2),
        _rec(1, 6, 300.0, 21.0, 2.4),
        {"type": "processes"},
    ]
    f = scaling.steady_figures(records)
    assert f["steps_measured"] == 4
    assert f["edges_per_s"] == pytest.approx(400.0) and f["edges_per_s_per_worker"] == pytest.approx(200.0)
    assert f["cpu_seconds_per_step"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert f["compute_cpu_seconds_per_step"] == pytest.approx((0.8 / 4 + 0.4 / 4) / 2)
    assert f["stage_seconds_per_step"]["forward"] == pytest.approx(0.4 / 4)
    assert f["bytes_per_step"]["ps_pull_remote"] == pytest.approx((800 / 4 + 0) / 2)
    assert f["remote_fraction"]["pull_rows"] == pytest.approx(8 / 32)
    assert f["bytes_per_step"]["sample_remote"] == pytest.approx(20 / 4 * scaling.SAMPLE_SEED_BYTES / 2)
    with pytest.raises(ValueError, match="rank 0 has 1 train record"):
        scaling.steady_figures(records[:1])


def test_projection_model_arithmetic():
    train = {"key": "train/n=1/w=2", "batch_size": 1000, "compute_cpu_seconds_per_step": 0.1,
             "cpu_seconds_per_step": 0.15, "stage_seconds_per_step": {},
             "bytes_per_step": {"ps_pull_local": 5e6, "ps_pull_remote": 5e6, "ps_push_local": 0.0,
                                "ps_push_remote": 0.0, "sample_local": 1e6, "sample_remote": 1e6}}
    loc = [{"method": "metis", "num_parts": 8, "remote_fraction": {"pull_rows": 0.5, "sample_seeds": 0.25}}]
    p = scaling.project(train, loc, dense_params=1_000_000, layers=2, nodes=[8], bandwidths_gbit=[8],
                        speedups=[10])
    assert p["modelled"] is True
    rows = {r["placement"]: r for r in p["rows"]}
    bw = 8e9 / 8
    allreduce = 2 * 7 / 8 * 4 * 1e6 / bw + 2 * 7 * scaling.ALLREDUCE_ALPHA_S
    random = 0.1 / 10 + 0.05 + 7 / 8 * 12e6 / bw + 4 * scaling.ROUND_TRIP_S + allreduce
    assert rows["random"]["step_seconds"] == pytest.approx(random, rel=1e-3)
    assert rows["random"]["edges_per_s"] == pytest.approx(8 * 1000 / random, rel=1e-3)
    metis = 0.1 / 10 + 0.05 + (0.5 * 10e6 + 0.25 * 2e6) / bw + 4 * scaling.ROUND_TRIP_S + allreduce
    assert rows["metis@8"]["step_seconds"] == pytest.approx(metis, rel=1e-3)
    assert p["distdgl"]["seeds_per_s_per_machine"] == round(1_207_179 / 13 / 16)


def test_plan_shares_configurations_between_sweeps():
    preset = scaling.PRESETS["medium"]
    jobs = scaling.plan_training(preset, set(scaling.SECTIONS))
    got = {(j.interactions, j.workers): set(j.sweeps) for j in jobs}
    assert got == {(1_000_000, 1): {"strong", "weak"}, (1_000_000, 2): {"data", "strong"},
                   (1_000_000, 4): {"strong"}, (2_000_000, 2): {"weak"}, (4_000_000, 4): {"weak"},
                   (10_000_000, 2): {"data"}}
    assert [j.workers for j in jobs] == sorted(j.workers for j in jobs), "the simulated cluster only grows"


def test_bad_lists_are_one_line(tmp_path, capsys):
    assert main(["bench", "scaling", "--preset", "smoke", "--out", str(tmp_path), "--sizes", "1M,x"]) == 2
    assert "--sizes" in capsys.readouterr().err
    assert main(["bench", "scaling", "--preset", "smoke", "--out", str(tmp_path), "--only", "data,foo"]) == 2
    assert "foo" in capsys.readouterr().err


def test_child_report_is_found_after_ray_warnings(tmp_path):
    """Ray's raylet prints warnings on a child's stdout before its (indented) --json report."""
    out = tmp_path / "x.log.stdout"
    out.write_text("(raylet) WARNING: 8 PYTHON worker processes have been started {not json}\n"
                   + json.dumps({"num_parts": 8, "metis": {"a": 1}}, indent=2) + "\n")
    assert scaling.ChildResult(0, 1.0, 1, tmp_path / "x.log", out).report()["num_parts"] == 8
    out.write_text("nothing here\n{\n")
    with pytest.raises(scaling.UserError, match="no JSON report"):
        scaling.ChildResult(0, 1.0, 1, tmp_path / "x.log", out).report()
