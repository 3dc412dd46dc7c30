"""CUDA device memory through cuda-python, shared by the GPU backends (never torch).

Everything here imports its GPU modules inside functions: the module imports on any machine,
and the first use without a GPU stack raises GpuUnavailable naming the extra to install.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from math import prod
from typing import Any

import numpy as np

from compressive_rt.errors import BackendUnavailable, EngineError
from compressive_rt.runtime.contract import EntryPoint

GPU_EXTRA = "pip install 'compressive-rt[gpu]'"


class GpuUnavailable(BackendUnavailable):
    """No NVIDIA GPU, CUDA runtime bindings or TensorRT here; the message says what to install."""


def import_cudart() -> Any:
    """cuda-python's runtime module (`cuda.bindings.runtime` from 12.6, `cuda.cudart` before)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise GpuUnavailable(f"cuda-python is not installed: {GPU_EXTRA}") from None
    return cudart


SUPPORTED_TENSORRT_MAJORS = (10, 11)


def tensorrt_major(version: str) -> int:
    """The major version of a TensorRT version string ("11.4.0.106" -> 11)."""
    return int(version.split(".")[0])


def import_tensorrt() -> Any:
    """The tensorrt module, refused unless its major version is one this project supports."""
    try:
        import tensorrt as trt
    except ImportError:
        raise GpuUnavailable(f"TensorRT is not installed: {GPU_EXTRA}") from None
    if tensorrt_major(trt.__version__) not in SUPPORTED_TENSORRT_MAJORS:
        raise GpuUnavailable(f"TensorRT {trt.__version__} is installed; this project supports "
                             f"TensorRT 10.x and 11.x: pip install 'tensorrt>=10,<12'")
    return trt


