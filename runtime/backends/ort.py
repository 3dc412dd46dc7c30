"""ONNX Runtime on the CPU, with preallocated numpy buffers bound by IOBinding (no copies)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from compressive_rt.errors import BackendUnavailable, EngineError, RuntimeInputError
from compressive_rt.runtime.backends.base import Backend
from compressive_rt.runtime.contract import ENTRY_POINTS
from compressive_rt.runtime.manifest import Manifest


def cpu_session_options(threads: int | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Every precision: ONNX Runtime runs fp16 graphs on the CPU through Casts to fp32 around
    # the ops it has no fp16 kernels for; with the optimizer on, the Casts of the weights fold
    # once at load instead of running in every call (issue 28: with it off, fp16 decode b1
    # took 2.2x the fp32 time).
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # Worker threads that spin between calls take the cores the Python loop (and, on a shared
    # machine, everyone else) needs: decode steps were 2.3x slower with spinning on a 2-core
    # machine under load; on a quiet one the two are within noise (`ctrt bench`, ORT variants).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


# Which sessions prepack their MatMul weights (see OrtCpuBackend): mode -> entry points.
PREPACK_MODES: dict[str, tuple[str, ...]] = {
    "all": ENTRY_POINTS,  # fastest; a copy of the weights per session
    "decode": ("extend",),  # decoding at full speed, one more copy of the weights
    "none": (),  # one copy of the weights in the process; slower steps
}


def load_shared_weights(manifest: Manifest) -> dict[str, Any]:
    """Every tensor of the engine's weights file as an OrtValue over one read-only memory map:
    the sessions get them with `add_initializer`, so the three graphs hold one copy (the
    OrtValues and the map must outlive the sessions)."""
    import onnxruntime as ort

    tensors = manifest.data["weights"]["tensors"]
    if not tensors:  # every weight below the external-data size: nothing to map
        return {}
    weights = np.memmap(manifest.weights_path, dtype=np.uint8, mode="r")
    values = {}
    for key, tensor in tensors.items():
        dtype = np.dtype(tensor["dtype"])
        count = int(np.prod(tensor["shape"], dtype=np.int64))
        array = np.frombuffer(weights, dtype=dtype, count=count, offset=tensor["offset"])
        values[key] = ort.OrtValue.ortvalue_from_numpy(array.reshape(tensor["shape"]))
    return values


class OrtCpuBackend(Backend):
    """The three graphs' sessions read one shared, memory-mapped copy of the weights.

    ONNX Runtime re-lays MatMul weights out for its GEMM kernels ("prepacking") in a copy
    per session: a second copy of nearly all weights for every session that does it (the
    Python API has no container to share prepacked weights between sessions). `prepack`
    picks the sessions that do it (PREPACK_MODES). Default config, 2 threads, one stream,
    interleaved medians: "all" (default) is fastest at 515 MiB peak RSS; "none" holds the
    weights once (308 MiB) for segment 1.15x and decode 1.20x the time; "decode" prepacks
    only `extend` (404 MiB): decoding at full speed, segment 1.12x."""

    name = "onnxruntime-cpu"
    host_buffers = True

    def __init__(self, manifest: Manifest, threads: int | None = None,
                 prepack: str = "all") -> None:
        super().__init__(manifest)
        if prepack not in PREPACK_MODES:
            raise RuntimeInputError(f"prepack must be one of {', '.join(PREPACK_MODES)}, "
                                    f"got {prepack!r}")
        prepacked_entries = PREPACK_MODES[prepack]
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailable(
                "onnxruntime is not installed: pip install onnxruntime") from None
        self.threads = threads
        self.sessions = {}
        self.shared_weights = load_shared_weights(manifest)
        for entry in manifest.contract:
            path = manifest.graph_path(entry)
            try:
                options = cpu_session_options(threads)
                if entry not in prepacked_entries:
                    options.add_session_config_entry("session.disable_prepacking", "1")
                shared = manifest.data["entry_points"][entry]["initializers"]
                for name, key in shared.items():
                    options.add_initializer(name, self.shared_weights[key])
                session = ort.InferenceSession(str(path), options,
                                               providers=["CPUExecutionProvider"])
            except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
                raise EngineError(f"{path} cannot be loaded by ONNX Runtime: {exc}") from None
            expected = manifest.contract[entry]
            names_in = [i.name for i in session.get_inputs()]
            names_out = [o.name for o in session.get_outputs()]
            if names_in != expected.input_names or names_out != expected.output_names:
                raise EngineError(
                    f"{path}: graph inputs {names_in} / outputs {names_out} do not match the "
                    f"manifest's {expected.input_names} / {expected.output_names}")
            self.sessions[entry] = session

    def new_buffer(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return np.zeros(shape, dtype=dtype)

    def view(self, buffer: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return buffer.reshape(-1)[:int(np.prod(shape))].reshape(shape)

    def layer(self, buffer: np.ndarray, index: int) -> np.ndarray:
        return buffer[index]

    def bind(self, entry: str, feeds: dict[str, np.ndarray], fetches: dict[str, np.ndarray],
             tokens: int | None = None) -> tuple[Any, Any]:
        session = self.sessions[entry]
        binding = session.io_binding()
        for name, array in feeds.items():
            binding.bind_input(name, "cpu", 0, array.dtype, array.shape, array.ctypes.data)
        for name, array in fetches.items():
            binding.bind_output(name, "cpu", 0, array.dtype, array.shape, array.ctypes.data)
        return session, binding

    def run(self, handle: tuple[Any, Any]) -> None:
        session, binding = handle
        session.run_with_iobinding(binding)

    def to_host(self, buffer: np.ndarray) -> np.ndarray:
        return buffer

    def from_host(self, buffer: np.ndarray, array: np.ndarray) -> None:
        np.copyto(buffer, array)

    def write_new_rows(self, dst: np.ndarray, src: np.ndarray, offsets: int | np.ndarray,
                       count: int) -> None:
        if isinstance(offsets, int):  # streams in step: one slice
            dst[:len(src), :, offsets:offsets + count] = src
            return
        # the advanced indices (rows [b, 1], positions [b, T]) put their axes first, so the
        # source is taken as [b, T, n, w]
        positions = offsets[:, None] + np.arange(count)  # [b, T]
        dst[np.arange(len(src))[:, None], :, positions] = src.transpose(0, 2, 1, 3)

    def copy_rows(self, dst: np.ndarray, dst_row: int, src: np.ndarray, src_row: int,
                  count: int) -> None:
        dst[dst_row:dst_row + count] = src[src_row:src_row + count]

    def get_row(self, buffer: np.ndarray, row: int) -> np.ndarray:
        return buffer[row].copy()

    def set_row(self, buffer: np.ndarray, row: int, values: np.ndarray | float) -> None:
        buffer[row] = values

    def copy_last_logits(self, logits: np.ndarray, index: int, host_out: np.ndarray) -> None:
        host_out[:logits.shape[0]] = logits[:, index]
