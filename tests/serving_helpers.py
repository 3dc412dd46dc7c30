"""Shared by the serving tests: references computed with the runtime in-process, SSE parsing,
and a real `ctrt serve` subprocess on 127.0.0.1 (always stopped by its fixture)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from compressive_rt.runtime.generate import Sampling, generate
from compressive_rt.runtime.score import target_bits
from compressive_rt.runtime.session import Session

REL = 1e-4  # the project's equality rule for logits, applied to bits here


class Reference:
    """An uninterrupted stream in-process: what a server's stream must score and generate."""

    def __init__(self, engine_dir: Path) -> None:
        self.session = Session(engine_dir)
        self.stream = self.session.add_stream()
        self.fed = False

    def append(self, text: bytes) -> tuple[float, int]:
        """(bits, predicted bytes) of `text` after everything appended so far; feeds it."""
        tokens = np.frombuffer(text, dtype=np.uint8).astype(np.int32)
        bits, predicted = 0.0, 0
        if self.fed:
            bits += target_bits(self.session.last_logits(self.stream)[None].copy(), tokens[:1])
            predicted += 1
        logits = self.session.feed({self.stream: tokens})[self.stream]
        bits += target_bits(logits[:-1], tokens[1:])
        self.fed = True
        return bits, predicted + len(tokens) - 1

    def bits_per_byte(self, text: bytes) -> float | None:
        bits, predicted = self.append(text)
        return bits / predicted if predicted else None


def greedy(engine_dir: Path, prompt: bytes, count: int) -> bytes:
    """Greedy generation in-process (the runtime's own generate)."""
    return generate(Session(engine_dir), prompt, count, Sampling(greedy=True))


def assert_close(got: float | None, expected: float | None) -> None:
    """Equal to the rule's tolerance; None (nothing predicted) only equals None."""
    if expected is None or got is None:
        assert got is expected, (got, expected)
        return
    assert abs(got - expected) <= REL * max(1.0, abs(expected)), (got, expected)


def sse_events(lines) -> list:
    """The JSON payloads of an SSE body's `data:` lines, up to and without `[DONE]` (which must
    come, last)."""
    events, done = [], False
    for line in lines:
        if not line.startswith("data: "):
            assert line == "", line
            continue
        assert not done, "data after [DONE]"
        payload = line[len("data: "):]
        if payload == "[DONE]":
            done = True
        else:
            events.append(json.loads(payload))
    assert done, "no [DONE]"
    return events


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`ctrt serve ENGINE --port P --store STORE ...` in a subprocess; `start` waits for
    /ready. Logs go to a file (read them with `log()`)."""

    def __init__(self, engine_dir: Path, store: Path, *args: str,
                 env: dict[str, str] | None = None, ctrt: Path | None = None) -> None:
        self.engine_dir, self.store, self.args = engine_dir, store, list(args)
        self.ctrt = ctrt or Path(sys.executable).parent / "ctrt"
        self.env = {**os.environ, **(env or {})}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = store.parent / f"{store.name}.{self.port}.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120.0) -> Server:
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [str(self.ctrt), "serve", str(self.engine_dir), "--port", str(self.port),
                 "--store", str(self.store), "--threads", "1", *self.args],
                stdout=log_file, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ctrt serve exited with {self.process.returncode}:\n"
                                   f"{self.log()}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"ctrt serve was not ready within {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """kill -9."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait for the exit; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def stop(self) -> None:
        """At the end of a test, whatever happened: SIGTERM, then kill -9 if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            self.terminate(30)
        except subprocess.TimeoutExpired:
            pass
