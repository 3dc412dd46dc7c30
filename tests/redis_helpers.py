"""A real redis-server for the tests (benchmarks/launchers/redis_server.py: Debian's package, which
`.ci/run` installs, on 127.0.0.1 on a free port, appendfsync always, stopped by its owner).
Missing on a developer machine, the test skips with the reason; under CI=true it fails."""

from __future__ import annotations

import os
import shutil

import pytest

from compressive_rt.benchmarks.launchers.redis_server import RedisServer as _RedisServer


def need_binary(name: str, package: str) -> None:
    if shutil.which(name) is None:
        reason = f"{name} is not installed (Debian: apt-get install {package})"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


class RedisServer(_RedisServer):
    def __init__(self, *args, **kwargs) -> None:
        need_binary("redis-server", "redis-server")
        super().__init__(*args, **kwargs)


def stream_record(url: str, stream_id: str) -> dict[str, str]:
    """A stream's record in a Redis store (serving/redis_store.py's `s:{id}` hash): its
    version, position, snapshot_position and holder, as text."""
    import redis

    from compressive_rt.serving.redis_store import PREFIX

    client = redis.Redis.from_url(url)
    try:
        return {key.decode(): value.decode()
                for key, value in client.hgetall(f"{PREFIX}s:{stream_id}").items()}
    finally:
        client.close()
