"""The Markdown tables and PNG plots of ``distgnn bench scaling``, drawn from ``scaling.json``'s data.

Kept apart from the sweep so they can be redrawn from a JSON file alone, and so the sweep module
stays about running things. Only records with ``status: ok`` are drawn; failed and skipped ones are
listed under the tables with their reasons.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

STAGE_COLORS = {"sample": "#4c72b0", "pull": "#55a868", "forward": "#c44e52", "backward": "#8172b2",
                "push": "#ccb974", "dense_step": "#64b5cd"}


def _ok(data: dict, kind: str) -> list[dict]:
    return [r for r in data["records"] if r["kind"] == kind and r["status"] == "ok"]


def _gib(n: float | None) -> str:
    return "" if n is None else f"{n / 2**30:.2f}"


def _num(n: float | None, fmt: str = "{:,.0f}") -> str:
    return "" if n is None else fmt.format(n)


def _label(r: dict) -> str:
    from distgnn.bench.scaling import _short

    return f"{_short(r['interactions'])} w{r['workers']}"


def _sweep(data: dict, name: str) -> list[dict]:
    return sorted((r for r in _ok(data, "train") if name in r.get("sweeps", [])),
                  key=lambda r: (r["workers"], r["interactions"]))


# --- plots ----------------------------------------------------------------------------------------
def plots(data: dict[str, Any], locality: list[dict], out: Path) -> list[str]:
    """Draw every plot there is data for; returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    written = []
    for name, draw in (("scaling_partition.png", _plot_partition), ("scaling_data.png", _plot_data),
                       ("scaling_workers.png", _plot_workers), ("scaling_stages.png", _plot_stages),
                       ("scaling_locality.png", lambda d, p: _plot_locality(locality, p)),
                       ("scaling_projection.png", _plot_projection)):
        if draw(data, out / name):
            written.append(name)
    return written


def _save(fig, path: Path) -> bool:
    import matplotlib.pyplot as plt

    from distgnn import atomic

    fig.tight_layout()
    with atomic.atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return True


def _title(data: dict) -> str:
    m = data.get("machine", {})
    return (f"{m.get('physical_cores', '?')} cores, {m.get('memory_bytes', 0) / 2**30:.0f} GiB; "
            f"preset {data.get('preset')}")


def _plot_partition(data: dict, path: Path) -> bool:
    from distgnn.bench.partition import plot_sweep

    recs = sorted(_ok(data, "partition"), key=lambda r: r["interactions"])
    if not recs:
        return False
    plot_sweep({"num_parts": recs[0]["num_parts"], "records": recs}, path)  # bench partition's own plot
    return True


def _plot_data(data: dict, path: Path) -> bool:
    import matplotlib.pyplot as plt

    recs = sorted(_sweep(data, "data"), key=lambda r: r["interactions"])
    refs = sorted(_ok(data, "reference"), key=lambda r: r["interactions"])
    if not recs and not refs:
        return False
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    if recs:
        w = recs[0]["workers"]
        a.plot([r["interactions"] for r in recs], [r["edges_per_s_per_worker"] for r in recs], "o-",
               label=f"distgnn, Ray, per worker ({w} workers, 1 thread each)")
    if refs:
        a.plot([r["interactions"] for r in refs], [r["edges_per_s"] for r in refs], "s--",
               label="plain DGL loop, 1 process, 1 thread")
    a.set_ylabel("train edges/s")
    a.set_title("training throughput (wall-clock)")
    a.set_ylim(bottom=0)
    for key, label, style in (("driver", "driver", "v-"), ("max_worker", "worker (max)", "o-"),
                              ("max_graph_shard", "graph shard (max)", "^-"), ("max_ps_shard", "PS shard (max)", "d-")):
        pts = [(r["interactions"], r["peak_rss_bytes"][key] / 2**30) for r in recs if r.get("peak_rss_bytes")]
        if pts:
            b.plot(*zip(*pts), style, label=f"distgnn {label}")
    if refs:
        b.plot([r["interactions"] for r in refs], [r["peak_rss_bytes"] / 2**30 for r in refs], "s--",
               label="plain DGL loop (process)")
    b.set_ylabel("peak RSS (GiB)")
    b.set_title("peak RSS per process")
    for ax in (a, b):
        ax.set_xscale("log")
        ax.set_xlabel("interactions")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    b.set_yscale("log")
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    b.yaxis.set_major_formatter(plain)
    b.yaxis.set_minor_formatter(plain)
    b.tick_params(axis="y", which="minor", labelsize=7)
    fig.suptitle(f"Data scaling, {_title(data)}")
    return _save(fig, path)


