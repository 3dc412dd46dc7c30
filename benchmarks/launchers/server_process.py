"""A `ctrt serve` subprocess on 127.0.0.1 on a free port, for the benchmarks and the tests:
started until /ready, stopped by SIGTERM (then kill -9) or killed outright."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from compressive_rt.benchmarks.settings import BenchError

READY_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`ctrt serve ENGINE --port P --store STORE ...` in a subprocess on 127.0.0.1 on a free
    port (`ctrt`: that executable; default: this Python's `-m compressive_rt.cli.main`).
    `start` waits for /ready; as a context manager it stops the server at the end (SIGTERM,
    then SIGKILL if it does not stop). Its output goes to a log file beside the store."""

    def __init__(self, engine_dir: Path, store: Path, *options: str, threads: int = 1,
                 ctrt: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = store.parent / f"{store.name}.{self.port}.log"
        program = [str(ctrt)] if ctrt else [sys.executable, "-m", "compressive_rt.cli.main"]
        self.command = [*program, "serve", str(engine_dir), "--port", str(self.port),
                        "--store", str(store), "--threads", str(threads), *options]
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> ServerProcess:
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(self.command, stdout=log_file,
                                            stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"ctrt serve exited with {self.process.returncode}:\n"
                                 f"{self.log()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.kill()
        raise BenchError(f"ctrt serve was not ready within {timeout_s} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """kill -9."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, then wait for the exit; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def stop(self) -> None:
        """Whatever happened: SIGTERM, then kill -9 if it does not stop in time."""
        if self.process is not None and self.process.poll() is None:
            try:
                self.terminate(60)
            except subprocess.TimeoutExpired:
                pass

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
