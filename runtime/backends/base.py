"""The small interface every backend implements.

A backend owns the device: it allocates buffers, runs an entry point on buffers bound by
name, and moves data between host and device. The Session (runtime/session.py) decides what
runs when and which buffers are bound; it never touches device memory itself.

Host backends (ONNX Runtime CPU) use numpy arrays as buffers; device backends use their own
handles and implement the same methods.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from compressive_rt.errors import BackendUnavailable  # noqa: F401 - its home before the error root
from compressive_rt.runtime.contract import TOKENS, TensorSpec
from compressive_rt.runtime.manifest import Manifest

NUMPY_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}


class Backend(ABC):
    name: str = "abstract"
    # True when buffers are numpy arrays in host memory: the Session then writes the tokens
    # and partial fills into the bound inputs themselves instead of uploading host copies.
    host_buffers: bool = False

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self._arenas: dict[tuple[str, int], Any] = {}

    def allocate(self, spec: TensorSpec, batch: int, tokens: int | None = None) -> Any:
        """A zero-filled buffer with the spec's dtype and shape for this batch (and token count).

        Tensors with a token axis (extend's tokens and outputs) are views of one buffer per
        name sized for T = L: every token count shares it instead of holding its own."""
        shape = spec.concrete_shape(batch, tokens)
        dtype = np.dtype(NUMPY_DTYPES[spec.dtype])
        if TOKENS not in spec.shape:
            return self.new_buffer(shape, dtype)
        key = (spec.name, batch)
        if key not in self._arenas:
            largest = spec.concrete_shape(batch, self.manifest.config["seg_len"])
            self._arenas[key] = self.new_buffer(largest, dtype)
        return self.view(self._arenas[key], shape)

    def allocate_layers(self, spec: TensorSpec, batch: int) -> list[Any]:
        """A per-layer state tensor (spec [B, N, ...rest]) as one zero-filled layer-major
        buffer [N, batch, ...rest], returned as its N layers [batch, ...rest]: what the graph
        tensors X.0 .. X.{N-1} bind (contract v3)."""
        n_layers = spec.shape[1]
        whole = self.allocate(TensorSpec(spec.name, spec.dtype,
                                         (n_layers, spec.shape[0], *spec.shape[2:])), batch)
        return [self.layer(whole, i) for i in range(n_layers)]

    @abstractmethod
    def layer(self, buffer: Any, index: int) -> Any:
        """buffer[index] of a buffer [N, ...]: a contiguous buffer [...] of its own shape that
        shares the memory (a layer of a layer-major buffer)."""

    @abstractmethod
    def new_buffer(self, shape: tuple[int, ...], dtype: np.dtype) -> Any:
        """A zero-filled buffer of its own."""

    @abstractmethod
    def view(self, buffer: Any, shape: tuple[int, ...]) -> Any:
        """The first prod(shape) elements of a buffer, as a C-contiguous tensor of `shape`."""

    @abstractmethod
    def bind(self, entry: str, feeds: dict[str, Any], fetches: dict[str, Any],
             tokens: int | None = None) -> Any:
        """Prepare calls of one entry point reading `feeds` and writing into the preallocated
        `fetches`; returns the handle that `run` takes. The Session binds each (entry point,
        rows, tokens, banks) once and keeps the handle: backends keep no cache of their own.

        `tokens` is the new-token count of `extend` (the second dynamic axis)."""

    @abstractmethod
    def run(self, handle: Any) -> None:
        """Run one bound call (the per-step work: nothing is looked up or bound here)."""

    @abstractmethod
    def to_host(self, buffer: Any) -> np.ndarray:
        """The buffer's contents as a host array (a view for host backends)."""

    @abstractmethod
    def from_host(self, buffer: Any, array: np.ndarray) -> None:
        """Overwrite the whole buffer with a host array of the same shape."""

    @abstractmethod
    def write_new_rows(self, dst: Any, src: Any, offsets: int | np.ndarray, count: int) -> None:
        """dst[r, :, o_r:o_r+count] = src[r] for every row r of src, with dst [B, n, S, w] and
        src [b, n, count, w] (extend's new rows into the partial segment) and o_r = offsets (one
        int: every row at the same fill) or offsets[r] (an int array [b]): one operation per
        tensor where the device allows."""

    @abstractmethod
    def copy_rows(self, dst: Any, dst_row: int, src: Any, src_row: int, count: int) -> None:
        """dst[dst_row:dst_row+count] = src[src_row:src_row+count] along the batch axis: one
        contiguous block copy (batch-first), dst and src of the same row shape."""

    @abstractmethod
    def get_row(self, buffer: Any, row: int) -> np.ndarray:
        """One stream's row of a batch-first state buffer, as a host copy (snapshots)."""

    @abstractmethod
    def set_row(self, buffer: Any, row: int, values: np.ndarray | float) -> None:
        """Overwrite one stream's row of a batch-first state buffer from the host."""

    @abstractmethod
    def copy_last_logits(self, logits: Any, index: int, host_out: np.ndarray) -> None:
        """host_out[r] = logits[r, index] for every row r of a logits buffer [B, T, V] into a
        host array [B, V]: the one device-to-host copy decoding needs (the rows of a call are
        [0, B), packed)."""

    def close(self) -> None:
        """Release device memory, streams and CUDA graphs; host backends hold none."""
