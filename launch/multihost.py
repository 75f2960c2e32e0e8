"""Two real hosts on one machine, from Linux namespaces: train on both, then lose one (issue #11).

``ray.cluster_utils.Cluster`` runs several raylets in one set of namespaces: they share ``/dev/shm``,
``/tmp``, the network stack and the process table, so a per-node bug (a cleanup that only covers
the driver's node, a shared-memory file read from the wrong node, a port or path two nodes both
assume is theirs) cannot show there. This script builds two hosts that share only what two
machines of a cluster share, a filesystem path holding the partitions and the run directory:

- each host is a process tree in its own network, mount, PID and UTS namespaces
  (``unshare --net --mount --pid --uts --fork --mount-proc``), with its own hostname;
- each has a private ``/dev/shm`` (a tmpfs of its own) and a private ``/tmp`` (a scratch
  directory of its own bound over it, so Ray's session directory and logs are per host), and
  ``HOME`` inside that scratch, so no Ray token file is shared by accident;
- the hosts talk over a veth pair each, joined by a bridge in the machine's namespace, a switch
  (10.77.0.1 = host ``a``, the head; 10.77.0.2 = host ``b``). Losing ``b`` removes only ``b``'s
  cable;
- Ray runs with token authentication; the token is given to both hosts and to the driver in
  ``RAY_AUTH_TOKEN``, as on a real cluster (docs/training.md, "Token on an existing cluster").

Then, on generated data (2 partitions, METIS):

1. a driver without the token is refused, with one line;
2. **reference run**: ``distgnn train --backend ray --num-workers 2 --address 10.77.0.1:6379`` from
   host ``a``: one training worker, one GraphShard and one PS shard on each host. While it runs,
   ``b``'s ``/dev/shm`` holds its PS shard's rows and ``a``'s does not hold ``b``'s; after it
   ends, neither host's ``/dev/shm`` holds anything of ours (per-node cleanup);
3. **node-loss run**: the same command; once the second epoch is under way, host ``b`` is killed
   whole (SIGKILL to its PID namespace's init: every process of it, raylet and object store
   included, and its network cable goes with it). The job must finish on host ``a`` alone: its
   actors re-placed there, one ``fault`` record naming the lost node, and a final Recall@20 within
   0.005 of the reference run's.

Needs root (namespaces, mounts, veth), ``unshare``, ``nsenter`` and ``ip``. Every wait has a
deadline; on failure the tails of both hosts' Ray logs and the drivers' output are printed.
Exit 0 when every check passed, 1 when one failed, 2 when it cannot run here.

Example::

    sudo make test-multihost                      # = python -m launch.multihost --workdir multihost_out
    python -m launch.multihost --workdir /var/tmp/mh --interactions 200000 --json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distgnn import atomic

SUBNET = "10.77.0"
BRIDGE = "dgmh-br"
RAY_PORT = 6379
SHM_SIZE = "3g"
OBJECT_STORE_BYTES = 1_000_000_000
STEP_DEADLINE_S = 120.0
TRAIN_DEADLINE_S = 900.0
RECALL_BOUND = 0.005
REPO = Path(__file__).resolve().parents[1]

# PID 1 of a host's PID namespace: reaps the orphans Ray's daemons leave (Ray double-forks its
# raylet and GCS, which are re-parented to it) and otherwise sleeps. Killing it kills the host.
_REAPER = ("import os, time\n"
           "while True:\n"
           "    try:\n"
           "        os.wait()\n"
           "    except ChildProcessError:\n"
           "        time.sleep(0.2)\n")

# What runs first inside a new host: its name, private /dev/shm and /tmp, the cluster's names
# (gloo, like most of a cluster's software, finds its own address by resolving the hostname),
# then the reaper.
_HOST_INIT = r'''set -e
hostname "$DGMH_NAME"
mount -t tmpfs -o size="$DGMH_SHM" tmpfs /dev/shm
mount --bind "$DGMH_SCRATCH" /tmp
mount --bind "$DGMH_HOSTS" /etc/hosts
mkdir -p /tmp/home
exec "$DGMH_PY" -c "$DGMH_REAPER"
'''


class MultihostError(Exception):
    """A check failed or a step did not finish in time (exit 1)."""


class CannotRun(Exception):
    """This machine cannot build the hosts (exit 2): not root, a tool missing."""


def sh(cmd: list[str], timeout: float = 60, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """A command in the machine's own namespaces, with a deadline."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as exc:
        raise MultihostError(f"{' '.join(cmd)} did not finish within {timeout:g}s") from exc
    if check and p.returncode != 0:
        raise MultihostError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
    return p


