"""Connecting to Ray, checking its resources, and waiting on remote work with deadlines.

Rules this module enforces for the whole Ray runtime:

- ``connect(None)`` starts a private, embedded Ray instance (never silently attaches to whatever
  cluster ``/tmp/ray`` or ``RAY_ADDRESS`` points at), with token authentication on and no
  dashboard. ``connect("auto")`` / ``connect("HOST:PORT")`` / ``connect("ray://HOST:PORT")``
  attach to an existing cluster and either succeed or raise one ``UserError`` line within the
  deadline (a TCP probe first, then ``ray.init`` on a watchdog thread), never hang.
- Every wait on remote work goes through ``get_with_deadline``/``wait_ready``: a timeout or a dead
  actor becomes a ``RayCallError`` that names what was waited for and the deadline.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from distgnn.errors import RayCallError, StaleGenerationError, UserError  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT_S = 30.0
DEFAULT_CALL_TIMEOUT_S = 120.0
AUTH_MODE_ENV = "RAY_AUTH_MODE"


# --- connecting ---------------------------------------------------------------------------------
def _no_cluster(address: str, why: str) -> UserError:
    return UserError(f"no Ray cluster at {address}: {why}; start one with 'ray start --head' "
                     f"or omit --address")


def _split_host_port(addr: str) -> tuple[str, int] | None:
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _probe(address: str, host: str, port: int, timeout_s: float) -> None:
    """A TCP connect to the cluster's port: fails in milliseconds (refused) or at the deadline."""
    try:
        with socket.create_connection((host, port), timeout=max(0.1, timeout_s)):
            pass
    except socket.timeout:
        raise _no_cluster(address, f"nothing answered on {host}:{port} within {timeout_s:g}s")
    except OSError as exc:
        raise _no_cluster(address, f"cannot reach {host}:{port} ({exc.strerror or exc})")


class _NoThreadSignalWarning(logging.Filter):
    """Drops Ray's "SIGTERM handler is not set because current thread is not the main thread",
    which ``ray.init`` on our watchdog thread prints on every ``--address`` run: the handler
    would only make SIGTERM end the driver, which it does anyway, and the line would precede the
    one error line a refused connection must be."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


def _init_with_deadline(shown: str, timeout_s: float, **kwargs) -> Any:
    """``ray.init`` on a daemon thread, so a cluster that accepts TCP but never answers cannot
    hang the caller past the deadline."""
    ray_worker_log = logging.getLogger("ray._private.worker")
    if not any(isinstance(f, _NoThreadSignalWarning) for f in ray_worker_log.filters):
        ray_worker_log.addFilter(_NoThreadSignalWarning())
    import ray

    box: dict[str, Any] = {}

    def run():
        try:
            box["ctx"] = ray.init(**kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["exc"] = exc

    t = threading.Thread(target=run, name="distgnn-ray-connect", daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        raise _no_cluster(shown, f"it did not complete the connection within {timeout_s:.3g}s")
    if "exc" in box:
        exc = box["exc"]
        msg = " ".join(str(exc).split())
        low = msg.lower()
        if "token" in low and ("no authentication token" in low or "not found" in low):
            raise UserError(f"the Ray cluster at {shown} uses token authentication and this machine "
                            f"has no token: set RAY_AUTH_TOKEN to the cluster's token, or "
                            f"RAY_AUTH_TOKEN_PATH to a file holding it (on the head node: "
                            f"'ray get-auth-token')")
        if "auth" in low or "token" in low:
            raise UserError(f"the Ray cluster at {shown} refused the connection ({msg[:200]}); "
                            f"it uses token authentication: set RAY_AUTH_TOKEN or "
                            f"RAY_AUTH_TOKEN_PATH to its token")
        raise _no_cluster(shown, msg[:300] or type(exc).__name__)
    return box["ctx"]


# glibc gives every thread that allocates its own malloc arena (up to 8 per core), and memory a
# minibatch's tensors leave in one arena is not reused by another: a training worker (training
# thread + prefetch thread + Ray's threads) grew from 2.5 GB to 4.7 GB private over 440 steps of
# the 100M run (BENCHMARKS.md). Two arenas bound that. A value the user exported wins.
WORKER_MALLOC_ARENA_MAX = "2"


def worker_env() -> dict[str, str]:
    """Environment variables of every process of the job (Ray's job-level ``runtime_env``)."""
    return {"MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", WORKER_MALLOC_ARENA_MAX)}