def _plot_workers(data: dict, path: Path) -> bool:
    import matplotlib.pyplot as plt

    sweeps = {s: _sweep(data, s) for s in ("strong", "weak")}
    if not any(sweeps.values()):
        return False
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    (a, b), (c, d) = axes
    ls = {"strong": "-", "weak": "--"}  # line style: the sweep; colour: the quantity
    mk = {"strong": "o", "weak": "s"}
    for s, recs in sweeps.items():
        if not recs:
            continue
        ws = [r["workers"] for r in recs]

        def line(ax, ys, color, label):
            ax.plot(ws, ys, ls[s], marker=mk[s], color=color, label=f"{s}: {label}")

        line(a, [r["edges_per_s"] for r in recs], "C0", "all workers")
        line(b, [r["step_seconds"] for r in recs], "0.6", "wall")
        line(b, [r["cpu_seconds_per_step"] or 0 for r in recs], "C0", "CPU, worker process")
        line(b, [r.get("compute_cpu_seconds_per_step") or 0 for r in recs], "C4", "CPU, forward+backward+dense")
        bb = [r["bytes_per_step"] for r in recs]
        line(c, [(x["ps_pull_remote"] + x["ps_push_remote"]) / 2**20 for x in bb], "C3", "PS remote")
        line(c, [(x["ps_pull_local"] + x["ps_push_local"]) / 2**20 for x in bb], "C2", "PS local")
        line(c, [x["sample_remote"] / 2**20 for x in bb], "C0", "sampling remote")
        line(d, [r["remote_fraction"]["pull_rows"] or 0 for r in recs], "C2", "PS pull rows")
        line(d, [r["remote_fraction"]["sample_seeds"] or 0 for r in recs], "C1", "sampled seeds")
    a.set_title("train edges/s (2 physical cores: more workers cannot be faster)", fontsize=9)
    b.set_title("seconds per step, per worker", fontsize=9)
    c.set_title("MiB per step, per worker, to/from PS and graph shards", fontsize=9)
    d.set_title("remote share", fontsize=9)
    d.set_ylim(0, 1)
    for ax in (a, b, c):
        ax.set_ylim(bottom=0)
    for ax in axes.flat:
        ax.set_xlabel("workers (one simulated node each)")
        ax.set_xticks(sorted({r["workers"] for recs in sweeps.values() for r in recs}))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fixed = data["plan"]["fixed_size"]
    from distgnn.bench.scaling import _short

    fig.suptitle(f"Strong scaling ({_short(fixed)} interactions) and weak scaling ({_short(fixed)} per worker), "
                 f"{_title(data)}", fontsize=10)
    return _save(fig, path)


def _plot_stages(data: dict, path: Path) -> bool:
    import matplotlib.pyplot as plt

    recs = sorted(_ok(data, "train"), key=lambda r: (r["workers"], r["interactions"]))
    if not recs:
        return False
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(recs) + 3), 4.5))
    xs = range(len(recs))
    bottom = [0.0] * len(recs)
    for stage, color in STAGE_COLORS.items():
        vals = [r["stage_seconds_per_step"].get(stage, 0.0) * 1000 for r in recs]
        ax.bar(xs, vals, 0.6, bottom=bottom, color=color, label=stage)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.bar([x + 0.38 for x in xs], [r["stage_seconds_per_step"].get("all_reduce", 0.0) * 1000 for r in recs],
           0.12, color="black", label="all-reduce (overlaps backward)")
    cpu = [(x, r["cpu_seconds_per_step"] * 1000) for x, r in zip(xs, recs) if r.get("cpu_seconds_per_step")]
    if cpu:
        ax.plot(*zip(*cpu), "kD", markersize=6, label="CPU time per step, worker process (all threads)")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([_label(r) for r in recs], fontsize=8)
    ax.set_ylabel("ms per step (wall, mean over workers)")
    ax.set_title("Per-stage wall time per step (sample = wait for the prefetched minibatch);\n"
                 "wall time includes waiting for a core on a loaded machine", fontsize=9)
    ax.set_ylim(0, max(bottom + [v for _, v in cpu]) * 1.45)  # room for the legend above the bars
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def _plot_locality(locality: list[dict], path: Path) -> bool:
    import matplotlib.pyplot as plt

    if not locality:
        return False
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method, style in (("metis", "o-"), ("random", "s--")):
        recs = sorted((r for r in locality if r["method"] == method), key=lambda r: r["num_parts"])
        if recs:
            ps = [r["num_parts"] for r in recs]
            a.plot(ps, [r["per_step"]["remote_seeds"] for r in recs], style, label=method)
            b.plot(ps, [r["per_step"]["pull_rows_remote"] for r in recs], style, label=method)
    a.set_title("remote sampled seeds per step (per trainer)", fontsize=9)
    b.set_title("remote PS rows pulled per step (per trainer)", fontsize=9)
    for ax in (a, b):
        ax.set_xlabel("partitions")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r["num_parts"] for r in locality}))
        ax.get_xaxis().set_major_formatter(plt.ScalarFormatter())
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    from distgnn.bench.scaling import _short

    fig.suptitle(f"Locality: METIS against random, {_short(locality[0]['interactions'])} interactions "
                 f"(hardware-independent counts)", fontsize=10)
    return _save(fig, path)