@dataclass
class Host:
    """One simulated machine: a namespace set whose init is ``pid`` (in the machine's PID space)."""

    name: str
    ip: str
    scratch: Path
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    pid: int | None = None
    alive: bool = False
    node_id: str | None = None
    logs: list[Path] = field(default_factory=list)

    def start(self, timeout_s: float = 30) -> None:
        self.scratch.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "DGMH_NAME": f"distgnn-{self.name}", "DGMH_SHM": SHM_SIZE,
               "DGMH_SCRATCH": str(self.scratch), "DGMH_HOSTS": str(self.scratch.parent / "hosts"),
               "DGMH_PY": sys.executable, "DGMH_REAPER": _REAPER}
        self.proc = subprocess.Popen(
            ["unshare", "--net", "--mount", "--pid", "--uts", "--fork", "--mount-proc",
             "--propagation", "private", "bash", "-c", _HOST_INIT],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CannotRun(f"host {self.name}: unshare exited {self.proc.returncode}: "
                                f"{(self.proc.stderr.read() or '').strip()[-500:]}")
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            with contextlib.suppress(OSError):
                kids = children.read_text().split()
                if kids:
                    pid = int(kids[0])
                    # ready once the init has exec'd the reaper (the mounts are then in place)
                    if "os.wait" in Path(f"/proc/{pid}/cmdline").read_text():
                        self.pid, self.alive = pid, True
                        return
            time.sleep(0.05)
        raise MultihostError(f"host {self.name} did not come up within {timeout_s:g}s")

    def cmd(self, args: list[str]) -> list[str]:
        """``args`` run inside this host (its network, mounts, PIDs and hostname), from the repo."""
        return ["nsenter", "--target", str(self.pid), "--net", "--mount", "--pid", "--uts",
                f"--wd={REPO}", "--", "env", *[f"{k}={v}" for k, v in self.env.items()], *args]

    def run(self, args: list[str], timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        return sh(self.cmd(args), timeout=timeout, check=check)

    def popen(self, args: list[str], log: Path) -> subprocess.Popen:
        self.logs.append(log)
        f = open(log, "w")
        return subprocess.Popen(self.cmd(args), stdout=f, stderr=subprocess.STDOUT, text=True)

    def ours_in_shm(self) -> list[str]:
        """Our shared-memory entries in this host's private /dev/shm."""
        out = self.run(["ls", "-1", "/dev/shm"], timeout=20).stdout.split()
        return [n for n in out if n.startswith(atomic.SHM_PREFIX)]

    def kill(self) -> None:
        """The host dies at once: SIGKILL to its PID namespace's init kills every process in it;
        its network namespace, and with it its veth cable, go with the last of them."""
        if self.pid and self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.alive = False
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)

    def ray_log_tails(self, lines: int = 30) -> str:
        logs = self.scratch / "ray" / "session_latest" / "logs"
        out = []
        for name in ("raylet.out", "gcs_server.out"):
            p = logs / name
            if p.is_file():
                tail = p.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- host {self.name}: {name} (last {len(tail)} lines)\n" + "\n".join(tail))
        for p in sorted(logs.glob("worker-*.err"))[-4:] if logs.is_dir() else []:
            tail = p.read_text(errors="replace").splitlines()[-lines:]
            if tail:
                out.append(f"--- host {self.name}: {p.name}\n" + "\n".join(tail))
        return "\n".join(out)


class Network:
    """A bridge in the machine's namespace (the switch) and one veth cable per host."""

    def __init__(self) -> None:
        self.links: list[str] = []

    def up(self) -> None:
        self.down()  # leftovers of an earlier run that was killed: ours by name
        sh(["ip", "link", "add", BRIDGE, "type", "bridge"])
        sh(["ip", "link", "set", BRIDGE, "up"])

    def plug(self, host: Host) -> None:
        inner, outer = f"dgmh-{host.name}", f"dgmh-{host.name}-br"
        sh(["ip", "link", "add", inner, "type", "veth", "peer", "name", outer])
        self.links.append(outer)
        sh(["ip", "link", "set", outer, "master", BRIDGE])
        sh(["ip", "link", "set", outer, "up"])
        sh(["ip", "link", "set", inner, "netns", str(host.pid)])
        for args in (["ip", "link", "set", "lo", "up"], ["ip", "addr", "add", f"{host.ip}/24", "dev", inner],
                     ["ip", "link", "set", inner, "up"]):
            sh(["nsenter", "--target", str(host.pid), "--net", "--", *args])

    def down(self) -> None:
        for name in [*self.links, "dgmh-a-br", "dgmh-b-br", BRIDGE]:
            sh(["ip", "link", "del", name], check=False)
        self.links = []


def _ray(host: Host, args: list[str], timeout: float = 120) -> None:
    ray_bin = str(Path(sys.executable).with_name("ray"))
    host.run([ray_bin, "start", *args, f"--node-ip-address={host.ip}", "--num-cpus=2",
              f"--object-store-memory={OBJECT_STORE_BYTES}", "--disable-usage-stats"], timeout=timeout)


def _nodes(host: Host, timeout: float = 60) -> list[dict]:
    code = ("import json, ray\n"
            f"ray.init(address='{SUBNET}.1:{RAY_PORT}', logging_level='ERROR', log_to_driver=False)\n"
            "print(json.dumps([{'id': n['NodeID'], 'ip': n['NodeManagerAddress'], 'alive': n['Alive']}"
            " for n in ray.nodes()]))\n")
    out = host.run([sys.executable, "-c", code], timeout=timeout).stdout.strip().splitlines()
    return json.loads(out[-1])


def _wait_for_nodes(head: Host, hosts: list[Host], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    seen: list[dict] = []
    while time.monotonic() < deadline:
        seen = [n for n in _nodes(head) if n["alive"]]
        if len(seen) == len(hosts):
            by_ip = {n["ip"]: n["id"] for n in seen}
            for h in hosts:
                h.node_id = by_ip[h.ip]
            return
        time.sleep(1)
    raise MultihostError(f"the cluster has {len(seen)} alive nodes after {timeout_s:g}s, "
                         f"expected {len(hosts)}")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "distgnn.cli", *args]


def _prepare_data(shared: Path, interactions: int) -> Path:
    """Generated logs -> 2 METIS partitions with a validation split, on the path both hosts read."""
    data, parts = shared / "data", shared / "parts"
    sh(_cli("gen", "--interactions", str(interactions), "--communities", "8", "--seed", "0",
            "--out", str(data), "--overwrite"), timeout=300)
    sh(_cli("partition", "create", "--train", str(data / "train"), "--test", str(data / "test"),
            "--valid-fraction", "0.1", "--num-parts", "2", "--method", "metis", "--out", str(parts),
            "--overwrite"), timeout=300)
    return parts


# configs/demo.yaml's model, with reproducible pushes (a rollback then replays exactly), no
# validation (the final checkpoint is compared) and a train record per step, so the loss can be
# placed inside the second epoch
CONFIG = REPO / "configs" / "demo.yaml"
BATCH = 512
TRAIN_SETS = ["train.epochs=3", "train.eval_every=0", "train.patience=0", "train.threads=1",
              "train.log_every=1", f"train.batch_size={BATCH}", "train.progress=false",
              "embedding.ordered_pushes=true"]


def _train_args(cfg: Path, parts: Path, run: Path) -> list[str]:
    args = _cli("train", "--config", str(cfg), "--partitions", str(parts), "--backend", "ray",
                "--num-workers", "2", "--address", f"{SUBNET}.1:{RAY_PORT}", "--out", str(run),
                "--overwrite")
    for s in TRAIN_SETS:
        args += ["--set", s]
    return args


def _train_steps(run: Path) -> int:
    from distgnn.metrics import read_metrics

    return max((r["step"] for r in read_metrics(run).of_type("train")), default=0)


def _wait(proc: subprocess.Popen, timeout_s: float, what: str, log: Path) -> int:
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise MultihostError(f"{what} did not finish within {timeout_s:g}s; its output: {log}") from None


def _recall(run: Path) -> float:
    p = sh(_cli("evaluate", "--run", str(run), "--json"), timeout=300)
    return float(json.loads(p.stdout)["recall@20"])


def _tail(p: Path, n: int = 40) -> str:
    return "\n".join(p.read_text(errors="replace").splitlines()[-n:]) if p.is_file() else ""


MARKER = ".distgnn-multihost"


def claim_workdir(workdir: Path) -> None:
    """Make ``workdir`` ours, or refuse: each run deletes the hosts' scratch directories and the
    earlier runs under it, so it must never be a directory holding someone else's files. A new or
    empty directory gets our marker; one that has the marker is an earlier run's."""
    if workdir.exists() and not workdir.is_dir():
        raise CannotRun(f"--workdir {workdir} is a file; give a new or empty directory")
    if workdir.is_dir() and any(workdir.iterdir()) and not (workdir / MARKER).is_file():
        raise CannotRun(f"--workdir {workdir} holds files launch.multihost did not write (no {MARKER}); "
                        f"give a new or empty directory")
    workdir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(workdir / MARKER, "written by python -m launch.multihost; safe to delete with this directory\n")


def run(workdir: Path, interactions: int) -> dict[str, Any]:
    from distgnn import checkpoint as ckpt
    from distgnn import format as fmt
    from distgnn.metrics import read_metrics
    from distgnn.ray_runtime import faults
    from distgnn.ray_runtime.worker import steps_per_epoch

    workdir = workdir.resolve()
    claim_workdir(workdir)
    shared = workdir / "shared"
    shared.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(32)
    env = {"HOME": "/tmp/home", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
           "PYTHONUNBUFFERED": "1"}
    hosts = [Host("a", f"{SUBNET}.1", workdir / "host-a", dict(env)),
             Host("b", f"{SUBNET}.2", workdir / "host-b", dict(env))]
    a, b = hosts
    for h in hosts:  # a fresh scratch per run: a host's /tmp starts empty, like a new machine
        if h.scratch.exists():
            shutil.rmtree(h.scratch)
    for old in shared.glob("run-*"):  # an earlier run's metrics would be read as this run's progress
        shutil.rmtree(old)
    atomic.write_text(workdir / "hosts", "127.0.0.1 localhost\n" + "".join(
        f"{h.ip} distgnn-{h.name}\n" for h in hosts))
    result: dict[str, Any] = {"checks": {}, "hosts": {h.name: h.ip for h in hosts}}
    checks = result["checks"]
    net = Network()
    t0 = time.monotonic()
    try:
        print("data: generating and partitioning (2 parts, METIS) ...", flush=True)
        parts, cfg = _prepare_data(shared, interactions), CONFIG
        steps = steps_per_epoch(fmt.load_manifest(parts), BATCH, 2)
        result["steps_per_epoch"] = steps

        print("hosts: namespaces, private /dev/shm and /tmp, a bridge and two veth cables ...", flush=True)
        net.up()
        for h in hosts:
            h.start()
            net.plug(h)
        _ray(a, ["--head", f"--port={RAY_PORT}", "--include-dashboard=false"])
        _ray(b, [f"--address={a.ip}:{RAY_PORT}"])
        _wait_for_nodes(a, hosts)
        result["node_ids"] = {h.name: h.node_id for h in hosts}
        print(f"cluster: head {a.ip} (node {a.node_id[:8]}), worker {b.ip} (node {b.node_id[:8]}); "
              f"token authentication on", flush=True)

        # 1. no token, no job: one line, exit 2, nothing written
        bare = Host("a", a.ip, a.scratch, {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}, pid=a.pid)
        p = bare.run(_train_args(cfg, parts, shared / "run-no-token"), timeout=120, check=False)
        err = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
        checks["driver without the token refused (exit 2, one line)"] = (
            p.returncode == 2 and len(err) == 1 and "token" in err[0]
            and not (shared / "run-no-token").exists())
        result["no_token_stderr"] = err

        # 2. the reference run, across both hosts
        ref = shared / "run-reference"
        log = workdir / "driver-reference.log"
        print("reference run: 2 workers over 2 hosts ...", flush=True)
        t = time.monotonic()
        proc = a.popen(_train_args(cfg, parts, ref), log)
        shm_b_during: list[str] = []
        shm_a_during: list[str] = []
        files_b: list[str] = []
        deadline = time.monotonic() + TRAIN_DEADLINE_S
        while proc.poll() is None and time.monotonic() < deadline:
            if not shm_b_during and _train_steps(ref) >= 2:
                shm_b_during, shm_a_during = b.ours_in_shm(), a.ours_in_shm()
                files_b = [f for d in shm_b_during for f in
                           b.run(["ls", "-1", f"/dev/shm/{d}"], timeout=20, check=False).stdout.split()]
            time.sleep(0.2)
        rc = _wait(proc, max(1.0, deadline - time.monotonic()), "the reference run", log)
        result["reference_seconds"] = round(time.monotonic() - t, 1)
        if rc != 0:
            raise MultihostError(f"the reference run failed ({rc}):\n{_tail(log)}")
        layout = faults.read_layout(ref) or {}
        ranks_on = sorted({r["node_id"] for r in layout.get("ranks", [])})
        shards_on = sorted({s["node_id"] for key in ("ps", "graph") for s in layout.get(key, [])})
        result["reference_layout"] = layout
        checks["reference: a training worker on each host"] = ranks_on == sorted([a.node_id, b.node_id])
        checks["reference: shards on each host"] = shards_on == sorted([a.node_id, b.node_id])
        result["shm_during"] = {"a": shm_a_during, "b": shm_b_during, "b_files": files_b}
        checks["reference: host b's PS shard keeps its rows in b's own /dev/shm"] = bool(files_b)
        checks["reference: nothing of ours in the machine's /dev/shm"] = not any(
            n.startswith(atomic.SHM_PREFIX) for n in os.listdir("/dev/shm")
            if n in set(shm_a_during) | set(shm_b_during))
        after = {h.name: h.ours_in_shm() for h in hosts}
        result["shm_after"] = after
        checks["reference: both hosts' /dev/shm clean after the job"] = not any(after.values())
        ref_recall = _recall(ref)
        result["reference_recall@20"] = ref_recall

        # 3. the node-loss run: host b dies in the second epoch
        lost = shared / "run-node-lost"
        log = workdir / "driver-node-lost.log"
        kill_at = steps + max(2, steps // 3)
        print(f"node-loss run: host b dies at step {kill_at} ({steps} steps per epoch) ...", flush=True)
        t = time.monotonic()
        proc = a.popen(_train_args(cfg, parts, lost), log)
        deadline = time.monotonic() + TRAIN_DEADLINE_S
        killed_at = None
        before = None
        while proc.poll() is None and time.monotonic() < deadline:
            reached = _train_steps(lost)
            if killed_at is None and reached >= kill_at:
                before = faults.read_layout(lost)
                b.kill()
                killed_at = reached
                result["killed_at"] = {"step": reached, "seconds": round(time.monotonic() - t, 1)}
                print(f"  host b killed at step {reached}", flush=True)
            time.sleep(0.1)
        rc = _wait(proc, max(1.0, deadline - time.monotonic()), "the node-loss run", log)
        result["node_lost_seconds"] = round(time.monotonic() - t, 1)
        if killed_at is None:
            raise MultihostError(f"the node-loss run ended (rc {rc}) before step {kill_at}:\n{_tail(log)}")
        if rc != 0:
            raise MultihostError(f"the node-loss run failed ({rc}) after host b was lost:\n{_tail(log)}")
        after_layout = faults.read_layout(lost) or {}
        result["layout_before"], result["layout_after"] = before, after_layout
        placed = {r["node_id"] for r in after_layout.get("ranks", [])} | {
            s["node_id"] for key in ("ps", "graph") for s in after_layout.get(key, [])}
        checks["node loss: the job finished every epoch"] = (
            ckpt.read_meta(ckpt.latest(lost))["epoch"] == 3)
        checks["node loss: every actor re-placed on host a"] = placed == {a.node_id}
        moved = []
        for key in ("ps", "graph"):
            for p_, (old, new) in enumerate(zip((before or {}).get(key, []), after_layout.get(key, []))):
                if old["node_id"] == b.node_id:
                    moved.append(new["generation"] > old["generation"])
        checks["node loss: b's shards restarted under a new generation"] = bool(moved) and all(moved)
        recs = read_metrics(lost).of_type("fault")
        result["faults"] = recs
        checks["node loss: one fault record naming the lost node"] = (
            len(recs) == 1 and f"node {b.node_id[:8]} was lost" in recs[0].get("what", ""))
        printed = [ln for ln in log.read_text(errors="replace").splitlines() if "recovered" in ln or "fault" in ln]
        result["driver_fault_lines"] = printed[-3:]
        lost_recall = _recall(lost)
        result["node_lost_recall@20"] = lost_recall
        result["recall_delta"] = round(abs(lost_recall - ref_recall), 6)
        checks[f"node loss: Recall@20 within {RECALL_BOUND} of the reference"] = (
            result["recall_delta"] <= RECALL_BOUND)
        result["shm_after_loss"] = {"a": a.ours_in_shm()}
        checks["node loss: host a's /dev/shm clean after the job"] = not result["shm_after_loss"]["a"]
    except MultihostError:
        for h in hosts:
            print(h.ray_log_tails(), file=sys.stderr)
        raise
    finally:
        for h in hosts:
            if h.alive:
                h.run([str(Path(sys.executable).with_name("ray")), "stop", "--force"], timeout=120,
                      check=False)
            h.kill()
        net.down()
        result["seconds"] = round(time.monotonic() - t0, 1)
    result["passed"] = all(checks.values())
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m launch.multihost", description=__doc__.split("\n\n")[0],
        epilog="example:\n  sudo python -m launch.multihost --workdir multihost_out\n\n"
               "Builds two namespace hosts (private /dev/shm, /tmp, network; a shared path for the "
               "partitions and runs), trains across them, then kills one host mid-epoch and checks "
               "the job finishes on the other with the same Recall@20. Needs root.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("multihost_out"),
                    help="shared path: data, partitions, runs, and each host's scratch (default: %(default)s)")
    ap.add_argument("--interactions", type=int, default=200_000, help="generated interactions (default: %(default)s)")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = ap.parse_args(argv)
    if args.interactions < 20_000:
        ap.error(f"--interactions {args.interactions} is too few for an epoch long enough to lose a "
                 f"host in; give at least 20000")
    try:
        if os.geteuid() != 0:
            raise CannotRun("it needs root (namespaces, mounts, veth); run it as root or with sudo")
        for tool in ("unshare", "nsenter", "ip"):
            if shutil.which(tool) is None:
                raise CannotRun(f"'{tool}' is not installed (util-linux / iproute2)")
        result = run(args.workdir, args.interactions)
    except CannotRun as exc:
        print(f"launch.multihost: error: cannot build the hosts here: {exc}", file=sys.stderr)
        return 2
    except MultihostError as exc:
        print(f"launch.multihost: FAILED: {exc}", file=sys.stderr)
        return 1
    atomic.write_json(args.workdir / "result.json", result)
    if args.json:
        print(json.dumps(result))
    else:
        for name, ok in result["checks"].items():
            print(f"  {'PASS' if ok else 'FAIL'}  {name}")
        print(f"Recall@20: reference {result['reference_recall@20']:.4f}, after losing host b "
              f"{result['node_lost_recall@20']:.4f} (delta {result['recall_delta']:.4f}); "
              f"{result['seconds']:.0f} s; details in {args.workdir / 'result.json'}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