def workload_env() -> dict[str, str]:
    """Environment variables of the job's own workload processes: the training workers and the
    graph and parameter-server shards they wait on (their ``runtime_env``).

    Ray lowers every worker process it starts to niceness 15 (its ``worker_niceness`` setting),
    below the driver, the raylet and every other user's process. On a shared machine the training
    worker then got a small fraction of the cores any nice-0 process competed for: with another
    training job on the same 2 cores, the Ray worker of ``bench overhead`` ran at a fifth of the
    local trainer's speed, and on a quiet machine it lost a few percent to Ray's own processes
    (docs/architecture.md D34). ``RAY_worker_niceness=0`` keeps these processes at the niceness the
    cluster was started with, as Ray's own job supervisor does; Ray's helper actors keep 15."""
    return {"RAY_worker_niceness": "0"}


def connect(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None,
            timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S, log_to_driver: bool = True,
            namespace: str = "distgnn", object_store_memory: int | None = None) -> dict:
    """Start or join a Ray cluster; returns ``{"address", "embedded", "session_dir"}``.

    ``address=None``: a new local embedded instance with ``num_cpus`` CPUs (default: all),
    token authentication on, dashboard off. ``"auto"``, ``"HOST:PORT"``: join the cluster whose
    GCS is there; ``"ray://HOST:PORT"``: join through Ray Client. ``num_cpus``/``num_gpus`` only
    apply to an embedded instance. Calling again while connected returns the current connection.
    """
    import ray

    if ray.is_initialized():
        return _describe(embedded=None)

    common = dict(namespace=namespace, log_to_driver=log_to_driver, logging_level=logging.WARNING,
                  configure_logging=True, runtime_env={"env_vars": worker_env()})
    if address in (None, "", "local"):
        # Keep Ray's token authentication on for the cluster we start (Ray >= 2.5x turns it on by
        # default when RAY_AUTH_MODE is unset; setting it explicitly also silences the warning).
        mode = os.environ.get(AUTH_MODE_ENV)
        if mode is not None and mode.lower() != "token":
            log.warning("ignoring %s=%s: distgnn keeps Ray token authentication on", AUTH_MODE_ENV, mode)
        if mode != "token":
            os.environ[AUTH_MODE_ENV] = "token"
            try:  # Ray caches its config at import: refresh it (what ray.init does for its default)
                from ray._raylet import Config
                Config.initialize("")
            except Exception:  # noqa: BLE001 - then Ray's own default (token on) applies
                pass
        try:
            ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                     object_store_memory=object_store_memory, **common)
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"cannot start a local Ray instance: {' '.join(str(exc).split())[:300]}")
        return _describe(embedded=True)

    deadline = time.monotonic() + timeout_s
    if address == "auto":
        env = os.environ.get("RAY_ADDRESS")
        target = env if env else None
        if target is None:
            from ray._private import services

            try:
                target = services.canonicalize_bootstrap_address("auto")
            except Exception as exc:  # noqa: BLE001
                raise _no_cluster("auto", " ".join(str(exc).split())[:200])
            if target is None:
                raise _no_cluster("auto", "no running Ray instance was found on this machine")
        address_shown = f"auto ({target})"
    else:
        target = address
        address_shown = address
    is_client = target.startswith("ray://")
    hp = _split_host_port(target[len("ray://"):] if is_client else target)
    if hp is None:
        raise UserError(f"--address {address!r} is not 'auto', 'HOST:PORT' or 'ray://HOST:PORT'")
    _probe(address_shown, hp[0], hp[1], min(5.0, max(0.1, deadline - time.monotonic())))
    if is_client:
        try:
            import grpc  # noqa: F401
        except ImportError:
            raise UserError(f"--address {address} uses Ray Client, which needs the 'ray[client]' "
                            f"extra (grpcio); install it, or run on the head node with "
                            f"--address auto / 'ray job submit'")
    _init_with_deadline(address_shown, max(0.1, deadline - time.monotonic()), address=target, **common)
    return _describe(embedded=False)


def _describe(embedded: bool | None) -> dict:
    import ray

    info = {"address": None, "embedded": embedded, "session_dir": None}
    try:
        ctx = ray.get_runtime_context()
        info["address"] = getattr(ctx, "gcs_address", None)
        node = getattr(ray._private.worker, "_global_node", None)
        if node is not None:
            info["session_dir"] = node.get_session_dir_path()
    except Exception:  # noqa: BLE001 - descriptive only
        pass
    return info


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


