"""The native runtime (native/, C++) as a `ctrt bench` contender: the same engine directory and
thread count as the Python runtime's contender, driven through its C API.

The time outside engine calls is measured inside the native loop (`outside_seconds`): the
seconds inside `ctrt::Session::feed` minus those inside ONNX Runtime's `Run`, both taken by the
library around its own calls, so the ctypes call from Python is not counted. `engine_seconds`
is the seconds inside `Run`.
"""

from __future__ import annotations

import time
from pathlib import Path

from compressive_rt.benchmarks.contenders import SessionContender
from compressive_rt.benchmarks.settings import BenchError
from compressive_rt.errors import BackendUnavailable


class ContenderUnavailable(BenchError):
    """A contender that cannot run on this machine (here: the native library is not built)."""


class NativeContender(SessionContender):
    """SessionContender's workloads on native sessions, one per batch size."""

    name = "native (C++)"

    def __init__(self, engine_dir: Path, threads: int) -> None:
        from compressive_rt.benchmarks.launchers.native import NativeSession, load_library

        try:
            load_library()
        except BackendUnavailable as exc:
            raise ContenderUnavailable(str(exc)) from None
        self.engine_dir, self.threads, self._open = engine_dir, threads, NativeSession
        self.sessions: dict = {}
        self.streams: list[int] = []
        started = time.perf_counter()
        self.session = self._session(1)
        self.open_seconds = time.perf_counter() - started

    def _session(self, batch: int):
        if batch not in self.sessions:
            self.sessions[batch] = self._open(self.engine_dir, max_streams=batch,
                                              threads=self.threads)
        return self.sessions[batch]

    def _timing(self, key: str) -> float:
        return sum(s.timing()[key] for s in self.sessions.values())

    @property
    def engine_seconds(self) -> float:
        return self._timing("engine_seconds")

    @property
    def outside_seconds(self) -> float:
        return self._timing("feed_seconds") - self.engine_seconds
