"""A real redis-server for the tests: Debian's package (`.ci/run` installs it), started on
127.0.0.1 on a free port in a directory of the test's, append-only with `appendfsync always`
(the setting the store's durability contract needs), always stopped by its owner. Missing on
a developer machine: the test skips with the reason; under CI=true it fails."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis
from serving_helpers import free_port

STARTUP_S = 30.0


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        reason = "redis-server is not installed (Debian: apt-get install redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return found


class RedisServer:
    """`redis-server` in `directory`; `url` reaches it. `password` sets requirepass; `tls` =
    (certificate, key) serves TLS only (rediss://)."""

    def __init__(self, directory: Path, password: str | None = None,
                 tls: tuple[Path, Path] | None = None, fsync: str = "always") -> None:
        self.binary = redis_server_binary()
        self.directory, self.password, self.tls, self.fsync = directory, password, tls, fsync
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        scheme = "rediss" if tls else "redis"
        auth = f":{password}@" if password else ""
        self.url = f"{scheme}://{auth}127.0.0.1:{self.port}/0"

    def arguments(self) -> list[str]:
        options = ["--bind", "127.0.0.1", "--dir", str(self.directory), "--appendonly", "yes",
                   "--appendfsync", self.fsync, "--save", "", "--daemonize", "no",
                   "--logfile", str(self.directory / "redis.log")]
        if self.tls:
            certificate, key = self.tls
            options += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file",
                        str(certificate), "--tls-key-file", str(key), "--tls-auth-clients", "no"]
        else:
            options += ["--port", str(self.port)]
        if self.password:
            options += ["--requirepass", self.password]
        return options

    def client_options(self) -> dict:
        return {"ssl_cert_reqs": "none"} if self.tls else {}

    def start(self) -> RedisServer:
        self.process = subprocess.Popen([self.binary, *self.arguments()],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url, **self.client_options())
        deadline = time.monotonic() + STARTUP_S
        while True:
            try:
                if client.ping():
                    client.close()
                    return self
            except redis.exceptions.BusyLoadingError:
                pass
            except redis.exceptions.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server did not start:\n{self.log()}") from None
            time.sleep(0.05)

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self) -> None:
        """kill -9: what is not fsync'ed is lost."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def pause(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