def _plot_projection(data: dict, path: Path) -> bool:
    import matplotlib.pyplot as plt

    proj = data.get("projection")
    if not proj:
        return False
    fig, ax = plt.subplots(figsize=(8.5, 5))
    rows = proj["rows"]
    combos = sorted({(r["bandwidth_gbit"], r["speedup"], r["placement"]) for r in rows})
    bws, speeds = sorted({c[0] for c in combos}), sorted({c[1] for c in combos})
    cmaps = [plt.get_cmap(n) for n in ("Blues", "Reds", "Greens", "Purples")]
    for bw, s, placement in combos:  # colour family: compute speed-up; shade: bandwidth; style: placement
        shade = 0.5 + 0.4 * bws.index(bw) / max(1, len(bws) - 1)
        color = cmaps[speeds.index(s) % len(cmaps)](shade)
        pts = sorted((r["nodes"], r["edges_per_s"]) for r in rows
                     if (r["bandwidth_gbit"], r["speedup"], r["placement"]) == (bw, s, placement))
        ax.plot(*zip(*pts), "o-" if placement == "random" else "s:", color=color,
                label=f"{bw:g} Gbit/s, compute x{s:g}, {placement} placement")
    dd = proj["distdgl"]
    ax.plot([dd["machines"]], [dd["seeds_per_s"]], "k*", markersize=12,
            label=f"DistDGL published: {dd['graph']} {dd['epoch_seconds']:g} s/epoch on {dd['machines']} "
                  f"machines (training seeds/s; another task)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("nodes (one worker each)")
    ax.set_ylabel("train edges/s (projected)")
    ax.set_xticks(sorted({r["nodes"] for r in rows}))
    ax.get_xaxis().set_major_formatter(plt.ScalarFormatter())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6.5)
    ax.set_title("MODEL, NOT A MEASUREMENT: projected from measured compute and bytes per step\n"
                 f"(input {proj['inputs']['from']}; network model in scaling.md)", fontsize=9, color="darkred")
    return _save(fig, path)


