"""For the shared-store and Ray tests: a real redis-server (benchmarks/launchers/redis_server.py:
Debian's package, which `.ci/run` installs, on 127.0.0.1 on a free port, appendfsync always,
stopped by its owner) that skips or fails (support.rules) when the binary is missing, a
stream's record in a Redis store, the memory a local Ray cluster's processes hold and a
`ctrt serve --ray` waited for (the cluster itself: benchmarks/launchers/ray_cluster.py)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx

from compressive_rt.benchmarks.launchers.redis_server import RedisServer as _RedisServer
from support.rules import need_binary

READY_DEADLINE_S = 300  # Ray and Serve start in tens of seconds; minutes on a loaded machine


class RedisServer(_RedisServer):
    def __init__(self, *args, **kwargs) -> None:
        need_binary("redis-server", "redis-server")
        super().__init__(*args, **kwargs)


def stream_record(url: str, stream_id: str) -> dict[str, str]:
    """A stream's record in a Redis store of one engine's streams (serving/redis_store.py's
    `s:{id}` hash in that engine's namespace): its version, position, snapshot_position and
    holder, as text."""
    import redis

    from compressive_rt.serving.redis_namespaces import PREFIX

    client = redis.Redis.from_url(url)
    try:
        [key] = client.keys(f"{PREFIX}ns:*:s:{stream_id}")
        return {field.decode(): value.decode() for field, value in client.hgetall(key).items()}
    finally:
        client.close()


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


def wait_ready(server: subprocess.Popen, url: str, log: Path) -> None:
    """Until `ctrt serve --ray` (the subprocess `server`, writing to `log`) answers /ready."""
    deadline = time.monotonic() + READY_DEADLINE_S
    while True:
        assert server.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.5)
