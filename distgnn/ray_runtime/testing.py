"""Test support: attach the Ray workers' stdout/stderr to the report of every failing test.

Usage in a test module (no conftest needed)::

    @pytest.fixture(scope="module")
    def ray_cluster(request):
        with ray_for_tests(request, num_cpus=2) as info:
            yield info
"""
from __future__ import annotations

import contextlib
import time

import pytest

from distgnn.ray_runtime import cluster


class RayLogsOnFailure:
    """A pytest plugin object: on a failed test phase, adds a 'ray worker logs' section holding
    the tails of the worker log files written since the test started (``logs_dir``: a cluster's
    log directory; default: the connected session's)."""

    def __init__(self, logs_dir=None):
        self.started = time.time()
        self.logs_dir = logs_dir

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        if report.when == "setup":
            self.started = time.time() - 1.0
        if report.failed:
            time.sleep(0.5)  # let the workers' last lines reach their files
            report.sections.append(("ray worker logs (stdout/stderr of actors and tasks)",
                                    cluster.tail_worker_logs(since=self.started, d=self.logs_dir)))


@contextlib.contextmanager
def ray_for_tests(request, num_cpus: int = 2):
    """A local embedded Ray instance for one test module, with the log plugin registered."""
    plugin = RayLogsOnFailure()
    request.config.pluginmanager.register(plugin, f"ray-logs-{id(plugin)}")
    info = cluster.connect(None, num_cpus=num_cpus, log_to_driver=True)
    try:
        yield info
    finally:
        cluster.shutdown()
        request.config.pluginmanager.unregister(plugin)


@contextlib.contextmanager
def multi_node_cluster(request, nodes: int = 3, cpus_per_node: int = 1,
                       object_store_bytes: int = 80 * 2**20, health_check_period_ms: int = 1000):
    """A Ray cluster of ``nodes`` raylets on this machine (``ray.cluster_utils.Cluster``; the
    first is the head, where the driver and Ray Train's controller run), for tests that lose a
    node. The GCS checks raylets every ``health_check_period_ms`` and declares one dead after 3
    missed checks, so a killed node is noticed in seconds. Not connected: pass ``address`` to
    ``launch.job.run`` (or ``--address``). Failing tests get the tails of all nodes' worker logs."""
    from ray.cluster_utils import Cluster

    head = dict(num_cpus=cpus_per_node, object_store_memory=object_store_bytes, include_dashboard=False,
                _system_config={"health_check_period_ms": health_check_period_ms,
                                "health_check_failure_threshold": 3,
                                "health_check_initial_delay_ms": 1000})
    c = Cluster(initialize_head=True, head_node_args=head)
    plugin = None
    try:
        for _ in range(nodes - 1):
            c.add_node(num_cpus=cpus_per_node, object_store_memory=object_store_bytes)
        c.wait_for_nodes()
        from pathlib import Path

        plugin = RayLogsOnFailure(Path(c.head_node.get_logs_dir_path()))
        request.config.pluginmanager.register(plugin, f"ray-logs-{id(plugin)}")
        yield c
    finally:
        c.shutdown()
        if plugin is not None:
            request.config.pluginmanager.unregister(plugin)


def make_partitions(out_dir, layouts=((2, "metis"),), interactions: int = 20000, seed: int = 0) -> dict:
    """Generated logs partitioned several ways: ``{(num_parts, method): partition_dir}``."""
    from pathlib import Path

    from distgnn.gen import generate
    from partition.pipeline import CreateOptions, create

    out = Path(out_dir)
    generate(out / "logs", interactions=interactions, seed=seed, progress=False)
    dirs = {}
    for num_parts, method in layouts:
        d = out / f"p{num_parts}-{method}"
        create(CreateOptions(train=str(out / "logs" / "train"), test=str(out / "logs" / "test"),
                             out=str(d), num_parts=num_parts, method=method, seed=seed, progress=False))
        dirs[(num_parts, method)] = d
    return dirs