# --- markdown -------------------------------------------------------------------------------------
def markdown(data: dict[str, Any], locality: list[dict], pngs: list[str]) -> str:
    from distgnn.bench.scaling import _short

    s = data["settings"]
    cfg = s["config"]
    m, t = cfg["model"], cfg["train"]
    inv = data.get("invocations", [])
    lines = ["# Scaling sweep (`distgnn bench scaling`)", "",
             f"Command (last invocation): `{data['command']}`", "",
             f"Preset `{data['preset']}`; machine: {data['machine']['physical_cores']} physical cores, "
             f"{data['machine']['memory_bytes'] / 2**30:.0f} GiB. Training settings (every configuration): "
             f"batch {t['batch_size']}, fanouts {t['fanouts']}, {t['num_negatives']} negatives, dim {m['dim']}, "
             f"{m['layers']} GAT layers x {m['heads']} heads, {s['threads_per_worker']} thread per worker, "
             f"{s['steps']} steps per run, a train record every {s['log_every']} steps, the first excluded "
             f"(warm-up). Simulated nodes: one raylet each with {s['logical_cpus_per_node']} logical CPU, "
             f"head without CPUs.", ""]
    if inv:
        lines.append("Load averages (1, 5, 15 min) at start and end of each invocation: "
                     + "; ".join(f"{i.get('started', '?')}: {i.get('loadavg_start')} -> {i.get('loadavg_end')}"
                                 for i in inv) + ". Each record also carries the load when it finished.")
        lines.append("")

    def img(name: str, alt: str) -> None:
        if name in pngs:
            lines.extend([f"![{alt}]({name})", ""])

    # partition
    parts = sorted(_ok(data, "partition"), key=lambda r: r["interactions"])
    if parts:
        lines += [f"## Partitioning ({parts[0]['num_parts']} parts; `bench partition --sizes`, each side in its "
                  f"own process)", "",
                  "| interactions | distgnn: whole process (s) | distgnn: peak RSS (GiB) | distgnn: edge cut | "
                  "DGL: whole process (s) | DGL: peak RSS (GiB) | DGL: edge cut |", "|---|---|---|---|---|---|---|"]
        for r in parts:
            o, d = r["ours"], r.get("dgl")
            dgl = (f"{d['process_seconds']:.1f} | {_gib(d['peak_rss_bytes'])} | {d['edge_cut_fraction']:.4f}"
                   if d else f"{r.get('dgl_skipped', 'not run')} | |")
            lines.append(f"| {r['interactions']:,} | {o['process_seconds']:.1f} | {_gib(o['peak_rss_bytes'])} | "
                         f"{o['edge_cut_fraction']:.4f} | {dgl} |")
        lines.append("")
        img("scaling_partition.png", "partitioning time and peak RSS against interactions")

    # data scaling
    data_recs = sorted(_sweep(data, "data"), key=lambda r: r["interactions"])
    refs = {r["interactions"]: r for r in _ok(data, "reference")}
    if data_recs or refs:
        lines += ["## Data scaling", "",
                  "Ours: `distgnn train --backend ray`, workers on simulated nodes, per-worker edges/s. "
                  "Reference: the plain-DGL loop of `bench train` (`NeighborSampler`, `SparseAdam`, `GATConv`) "
                  "in one process with one thread, on the same partition directory and settings; it samples "
                  "and updates in memory, where each of our workers also samples the other partition "
                  "remotely and pulls/pushes rows through the parameter server.", "",
                  "| interactions | workers | edges/s, all workers | edges/s per worker | plain DGL edges/s | "
                  "ours per worker / DGL | CPU s/step | peak RSS (GiB): driver | worker (max) | graph shard (max) "
                  "| PS shard (max) | sum of processes | plain DGL process |",
                  "|---" * 13 + "|"]
        sizes = sorted({r["interactions"] for r in data_recs} | set(refs))
        by_n = {r["interactions"]: r for r in data_recs}
        for n in sizes:
            r, ref = by_n.get(n), refs.get(n)
            ratio = (f"{r['edges_per_s_per_worker'] / ref['edges_per_s']:.2f}x" if r and ref else "")
            pr = (r or {}).get("peak_rss_bytes") or {}
            lines.append(
                f"| {n:,} | {r['workers'] if r else ''} | {_num(r and r['edges_per_s'])} | "
                f"{_num(r and r['edges_per_s_per_worker'])} | {_num(ref and ref['edges_per_s'])} | {ratio} | "
                f"{_num(r and r['cpu_seconds_per_step'], '{:.3f}')} | {_gib(pr.get('driver'))} | "
                f"{_gib(pr.get('max_worker'))} | {_gib(pr.get('max_graph_shard'))} | {_gib(pr.get('max_ps_shard'))} | "
                f"{_gib(pr.get('total'))} | {_gib(ref and ref['peak_rss_bytes'])} |")
        lines += ["", "The sum of processes' peaks is an upper bound of the job's footprint: peaks need not "
                  "coincide, and shared pages (mapped partitions, PS rows in /dev/shm) count in every process "
                  "that touches them.", ""]
        img("scaling_data.png", "train edges/s per worker and peak RSS per process against interactions")

    # strong and weak
    if _sweep(data, "strong") or _sweep(data, "weak"):
        lines += ["## Strong and weak scaling", "",
                  f"Strong: {_short(data['plan']['fixed_size'])} interactions, 1 to "
                  f"{max(data['plan']['workers'])} workers. Weak: {_short(data['plan']['fixed_size'])} "
                  f"interactions per worker. One worker per simulated node, as many partitions (METIS) as "
                  f"workers. On {data['machine']['physical_cores']} cores more workers cannot go faster in "
                  f"wall-clock, and with more workers than cores wall-clock stage times include waiting for "
                  f"a core; what transfers is CPU seconds per step, bytes per step and the remote shares.", "",
                  "| sweep | interactions | workers | edges/s | per worker | wall s/step | CPU s/step: worker "
                  "| CPU s/step: fwd+bwd+dense | PS MiB/step local | PS MiB/step remote | sampling MiB/step "
                  "remote | remote share: PS pull rows | remote share: sampled seeds | partitions trained on "
                  "their shards' node |",
                  "|---" * 14 + "|"]
        for sweep in ("strong", "weak"):
            for r in _sweep(data, sweep):
                b = r["bytes_per_step"]
                pl = r.get("placement") or {}
                lines.append(
                    f"| {sweep} | {r['interactions']:,} | {r['workers']} | {r['edges_per_s']:,.0f} | "
                    f"{r['edges_per_s_per_worker']:,.0f} | {r['step_seconds']:.3f} | "
                    f"{_num(r['cpu_seconds_per_step'], '{:.3f}')} | "
                    f"{_num(r.get('compute_cpu_seconds_per_step'), '{:.3f}')} | "
                    f"{(b['ps_pull_local'] + b['ps_push_local']) / 2**20:.2f} | "
                    f"{(b['ps_pull_remote'] + b['ps_push_remote']) / 2**20:.2f} | {b['sample_remote'] / 2**20:.2f} | "
                    f"{_num(r['remote_fraction']['pull_rows'], '{:.3f}')} | "
                    f"{_num(r['remote_fraction']['sample_seeds'], '{:.3f}')} | "
                    f"{pl.get('parts_on_worker_node', '')}/{pl.get('num_parts', '')} |")
        lines.append("")
        img("scaling_workers.png", "strong and weak scaling")

    # stages
    trains = sorted(_ok(data, "train"), key=lambda r: (r["workers"], r["interactions"]))
    if trains:
        cols = ("sample", "pull", "forward", "backward", "push", "dense_step", "all_reduce",
                "sample_local", "sample_remote")
        lines += ["## Per-stage time per step (ms, wall, mean over workers)", "",
                  "`sample` is the wait for the prefetched minibatch; `sample_local`/`sample_remote` are the "
                  "sampling thread's own time (off the critical path while it keeps ahead); `all_reduce` "
                  "overlaps `backward`.", "",
                  "| configuration | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for r in trains:
            st = r["stage_seconds_per_step"]
            lines.append(f"| {_label(r)} | " + " | ".join(f"{st.get(c, 0.0) * 1000:.1f}" for c in cols) + " |")
        lines.append("")
        img("scaling_stages.png", "per-stage time per step")

    # locality
    if locality:
        lines += ["## Locality: METIS against random", "",
                  "`bench locality`: the trainer's sampling and pull path for every partition's trainer, "
                  f"{data['settings']['locality_steps']} minibatches each; counts per step per trainer "
                  "(hardware-independent).", "",
                  "| partitions | method | edge cut | remote seeds/step | local seeds/step | remote edges/step | "
                  "remote PS rows/step | local PS rows/step | remote share: seeds | remote share: PS rows |",
                  "|---" * 10 + "|"]
        for r in sorted(locality, key=lambda r: (r["num_parts"], r["method"])):
            p = r["per_step"]
            lines.append(f"| {r['num_parts']} | {r['method']} | {r['edge_cut_fraction']:.4f} | "
                         f"{p['remote_seeds']:,.0f} | {p['local_seeds']:,.0f} | {p['remote_edges']:,.0f} | "
                         f"{p['pull_rows_remote']:,.0f} | {p['pull_rows_local']:,.0f} | "
                         f"{_num(r['remote_fraction']['sample_seeds'], '{:.3f}')} | "
                         f"{_num(r['remote_fraction']['pull_rows'], '{:.3f}')} |")
        lines.append("")
        img("scaling_locality.png", "remote sampled seeds and PS rows per step against partitions")

    # projection
    proj = data.get("projection")
    if proj:
        from distgnn.bench import scaling as sc

        i = proj["inputs"]
        lines += ["## Projection to 8-128 nodes: a MODEL, not a measurement", "",
                  f"Input: the measured run `{i['from']}` (per worker and step: forward + backward + dense step "
                  f"{i['compute_seconds_per_step'] * 1000:.1f} ms of CPU time, the worker's other CPU work "
                  f"{i['host_seconds_per_step'] * 1000:.1f} ms, {i['ps_bytes_per_step'] / 2**20:.2f} MiB "
                  f"to/from the PS and "
                  f"{i['sample_bytes_per_step'] / 2**20:.2f} MiB of sampling per step, local and remote "
                  f"together; {i['dense_params']:,} dense parameters; batch {i['batch_size']}).", "",
                  "Model, for N nodes with one worker each, per-node bandwidth bw and compute speed-up S over "
                  "one core of this machine (S = 10 stands for a GPU node: an assumption):", "",
                  "```",
                  "T(N) = CPU s in forward + backward + dense / S + the worker's other CPU s (not sped up)",
                  "     + r(N) x bytes per step / bw          (sent + received; no overlap with compute)",
                  f"     + (layers + 2) x {sc.ROUND_TRIP_S * 1000:g} ms               "
                  "(round trips: one per hop, pull, push)",
                  f"     + 2 (N-1)/N x 4 B x dense params / bw + 2 (N-1) x {sc.ALLREDUCE_ALPHA_S * 1e6:g} us   "
                  "(ring all-reduce)",
                  "edges/s = N x batch / T(N)",
                  "```", "",
                  "r(N) is the remote share of those bytes: (N-1)/N for random placement (an upper bound), or the "
                  "METIS share measured at the largest partition count, held for larger N (optimistic: a cut "
                  "grows with N). Full bisection bandwidth, no congestion.", "",
                  "Projected train edges/s, all nodes together (compute xS: S = 10 is the assumed GPU node):", ""]
        rows = proj["rows"]
        combos = sorted({(r["bandwidth_gbit"], r["speedup"], r["placement"]) for r in rows},
                        key=lambda c: (c[1], c[0], c[2] != "random", c[2]))
        lines += ["| nodes | " + " | ".join(f"{bw:g} Gbit/s, x{sp:g}, {pl}" for bw, sp, pl in combos) + " |",
                  "|---" * (len(combos) + 1) + "|"]
        for n in sorted({r["nodes"] for r in rows}):
            cell = {(r["bandwidth_gbit"], r["speedup"], r["placement"]): r for r in rows if r["nodes"] == n}
            lines.append(f"| {n} | " + " | ".join(f"{cell[c]['edges_per_s']:,.0f}" for c in combos) + " |")
        lines += ["", "Where a step's time goes in the model (random placement):", "",
                  "| nodes | Gbit/s | compute x | step (ms) | CPU work (ms) | network (ms) | all-reduce (ms) "
                  "| edges/s per node |", "|---" * 8 + "|"]
        for r in sorted((r for r in rows if r["placement"] == "random"),
                        key=lambda r: (r["nodes"], r["speedup"], r["bandwidth_gbit"])):
            lines.append(f"| {r['nodes']} | {r['bandwidth_gbit']:g} | {r['speedup']:g} | "
                         f"{r['step_seconds'] * 1000:.1f} | {r['compute_seconds'] * 1000:.1f} | "
                         f"{r['comm_seconds'] * 1000:.1f} | {r['allreduce_seconds'] * 1000:.2f} | "
                         f"{r['edges_per_s_per_node']:,.0f} |")
        dd = proj["distdgl"]
        lines += ["", f"DistDGL's published figure (not run here): {dd['graph']} at about {dd['epoch_seconds']:g} s "
                  f"per epoch on {dd['machines']} machines, {dd['task']}; an epoch is {dd['train_seeds']:,} "
                  f"training nodes, so about {dd['seeds_per_s']:,} seeds/s, {dd['seeds_per_s_per_machine']:,} per "
                  "machine. Our unit is a training interaction (a positive edge with its negatives, GAT over a "
                  "2-hop sample), theirs a labelled node (3-hop GraphSAGE): compare orders of magnitude, "
                  "not a ratio.", ""]
        img("scaling_projection.png", "projected throughput against nodes (a model)")

    bad = [r for r in data["records"] if r["status"] != "ok"]
    if bad:
        lines += ["## Not measured", ""]
        lines += [f"- `{r['key']}`: {r['status']}: {r.get('reason', '')}" for r in bad]
        lines.append("")
    return "\n".join(lines) + "\n"
