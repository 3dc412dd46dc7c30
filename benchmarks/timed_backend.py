"""A Backend that wraps another and accumulates the seconds spent inside `run`.

The Session drives it like any backend; a step's wall time minus the time inside `run` is the
runtime's loop overhead (host copies, bookkeeping, scheduling).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from compressive_rt.runtime.backends.base import Backend
from compressive_rt.runtime.contract import TensorSpec


class TimedBackend(Backend):
    def __init__(self, inner: Backend) -> None:
        super().__init__(inner.manifest)
        self.inner = inner
        self.name = inner.name
        self.host_buffers = inner.host_buffers
        self.engine_seconds = 0.0
        self.calls = 0

    def bind(self, entry: str, feeds: dict[str, Any], fetches: dict[str, Any],
             tokens: int | None = None) -> Any:
        return self.inner.bind(entry, feeds, fetches, tokens)

    def run(self, handle: Any) -> None:
        started = time.perf_counter()
        self.inner.run(handle)
        self.engine_seconds += time.perf_counter() - started
        self.calls += 1

    def allocate(self, spec: TensorSpec, batch: int, tokens: int | None = None) -> Any:
        return self.inner.allocate(spec, batch, tokens)

    def new_buffer(self, shape: tuple[int, ...], dtype: np.dtype) -> Any:
        return self.inner.new_buffer(shape, dtype)

    def view(self, buffer: Any, shape: tuple[int, ...]) -> Any:
        return self.inner.view(buffer, shape)

    def layer(self, buffer: Any, index: int) -> Any:
        return self.inner.layer(buffer, index)

    def to_host(self, buffer: Any) -> np.ndarray:
        return self.inner.to_host(buffer)

    def from_host(self, buffer: Any, array: np.ndarray) -> None:
        self.inner.from_host(buffer, array)

    def write_new_rows(self, dst: Any, src: Any, offsets: int | np.ndarray, count: int) -> None:
        self.inner.write_new_rows(dst, src, offsets, count)

    def copy_rows(self, dst: Any, dst_row: int, src: Any, src_row: int, count: int) -> None:
        self.inner.copy_rows(dst, dst_row, src, src_row, count)

    def get_row(self, buffer: Any, row: int) -> np.ndarray:
        return self.inner.get_row(buffer, row)

    def set_row(self, buffer: Any, row: int, values: np.ndarray | float) -> None:
        self.inner.set_row(buffer, row, values)

    def copy_last_logits(self, logits: Any, index: int, host_out: np.ndarray) -> None:
        self.inner.copy_last_logits(logits, index, host_out)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        # Helpers a backend adds beyond the abstract interface reach the wrapped one.
        if "inner" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["inner"], name)
