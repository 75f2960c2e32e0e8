"""``distgnn doctor``: can this install train, and on what?

Prints one line per fact (torch, DGL and CUDA versions; whether DGL can run on the GPU; Ray's view
of the cluster; ``/dev/shm`` space) and one line of advice per problem. Problems come in two
kinds: *broken* (training cannot run: torch or DGL fails to import, DGL's message passing fails
on the CPU, Ray cannot start or join the cluster) makes the exit code 1; *warning* (no GPU, a
torch with CUDA but a CPU-only DGL, a small ``/dev/shm``) leaves it 0, since a CPU-only machine
trains fine.

Every check runs real code (a 2-node GATConv step on the CPU, and on the GPU when there is one;
a Ray instance started for the check and shut down after it), because a version string alone
does not say that the installed wheels work together.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass, field

SHM_PATH = "/dev/shm"
SHM_MIN_BYTES = 2 * 1024 ** 3  # Ray's object store and the PS shards' shared rows live here


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "doctor", help="check the install: torch/DGL/CUDA versions, GPU support, Ray, /dev/shm",
        description="Prints the torch, DGL and CUDA versions, whether DGL can use the GPU, Ray's "
                    "view of the cluster and /dev/shm space, with one line of advice per problem. "
                    "Exit 0 when this install can train (CPU-only included), 1 when it is broken.")
    p.add_argument("--address", help="Ray cluster to inspect ('auto', HOST:PORT or ray://HOST:PORT); "
                                     "default: start a local Ray instance for the check")
    p.add_argument("--skip-ray", action="store_true", help="do not start or join Ray")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=run)


@dataclass
class Report:
    facts: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)  # (severity, what, advice)

    def broken(self, what: str, advice: str) -> None:
        self.problems.append(("broken", what, advice))

    def warn(self, what: str, advice: str) -> None:
        self.problems.append(("warning", what, advice))

    @property
    def ok(self) -> bool:
        return not any(sev == "broken" for sev, _, _ in self.problems)


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:200]


def _gat_step(device: str) -> None:
    """One forward/backward of DGL's GATConv on a 2-node graph on ``device``: SpMM, SDDMM and
    edge softmax, the kernels training runs."""
    import dgl
    import torch
    from dgl.nn import GATConv

    g = dgl.graph(([0, 1], [1, 0]), num_nodes=2).to(device)
    conv = GATConv(4, 2, 2).to(device)
    out = conv(g, torch.ones(2, 4, device=device, requires_grad=True))
    out.sum().backward()
    if not torch.isfinite(out).all():
        raise RuntimeError("GATConv produced non-finite values")


def check_torch_dgl(rep: Report) -> bool:
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - any import failure is the finding
        rep.broken(f"torch does not import ({_one_line(exc)})",
                   "reinstall the pinned torch: pip install -e . (see README 'Install')")
        return False
    rep.facts["torch"] = torch.__version__
    rep.facts["torch_cuda"] = torch.version.cuda or "none (CPU build)"
    try:
        import dgl
    except Exception as exc:  # noqa: BLE001
        rep.broken(f"DGL does not import ({_one_line(exc)})",
                   "install the DGL wheel built for this torch (README 'Install'); DGL 2.1 needs torch 2.2")
        return False
    rep.facts["dgl"] = dgl.__version__
    try:
        _gat_step("cpu")
        rep.facts["dgl_cpu"] = "ok"
    except Exception as exc:  # noqa: BLE001
        rep.facts["dgl_cpu"] = "failed"
        rep.broken(f"DGL's GATConv fails on the CPU ({_one_line(exc)})",
                   "DGL and torch do not match: install the DGL wheel for torch "
                   f"{torch.__version__.split('+')[0]} (README 'Install')")
        return False
    return True


def check_gpu(rep: Report) -> None:
    import torch

    if not torch.cuda.is_available():
        rep.facts["cuda_devices"] = 0
        rep.facts["dgl_gpu"] = "no (no CUDA device visible to torch)"
        rep.warn("no CUDA device: training runs on the CPU (train.device: auto picks cpu)",
                 "for GPU training install a CUDA build of torch and DGL (README 'GPU') "
                 "on a machine with an NVIDIA driver")
        return
    rep.facts["cuda_devices"] = torch.cuda.device_count()
    rep.facts["cuda_device_0"] = torch.cuda.get_device_name(0)
    try:
        _gat_step("cuda")
        rep.facts["dgl_gpu"] = "yes"
    except Exception as exc:  # noqa: BLE001
        rep.facts["dgl_gpu"] = "no"
        rep.warn(f"torch sees {torch.cuda.device_count()} GPU(s) but DGL cannot use them "
                 f"({_one_line(exc)})",
                 f"install DGL's CUDA {torch.version.cuda} wheel (README 'GPU'); until then "
                 f"use train.device=cpu and no --gpus-per-worker")


def check_shm(rep: Report) -> None:
    try:
        usage = shutil.disk_usage(SHM_PATH)
    except OSError as exc:
        rep.warn(f"{SHM_PATH} is not available ({_one_line(exc)})",
                 "Ray falls back to /tmp for its object store (slower); mount a tmpfs at /dev/shm")
        return
    gib = 1024 ** 3
    rep.facts["shm_free_gib"] = round(usage.free / gib, 2)
    rep.facts["shm_total_gib"] = round(usage.total / gib, 2)
    if usage.free < SHM_MIN_BYTES:
        rep.warn(f"{SHM_PATH} has {usage.free / gib:.2f} GiB free (under {SHM_MIN_BYTES / gib:.0f} GiB)",
                 "the Ray backend keeps its object store and the parameter-server rows there: in "
                 "Docker pass --shm-size=8g (or more), elsewhere free or enlarge the tmpfs")


def check_ray(rep: Report, address: str | None) -> None:
    from distgnn.errors import UserError

    try:
        import ray
    except Exception as exc:  # noqa: BLE001
        rep.broken(f"Ray does not import ({_one_line(exc)})", "reinstall the pinned ray: pip install -e .")
        return
    rep.facts["ray"] = ray.__version__
    from distgnn.ray_runtime import cluster

    t = time.perf_counter()
    was_connected = ray.is_initialized()
    try:
        info = cluster.connect(address, log_to_driver=False)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        res = ray.cluster_resources()
        rep.facts["ray_cluster"] = ("local instance started for this check" if info.get("embedded")
                                    else f"joined {info.get('address') or address}")
        rep.facts["ray_nodes"] = len(nodes)
        rep.facts["ray_cpus"] = res.get("CPU", 0)
        rep.facts["ray_gpus"] = res.get("GPU", 0)
        rep.facts["ray_object_store_gib"] = round(res.get("object_store_memory", 0) / 1024 ** 3, 2)
        rep.facts["ray_seconds"] = round(time.perf_counter() - t, 1)
        if address and not res.get("CPU"):
            rep.broken("the Ray cluster has no CPUs to place workers on",
                       "add worker nodes (ray start --address ...) or check the head's --num-cpus")
    except (UserError, Exception) as exc:  # noqa: BLE001 - UserError says what to fix; anything else too
        what = str(exc) if isinstance(exc, UserError) else _one_line(exc)
        rep.broken(f"Ray: {what}",
                   "check --address (or start one: ray start --head)" if address
                   else "Ray cannot start here: check /dev/shm space and that no firewall blocks "
                        "local ports; 'ray start --head' shows Ray's own error")
    finally:
        if not was_connected:
            cluster.shutdown()


def run(args: argparse.Namespace) -> int:
    rep = Report()
    rep.facts["python"] = sys.version.split()[0]
    if check_torch_dgl(rep):
        check_gpu(rep)
    check_shm(rep)
    if not args.skip_ray:
        check_ray(rep, args.address)
    rep.facts["can_train"] = rep.ok
    if args.json:
        print(json.dumps({"facts": rep.facts, "problems": [
            {"severity": s, "problem": w, "advice": a} for s, w, a in rep.problems]}))
    else:
        width = max(len(k) for k in rep.facts)
        for k, v in rep.facts.items():
            print(f"{k:<{width}} : {v}")
        for sev, what, advice in rep.problems:
            print(f"{sev}: {what}\n  advice: {advice}")
        print("this install can train" + (" (CPU only)" if rep.facts.get("dgl_gpu") != "yes" else "")
              if rep.ok else "this install cannot train: fix the problems marked 'broken' above")
    sys.stdout.flush()
    return 0 if rep.ok else 1
