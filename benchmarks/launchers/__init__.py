"""What the benchmarks and the tests start or bind, and nothing else: a `ctrt serve` subprocess
(server_process.ServerProcess), a redis-server (redis_server.RedisServer), a local Ray cluster
(ray_cluster.RayCluster) and the native library through ctypes (native.NativeEngine,
NativeSession). Installed with the package: `ctrt bench --serve/--ray` and the native bench
use them."""