def check(result: Any) -> Any:
    """Unwrap a cuda-python (error, *values) result, raising RuntimeError on a CUDA error."""
    cudart = import_cudart()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        _, text = cudart.cudaGetErrorString(err)
        raise RuntimeError(f"CUDA error {err}: "
                           f"{text.decode() if isinstance(text, bytes) else text}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def gpu_available() -> bool:
    """True when cuda-python sees at least one NVIDIA GPU."""
    try:
        cudart = import_cudart()
        err, count = cudart.cudaGetDeviceCount()
    except Exception:  # noqa: BLE001 - any failure means "no usable GPU"
        return False
    return err == cudart.cudaError_t.cudaSuccess and count > 0


def gpu_info(device: int = 0) -> dict:
    """{"name", "compute_capability"} of one CUDA device."""
    if not gpu_available():
        raise GpuUnavailable(f"no NVIDIA GPU is visible to the CUDA runtime ({GPU_EXTRA} on a "
                             f"machine with a GPU and its driver)")
    props = check(import_cudart().cudaGetDeviceProperties(device))
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else props.name
    return {"name": name.rstrip("\x00").strip(),
            "compute_capability": f"{props.major}.{props.minor}"}


def check_engine_compatibility(section: Mapping, trt_version: str, gpu_name: str,
                               compute_capability: str) -> None:
    """Raise EngineError unless plans described by a manifest `tensorrt` section run here."""
    built = section.get("tensorrt_version")
    gpu = section.get("gpu", {})
    rebuild = "rebuild them on this machine with `ctrt build-engine`"
    if built != trt_version:
        raise EngineError(f"the TensorRT plans were built with TensorRT {built}, this machine "
                          f"has TensorRT {trt_version}; plans are not portable across "
                          f"versions: {rebuild}")
    if gpu.get("compute_capability") != compute_capability:
        raise EngineError(f"the TensorRT plans were built for a {gpu.get('name')} (compute "
                          f"capability {gpu.get('compute_capability')}), this GPU is a "
                          f"{gpu_name} (compute capability {compute_capability}): {rebuild}")
    if gpu.get("name") != gpu_name:
        raise EngineError(f"the TensorRT plans were built on a {gpu.get('name')}, this GPU is a "
                          f"{gpu_name}; plans are tuned to one GPU model: {rebuild}")


Shape = tuple[int, ...]


def optimization_profiles(contract: Mapping[str, EntryPoint], max_batch: int, opt_batch: int,
                          opt_tokens: int = 1) -> dict[str, dict[str, tuple[Shape, Shape, Shape]]]:
    """(min, opt, max) shape of every input of every entry point, for TensorRT plans and the
    ONNX Runtime TensorRT provider.

    batch runs 1..max_batch (opt: opt_batch); extend's tokens run 1..L (opt: opt_tokens, the
    decode step), where L is the segment length. The batch axis sits wherever the contract's
    spec puts it."""
    if not 1 <= opt_batch <= max_batch:
        raise EngineError(f"need 1 <= opt_batch <= max_batch, got opt_batch={opt_batch}, "
                          f"max_batch={max_batch}")
    seg_len = contract["segment"].inputs[0].concrete_shape(1)[-1]  # tokens [B, L]
    if not 1 <= opt_tokens <= seg_len:
        raise EngineError(f"opt_tokens must be in 1..{seg_len} (the segment length), "
                          f"got {opt_tokens}")
    return {name: {spec.name: (spec.concrete_shape(1, 1),
                               spec.concrete_shape(opt_batch, opt_tokens),
                               spec.concrete_shape(max_batch, seg_len))
                   for spec in entry.inputs}
            for name, entry in contract.items()}


@dataclass
class DeviceBuffer:
    """A view of device memory: [ptr, ptr + nbytes) holding a C-contiguous array."""

    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype
    owner: DeviceMemory

    @property
    def nbytes(self) -> int:
        return prod(self.shape) * self.dtype.itemsize


class DeviceMemory:
    """One cudaMalloc'd block, freed when the owner is collected or closed."""

    def __init__(self, nbytes: int) -> None:
        self.cudart = import_cudart()
        self.nbytes = max(nbytes, 1)
        self.ptr = int(check(self.cudart.cudaMalloc(self.nbytes)))
        check(self.cudart.cudaMemset(self.ptr, 0, self.nbytes))

    def close(self) -> None:
        if self.ptr:
            self.cudart.cudaFree(self.ptr)
            self.ptr = 0

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: CUDA may be gone
            self.close()


class CudaStream:
    """A stream plus the copies the backends need (all asynchronous on this stream)."""

    def __init__(self) -> None:
        self.cudart = import_cudart()
        self.handle = check(self.cudart.cudaStreamCreate())

    def __int__(self) -> int:
        return int(self.handle)

    def synchronize(self) -> None:
        check(self.cudart.cudaStreamSynchronize(self.handle))

    def close(self) -> None:
        if self.handle is not None:
            self.cudart.cudaStreamDestroy(self.handle)
            self.handle = None

    def copy_rows_to_host(self, buffer: DeviceBuffer, index: int, host_out: np.ndarray) -> None:
        """host_out[r] = buffer[r, index] for every row r of a [B, T, V] buffer into a host
        array [>= B, V]: one 2D copy (the rows of a call are packed)."""
        batch, tokens, vocab = buffer.shape
        if host_out.ndim != 2 or host_out.shape[0] < batch or host_out.shape[1] != vocab or \
                host_out.dtype != buffer.dtype or not host_out.flags.c_contiguous:
            raise ValueError(f"host_out must be a C-contiguous {buffer.dtype} array of shape "
                             f"({batch} or more, {vocab}), got {host_out.dtype} {host_out.shape}")
        item = buffer.dtype.itemsize
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check(self.cudart.cudaMemcpy2DAsync(host_out.ctypes.data, vocab * item,
                                            buffer.ptr + index * vocab * item,
                                            tokens * vocab * item, vocab * item, batch, kind,
                                            self.handle))
        self.synchronize()

    def to_host(self, buffer: DeviceBuffer) -> np.ndarray:
        out = np.empty(buffer.shape, dtype=buffer.dtype)
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check(self.cudart.cudaMemcpyAsync(out.ctypes.data, buffer.ptr, buffer.nbytes, kind,
                                          self.handle))
        self.synchronize()
        return out

    def from_host(self, buffer: DeviceBuffer, array: np.ndarray) -> None:
        src = np.ascontiguousarray(np.broadcast_to(np.asarray(array, dtype=buffer.dtype),
                                                   buffer.shape))
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        check(self.cudart.cudaMemcpyAsync(buffer.ptr, src.ctypes.data, buffer.nbytes, kind,
                                          self.handle))
        self.synchronize()  # pageable source: it must outlive the copy

    def write_rows(self, dst: DeviceBuffer, src: DeviceBuffer, first: int, rows: int,
                   offset: int, count: int) -> None:
        """dst[r, :, offset:offset+count] = src[r] for rows r in [first, first + rows) of dst
        [B, n, S, w] and src [b, n, count, w]: one 2D copy of rows x n blocks of count*w
        contiguous elements."""
        blocks, dst_len, width = dst.shape[1], dst.shape[2], dst.shape[3]
        src_len = src.shape[2]
        item = dst.dtype.itemsize
        dst_ptr = dst.ptr + (first * blocks * dst_len + offset) * width * item
        src_ptr = src.ptr + first * blocks * src_len * width * item
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        check(self.cudart.cudaMemcpy2DAsync(dst_ptr, dst_len * width * item,
                                            src_ptr, src_len * width * item,
                                            count * width * item, rows * blocks, kind,
                                            self.handle))

    def copy_rows(self, dst: DeviceBuffer, dst_row: int, src: DeviceBuffer, src_row: int,
                  count: int) -> None:
        """dst[dst_row:dst_row+count] = src[src_row:src_row+count]: batch-first rows are one
        contiguous block."""
        row_bytes = prod(dst.shape[1:]) * dst.dtype.itemsize
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        check(self.cudart.cudaMemcpyAsync(dst.ptr + dst_row * row_bytes,
                                          src.ptr + src_row * row_bytes, count * row_bytes,
                                          kind, self.handle))


class DeviceBuffers:
    """Buffer handling shared by the device backends: cudaMalloc'd buffers, views of them, and
    host transfers on the backend's CUDA stream (`self.stream`, a CudaStream)."""

    stream: CudaStream | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._allocations: list[DeviceMemory] = []

    def new_buffer(self, shape: tuple[int, ...], dtype: np.dtype) -> DeviceBuffer:
        memory = DeviceMemory(int(np.prod(shape)) * dtype.itemsize)
        self._allocations.append(memory)
        return DeviceBuffer(memory.ptr, shape, dtype, memory)

    def copy_last_logits(self, logits: DeviceBuffer, index: int, host_out: np.ndarray) -> None:
        self.stream.copy_rows_to_host(logits, index, host_out)

    def release_device(self) -> None:
        """Free every buffer this backend allocated and destroy its stream (idempotent)."""
        if self.stream is not None and self.stream.handle is not None:
            self.stream.synchronize()  # no copy or call may still use the memory
            self.stream.close()
        for memory in self._allocations:
            memory.close()
        self._allocations.clear()

    def view(self, buffer: DeviceBuffer, shape: tuple[int, ...]) -> DeviceBuffer:
        return DeviceBuffer(buffer.ptr, shape, buffer.dtype, buffer.owner)

    def layer(self, buffer: DeviceBuffer, index: int) -> DeviceBuffer:
        return self.row(buffer, index)

    def to_host(self, buffer: DeviceBuffer) -> np.ndarray:
        return self.stream.to_host(buffer)

    def from_host(self, buffer: DeviceBuffer, array: np.ndarray) -> None:
        self.stream.from_host(buffer, array)

    def write_new_rows(self, dst: DeviceBuffer, src: DeviceBuffer, offsets: int | np.ndarray,
                       count: int) -> None:
        if isinstance(offsets, int):  # streams in step: one copy
            self.stream.write_rows(dst, src, 0, src.shape[0], offsets, count)
            return
        for row, offset in enumerate(offsets.tolist()):
            self.stream.write_rows(dst, src, row, 1, offset, count)

    def copy_rows(self, dst: DeviceBuffer, dst_row: int, src: DeviceBuffer, src_row: int,
                  count: int) -> None:
        self.stream.copy_rows(dst, dst_row, src, src_row, count)

    def get_row(self, buffer: DeviceBuffer, row: int) -> np.ndarray:
        return self.to_host(self.row(buffer, row))

    def set_row(self, buffer: DeviceBuffer, row: int, values: Any) -> None:
        self.from_host(self.row(buffer, row), values)

    @staticmethod
    def row(buffer: DeviceBuffer, row: int) -> DeviceBuffer:
        """One batch-first row of a buffer: a contiguous view."""
        shape = buffer.shape[1:]
        return DeviceBuffer(buffer.ptr + row * prod(shape) * buffer.dtype.itemsize, shape,
                            buffer.dtype, buffer.owner)
