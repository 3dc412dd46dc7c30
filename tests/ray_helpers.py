"""For the Ray tests: Ray itself (the `ray` extra; missing on a developer machine it skips,
under CI=true it fails), a local multi-node cluster (ray.cluster_utils.Cluster) serving the
deployment on a Redis store, always shut down by its owner, and the memory its processes hold."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from redis_helpers import RedisServer
from serving_helpers import free_port

OBJECT_STORE_BYTES = 100 << 20  # per node: the tests move a few MiB at a time


def need_ray() -> None:
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError as exc:
        reason = f"Ray Serve is not installed ({exc}): pip install -e '.[ray]'"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def tree_rss_bytes(root: int) -> int:
    """Resident bytes of `root` and every process below it (Ray's nodes and workers)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            pages = int((entry / "statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        rss[int(entry.name)] = pages * os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total


class LocalCluster:
    """A head node (the Serve controller, proxy and router: no CPUs for replicas) and
    `workers` nodes of `cpus` CPUs each, a redis-server, and the deployment on them."""

    def __init__(self, directory: Path, workers: int = 2, cpus: int = 1) -> None:
        self.directory, self.workers, self.cpus = directory, workers, cpus
        self.cluster = self.redis = None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, deployment_of) -> LocalCluster:
        """`deployment_of(redis_url)` -> the RayDeployment to serve."""
        import ray
        from ray import serve
        from ray.cluster_utils import Cluster

        from compressive_rt.serving.ray_app import APP_NAME, build_app

        self.redis = RedisServer(self.directory / "redis").start()
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "include_dashboard": False,
            "object_store_memory": OBJECT_STORE_BYTES})
        for _ in range(self.workers):
            self.cluster.add_node(num_cpus=self.cpus, object_store_memory=OBJECT_STORE_BYTES)
        ray.init(address=self.cluster.address, logging_level="WARNING")
        serve.start(proxy_location="HeadOnly",
                    http_options={"host": "127.0.0.1", "port": self.port})
        self.deployment = deployment_of(self.redis.url)
        serve.run(build_app(self.deployment), name=APP_NAME)
        return self

    def stop(self) -> None:
        import ray
        from ray import serve

        try:
            if ray.is_initialized():
                serve.shutdown()
                ray.shutdown()
        finally:
            if self.cluster is not None:
                self.cluster.shutdown()
            if self.redis is not None:
                self.redis.stop()
