"""A redis-server of its own (Debian's package) for the benchmarks and the tests: on 127.0.0.1
on a free port, in a directory given, append-only with the fsync policy asked for
(`appendfsync always` by default: what the shared store's durability contract needs), and
stopped by its owner."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from compressive_rt.benchmarks.launchers.server_process import free_port
from compressive_rt.benchmarks.settings import BenchError

STARTUP_S = 30.0


class RedisServer:
    """`redis-server` in `directory`; `url` reaches it. `password` sets requirepass; `tls` =
    (certificate, key) serves TLS only (rediss://); `fsync` is appendfsync."""

    def __init__(self, directory: Path, password: str | None = None,
                 tls: tuple[Path, Path] | None = None, fsync: str = "always") -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise BenchError("redis-server is not installed (Debian: apt-get install "
                            "redis-server)")
        self.directory = directory.resolve()  # redis-server changes into it before its log
        self.password, self.tls, self.fsync = password, tls, fsync
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

    def start(self) -> RedisServer:
        import redis

        self.process = subprocess.Popen([self.binary, *self.arguments()],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        options = {"ssl_cert_reqs": "none"} if self.tls else {}
        client = redis.Redis.from_url(self.url, **options)
        deadline = time.monotonic() + STARTUP_S
        try:
            while True:
                try:
                    if client.ping():
                        return self
                except redis.exceptions.BusyLoadingError:
                    pass
                except redis.exceptions.ConnectionError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        self.stop()
                        raise BenchError(f"redis-server did not start:\n{self.log()}") from None
                time.sleep(0.05)
        finally:
            client.close()

    def aof_bytes(self) -> int:
        """The size of its append-only files (what its fsyncs have written)."""
        return sum(path.stat().st_size for path in self.directory.rglob("*.aof*")
                   if path.is_file())

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self) -> None:
        """kill -9: what is not fsync'ed is lost."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