# --- resources ----------------------------------------------------------------------------------
def check_resources(num_workers: int, cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0,
                    extra_cpus: float = 0.0) -> dict:
    """Raise a ``UserError`` naming what is missing if ``num_workers`` workers cannot all be placed.

    Counts the cluster's total CPUs/GPUs and also how many workers fit node by node (a worker
    cannot span nodes). ``extra_cpus``: CPUs needed besides the workers (e.g. a trainer
    coordinator). Returns the totals and per-node fit."""
    import ray

    if num_workers < 1:
        raise UserError(f"--num-workers must be at least 1 (got {num_workers})")
    nodes = [n for n in ray.nodes() if n.get("Alive", n.get("alive", False))]
    cpus = [float(n.get("Resources", {}).get("CPU", 0.0)) for n in nodes]
    gpus = [float(n.get("Resources", {}).get("GPU", 0.0)) for n in nodes]
    total_cpu, total_gpu = sum(cpus), sum(gpus)
    need_cpu = num_workers * cpus_per_worker + extra_cpus
    need_gpu = num_workers * gpus_per_worker

    def n(x: float) -> str:
        return f"{x:g}"

    asked = f"asked for {num_workers} workers x {n(cpus_per_worker)} CPU"
    if gpus_per_worker:
        asked += f" + {n(gpus_per_worker)} GPU"
    if total_gpu < need_gpu:
        raise UserError(f"{asked}, the cluster has {n(total_gpu)} GPUs; lower --num-workers or "
                        f"--gpus-per-worker, or add GPU nodes")
    if total_cpu < need_cpu:
        extra = f" (+{n(extra_cpus)} for the driver side)" if extra_cpus else ""
        raise UserError(f"{asked}{extra}, the cluster has {n(total_cpu)} CPUs; lower --num-workers")
    fit = 0
    for c, g in zip(cpus, gpus):
        k = int(c // cpus_per_worker) if cpus_per_worker > 0 else num_workers
        if gpus_per_worker > 0:
            k = min(k, int(g // gpus_per_worker))
        fit += k
    if fit < num_workers:
        raise UserError(f"{asked}: the cluster has enough in total but only {fit} such workers fit "
                        f"on its nodes (largest node: {n(max(cpus, default=0))} CPUs, "
                        f"{n(max(gpus, default=0))} GPUs); lower --num-workers or the per-worker request")
    return {"total_cpus": total_cpu, "total_gpus": total_gpu, "nodes": len(nodes), "workers_fit": fit}


# --- actor generations ---------------------------------------------------------------------------
def actor_restarts() -> int:
    """How many times Ray has restarted the calling actor (0 in its first incarnation): the actor's
    generation. Read from the GCS actor table, as Ray's own ``was_current_actor_reconstructed``
    does (it only says whether the count is non-zero); the GCS counts every restart, after a
    process crash or a lost node, so each incarnation gets a number of its own."""
    import ray
    from ray._private.state import actors

    info = actors(actor_id=ray.get_runtime_context().get_actor_id())
    return int(info.get("NumRestarts", 0)) if info else 0


def actor_state(actor) -> tuple[str, int]:
    """(state, restarts) of ``actor`` from the GCS actor table, without calling it (a call would
    queue behind a restarting actor's constructor): ``("ALIVE", 1)``, ``("RESTARTING", 1)``..."""
    from ray._private.state import actors

    info = actors(actor_id=actor._actor_id.hex())
    return (str(info.get("State", "UNKNOWN")), int(info.get("NumRestarts", 0))) if info else ("UNKNOWN", 0)


# --- deadlines ----------------------------------------------------------------------------------
def get_with_deadline(refs, timeout_s: float, what: str, names: Sequence[str] | None = None):
    """``ray.get`` with a deadline; timeouts and dead actors become one-line ``RayCallError``s.

    ``what`` says what was waited for ("pull from parameter-server shards"); with a list of refs,
    ``names`` (one per ref, e.g. "PSShard 1") lets the error say which ones missed the deadline."""
    import ray
    from ray.exceptions import (GetTimeoutError, ObjectLostError, OutOfMemoryError, RayActorError,
                                RayError, RayTaskError)

    try:
        return ray.get(refs, timeout=timeout_s)
    except GetTimeoutError:
        late = ""
        if names is not None and isinstance(refs, (list, tuple)):
            _, not_ready = ray.wait(list(refs), num_returns=len(refs), timeout=0)
            pending = set(not_ready)
            late = " (" + ", ".join(n for r, n in zip(refs, names) if r in pending) + ")"
        raise RayCallError(f"{what}{late} did not answer within the {timeout_s:g}s deadline") from None
    except RayActorError as exc:
        who = _failed_name(refs, names)
        why = " ".join(str(exc).split())[:300]
        raise RayCallError(f"{what}{who} died or is unreachable (deadline {timeout_s:g}s): {why}") from exc
    except ObjectLostError as exc:
        raise RayCallError(f"{what}{_failed_name(refs, names)}: its result was lost "
                           f"({type(exc).__name__}); the node holding it may have died") from exc
    except RayTaskError as exc:
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        if isinstance(cause, UserError):
            raise cause from None
        if isinstance(cause, StaleGenerationError):  # fencing: the caller must roll back, says which
            raise StaleGenerationError(f"{what}{_failed_name(refs, names)}: {cause}") from None
        first = " ".join(str(cause).split())[:300]
        raise RayCallError(f"{what}{_failed_name(refs, names)} failed: "
                           f"{type(cause).__name__}: {first}") from exc
    except OutOfMemoryError as exc:
        raise RayCallError(f"{what}{_failed_name(refs, names)}: Ray killed a worker because the node "
                           f"ran out of memory; free memory on the node, or use more nodes or "
                           f"partitions") from exc
    except RayError as exc:  # any other Ray failure: still one line, never a traceback
        why = " ".join(str(exc).split())[:300]
        raise RayCallError(f"{what}{_failed_name(refs, names)} failed: {type(exc).__name__}: {why}") from exc


def _failed_name(refs, names) -> str:
    import ray

    if names is None or not isinstance(refs, (list, tuple)):
        return ""
    bad = []
    for r, n in zip(refs, names):
        try:
            ray.get(r, timeout=0)
        except Exception:  # noqa: BLE001 - finding which one failed
            bad.append(n)
    return f" ({', '.join(bad)})" if bad else ""


def wait_ready(actors: Sequence, timeout_s: float, what: str) -> None:
    """Wait until every actor's constructor finished (``__ray_ready__``), with a deadline."""
    refs = [a.__ray_ready__.remote() for a in actors]
    get_with_deadline(refs, timeout_s, what)


def placement_group(bundles: list[dict[str, float]], strategy: str = "PACK",
                    timeout_s: float = DEFAULT_CALL_TIMEOUT_S, name: str = ""):
    """A placement group whose reservation must succeed within the deadline (else a UserError)."""
    from ray.util.placement_group import placement_group as _pg, remove_placement_group

    pg = _pg(bundles, strategy=strategy, name=name)
    import ray
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(pg)
        raise UserError(f"could not reserve {len(bundles)} bundles {bundles[0] if bundles else ''} "
                        f"({strategy}) within {timeout_s:g}s: the cluster lacks the resources; "
                        f"lower --num-workers or the per-worker request")
    return pg


def bundle_strategy(pg, index: int):
    """The scheduling strategy placing an actor in bundle ``index`` of ``pg``."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=index)


# Ray 2.60 ignores a *soft* node affinity for an actor that requests no resources at all: six
# 0-CPU actors asked for three nodes of a ray.cluster_utils.Cluster landed on the asked node 1, 2
# and 4 times in three tries; with a token 'memory' request, 6 of 6 every time (D30). So a
# placed 0-CPU shard asks for this much logical memory, which reserves nothing real.
AFFINITY_TOKEN_BYTES = 2**20


def node_strategy(node_id: str, soft: bool = False):
    """The scheduling strategy placing an actor on the node ``node_id`` (co-location). Give the
    actor ``placement_options`` with it: a soft affinity is otherwise not honoured."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=soft)


def placement_options(strategy) -> dict:
    """Actor options for ``strategy``: the strategy itself and, for a node affinity, the token
    memory request that makes Ray honour it (``AFFINITY_TOKEN_BYTES``)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if strategy is None:
        return {}
    opts = {"scheduling_strategy": strategy}
    if isinstance(strategy, NodeAffinitySchedulingStrategy):
        opts["memory"] = AFFINITY_TOKEN_BYTES
    return opts


# --- logs ---------------------------------------------------------------------------------------
def logs_dir() -> Path | None:
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    if node is None:
        return None
    try:
        return Path(node.get_logs_dir_path())
    except Exception:  # noqa: BLE001
        return None


def tail_worker_logs(max_bytes_per_file: int = 4000, since: float = 0.0,
                     patterns: Sequence[str] = ("worker-*.err", "worker-*.out"),
                     d: Path | None = None) -> str:
    """The ends of the Ray workers' (actors' and tasks') stdout/stderr files of this session (or of
    the log directory ``d``) that changed after ``since`` (a ``time.time()``), for error reports
    and failing tests."""
    d = d or logs_dir()
    if d is None or not d.is_dir():
        return "(no Ray session logs on this machine)"
    out = []
    for pat in patterns:
        for f in sorted(d.glob(pat)):
            try:
                st = f.stat()
                if st.st_size == 0 or st.st_mtime < since:
                    continue
                with open(f, "rb") as fh:
                    fh.seek(max(0, st.st_size - max_bytes_per_file))
                    text = fh.read().decode("utf-8", "replace")
            except OSError:
                continue
            out.append(f"--- {f.name} ---\n{text}")
    return "\n".join(out) if out else f"(no worker output in {d})"
