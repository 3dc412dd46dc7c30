"""A local Ray cluster with Serve on 127.0.0.1 and its redis-server, for `ctrt bench --ray` and
the Ray tests; everything shut down at the end."""

from __future__ import annotations

from pathlib import Path

from compressive_rt.benchmarks.launchers.redis_server import RedisServer
from compressive_rt.benchmarks.launchers.server_process import free_port

OBJECT_STORE_BYTES = 200 << 20  # per node: a snapshot (15 MiB at the default config) at a time


class RayCluster:
    """A local Ray cluster (ray.cluster_utils): a head with no CPUs for replicas (Serve's
    controller, proxy on 127.0.0.1 and routers run there) and two nodes of `cpus` CPUs each,
    one redis-server (appendfsync always), the applications `deploy`ed on them; everything
    shut down at the end (a context manager). The tests use it too."""

    def __init__(self, work: Path, cpus: int) -> None:
        self.work, self.cpus, self.port = work, cpus, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cluster = self.redis = None

    def __enter__(self) -> RayCluster:
        import ray
        from ray import serve
        from ray.cluster_utils import Cluster

        from compressive_rt.serving.ray_server import patient_proxies

        self.redis = RedisServer(self.work / "redis_ray").start()
        patient_proxies()  # the nodes below inherit this environment
        try:
            self.cluster = Cluster(initialize_head=True, head_node_args={
                "num_cpus": 0, "include_dashboard": False,
                "object_store_memory": OBJECT_STORE_BYTES})
            for _ in range(2):
                self.cluster.add_node(num_cpus=self.cpus, object_store_memory=OBJECT_STORE_BYTES)
            ray.init(address=self.cluster.address, logging_level="WARNING",
                     log_to_driver=False)
            serve.start(proxy_location="HeadOnly",
                        http_options={"host": "127.0.0.1", "port": self.port})
        except BaseException:
            self.__exit__()
            raise
        return self

    def deploy(self, name: str, deployment: object, prefix: str) -> None:
        from ray import serve

        from compressive_rt.serving.ray_app import build_app

        serve.run(build_app(deployment), name=name, route_prefix=prefix)

    def __exit__(self, *exc_info: object) -> None:
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
