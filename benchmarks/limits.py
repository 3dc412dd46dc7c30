"""The machine's limits measured with the engine's own kernels, in the same run as the engine.

- GEMM: ONNX Runtime's MatMul, with the session options the engine is opened with, at the
  shapes a segment call runs (rows = batch x L against each linear weight: the four d x d
  attention projections, d x d_ff and d_ff x d of the FFN), fp32 and int8 (the graph
  `ctrt export --precision int8` makes of it: dynamic u8 activations, 7-bit s8 weights, which
  ONNX Runtime runs as DynamicQuantizeMatMul). The rate is the mix's: its FLOPs over the time
  its MatMuls take, each shape at its best of `tries`. torch's and numpy's square GEMMs
  (benchmarks/measure.py) are recorded beside it; they use other kernels than the engine.
- Bandwidth: ONNX Runtime's ReduceSum streaming through a float32 tensor of the weights' size
  (what a decode step must read at least), best of `tries`.
- The CPU: its model and the SIMD ISA flags /proc/cpuinfo lists.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compressive_rt.ct_reference.config import ModelConfig
from compressive_rt.runtime.backends.ort import cpu_session_options
from compressive_rt.runtime.cpu import CPUINFO, cpu_features

SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
              "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8",
              "amx_bf16")
READ_COLUMNS = 4096  # row length of the streamed tensor: ReduceSum threads split the rows


def cpu_description() -> dict:
    """The CPU's model and the SIMD_FLAGS /proc/cpuinfo lists (None where it cannot be read)."""
    features = cpu_features()
    try:
        flags = next(line.partition(":")[2].split()
                     for line in CPUINFO.read_text(errors="replace").splitlines()
                     if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = None
    return {"model": features.model, "machine": features.machine,
            "isa_flags": None if flags is None else [f for f in SIMD_FLAGS if f in flags]}


def _session(model: onnx.ModelProto, threads: int):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), cpu_session_options(threads),
                                providers=["CPUExecutionProvider"])


def _best_seconds(session, feeds: dict[str, np.ndarray], tries: int) -> float:
    """Best time of `tries` runs (after one warm-up) with inputs and outputs bound once."""
    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_input(name, "cpu", 0, array.dtype, array.shape, array.ctypes.data)
    for output in session.get_outputs():
        binding.bind_output(output.name, "cpu")
    session.run_with_iobinding(binding)
    best = float("inf")
    for _ in range(tries):
        started = time.perf_counter()
        session.run_with_iobinding(binding)
        best = min(best, time.perf_counter() - started)
    return best


def matmul_graph(rows: int, inner: int, cols: int) -> onnx.ModelProto:
    """y [rows, cols] = x [rows, inner] @ w [inner, cols], w a random initializer."""
    weight = np.random.default_rng(0).standard_normal((inner, cols), dtype=np.float32) * 0.05
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul")], "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, inner])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, cols])],
        initializer=[numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def engine_gemm_shapes(cfg: ModelConfig) -> list[tuple[int, int, int]]:
    """(inner, cols, count per layer) of the linear weights a segment call multiplies by."""
    return [(cfg.d_model, cfg.d_model, 4), (cfg.d_model, cfg.d_ff, 1), (cfg.d_ff, cfg.d_model, 1)]


def ort_gemm_rates(cfg: ModelConfig, batches: tuple[int, ...], threads: int,
                   tries: int = 5) -> dict:
    """Per segment batch, ONNX Runtime's fp32 GFLOP/s and int8 GOP/s on the engine's mix."""
    from compressive_rt.export.onnx_export import quantize_to_int8

    rates = {}
    with tempfile.TemporaryDirectory(prefix="ctrt-gemm-") as work:
        for batch in batches:
            rows = batch * cfg.seg_len
            x = np.random.default_rng(1).standard_normal((rows, cfg.d_ff), dtype=np.float32)
            ops, seconds = 0.0, {"fp32": 0.0, "int8": 0.0}
            for inner, cols, count in engine_gemm_shapes(cfg):
                fp32 = matmul_graph(rows, inner, cols)
                feeds = {"x": np.ascontiguousarray(x[:, :inner])}
                ops += count * 2.0 * rows * inner * cols
                seconds["fp32"] += count * _best_seconds(_session(fp32, threads), feeds, tries)
                int8 = quantize_to_int8(fp32, Path(work))
                seconds["int8"] += count * _best_seconds(_session(int8, threads), feeds, tries)
            rates[str(batch)] = {"rows": rows, "fp32_gflops": ops / seconds["fp32"] / 1e9,
                                 "int8_gops": ops / seconds["int8"] / 1e9}
    return rates


def streaming_read(nbytes: int, threads: int, tries: int = 5) -> dict:
    """GB/s of ONNX Runtime's ReduceSum reading a float32 tensor of nbytes (rounded to rows)."""
    rows = max(1, nbytes // (4 * READ_COLUMNS))
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["sums"], keepdims=0)], "read",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, READ_COLUMNS])],
        [helper.make_tensor_value_info("sums", TensorProto.FLOAT, [rows])],
        initializer=[numpy_helper.from_array(np.array([1], np.int64), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.ones((rows, READ_COLUMNS), dtype=np.float32)
    best = _best_seconds(_session(model, threads), {"x": x}, tries)
    return {"read_gbps": x.nbytes / best / 1e9, "bytes": int(x.nbytes)}
