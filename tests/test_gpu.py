"""GPU backends against the ONNX Runtime CPU backend: same logits, same memory.

Each test runs only where its stack is present (NVIDIA GPU + TensorRT 10 or 11 + cuda-python,
or onnxruntime-gpu) and otherwise skips saying what is missing. Tolerances come from the one
table in export/tolerances.py.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from compressive_rt.export.tolerances import (
    BITS_PER_BYTE_TOLERANCE,
    RELATIVE_TOLERANCE,
    TF32_RELATIVE_TOLERANCE,
)
from compressive_rt.runtime.backends.cuda import gpu_available
from compressive_rt.runtime.backends.ort import OrtCpuBackend
from compressive_rt.runtime.manifest import load_manifest
from compressive_rt.runtime.session import Session

pytestmark = pytest.mark.gpu


def tensorrt_ready() -> bool:
    from compressive_rt.runtime.backends.tensorrt import tensorrt_available

    return tensorrt_available()


def ort_provider_ready(provider: str) -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return gpu_available() and provider in ort.get_available_providers()


NEEDS_TENSORRT = pytest.mark.skipif(not tensorrt_ready(),
                                    reason="no NVIDIA GPU / TensorRT 10 or 11 on this machine")
NEEDS_ORT_CUDA = pytest.mark.skipif(not ort_provider_ready("CUDAExecutionProvider"),
                                    reason="no NVIDIA GPU / onnxruntime-gpu on this machine")
NEEDS_ORT_TRT = pytest.mark.skipif(not ort_provider_ready("TensorrtExecutionProvider"),
                                   reason="no NVIDIA GPU / onnxruntime-gpu with TensorRT here")
FP32_RELATIVE = RELATIVE_TOLERANCE["fp32"]
FP16_RELATIVE = RELATIVE_TOLERANCE["fp16"]
STREAMS = 3


@pytest.fixture(scope="module")
def gpu_engine(engine, tmp_path_factory):
    """A private copy of the tiny conv engine (fp32 graphs) with fp32 TensorRT plans, and the
    same model exported as fp16 graphs with fp16 plans (strongly typed on TensorRT 10 and 11)."""
    from compressive_rt.export.pipeline import export_model

    model, source = engine("conv")
    root = tmp_path_factory.mktemp("gpu")
    out, out16 = root / "engine", root / "engine16"
    shutil.copytree(source, out)
    if tensorrt_ready():
        from compressive_rt.export.tensorrt_build import build_engines

        export_model(model, out16, verify_segments=20, precision="fp16", log=lambda *_: None)
        for engine_dir, precision in ((out, "fp32"), (out16, "fp16")):
            build_engines(engine_dir, precision=precision, max_batch=4, opt_batch=2,
                          workspace_mib=512, log=lambda *_: None)
    return out


def documents(length: int = 61, seed: int = 0) -> list[np.ndarray]:
    """Streams of different lengths (not multiples of L), so they sit at different positions."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, length - 7 * i) for i in range(STREAMS)]


def run_session(engine_dir, backend, chunk: int | None = None) -> tuple[list, list]:
    """Logits of every stream and their final states, feeding whole or in chunks."""
    with Session(engine_dir, backend=backend, max_streams=STREAMS) as session:
        ids = [session.add_stream() for _ in range(STREAMS)]
        docs = documents()
        logits = [[] for _ in ids]
        step = chunk or max(len(d) for d in docs)
        for start in range(0, max(len(d) for d in docs), step):
            out = session.feed({s: d[start:start + step]
                                for s, d in zip(ids, docs, strict=True)})
            for i, s in enumerate(ids):
                if s in out:
                    logits[i].append(out[s])
        states = [session.stream_state(s) for s in ids]
    return [np.concatenate(parts) for parts in logits], states


def assert_same(got, want, relative: float) -> None:
    (got_logits, got_states), (want_logits, want_states) = got, want
    scale = max(1.0, max(float(np.abs(w).max()) for w in want_logits))
    for g, w in zip(got_logits, want_logits, strict=True):
        assert g.shape == w.shape
        assert float(np.abs(g - w).max()) <= relative * scale
    for g, w in zip(got_states, want_states, strict=True):
        for name in w:
            if w[name].dtype.kind in "iub":
                np.testing.assert_array_equal(g[name], w[name], err_msg=name)
            else:
                assert float(np.abs(g[name] - w[name]).max()) <= relative * scale, name


@pytest.fixture(scope="module")
def cpu_result(gpu_engine):
    return {chunk: run_session(gpu_engine, OrtCpuBackend(load_manifest(gpu_engine)), chunk)
            for chunk in (None, 1, 5)}


@NEEDS_TENSORRT
@pytest.mark.parametrize("chunk", [None, 1, 5])
def test_tensorrt_fp32_matches_onnxruntime_cpu(gpu_engine, cpu_result, chunk):
    from compressive_rt.runtime.backends.tensorrt import TensorRTBackend

    backend = TensorRTBackend(load_manifest(gpu_engine), precision="fp32")
    assert_same(run_session(gpu_engine, backend, chunk), cpu_result[chunk], FP32_RELATIVE)


@NEEDS_TENSORRT
def test_tensorrt_cuda_graph_replay_matches_onnxruntime_cpu(gpu_engine, cpu_result):
    from compressive_rt.runtime.backends.tensorrt import TensorRTBackend

    backend = TensorRTBackend(load_manifest(gpu_engine), precision="fp32", use_cuda_graph=True)
    assert_same(run_session(gpu_engine, backend, 1), cpu_result[1], FP32_RELATIVE)


@NEEDS_TENSORRT
def test_tensorrt_fp16_is_within_the_fp16_logit_and_bits_per_byte_tolerances(gpu_engine,
                                                                               cpu_result):
    from compressive_rt.export.verify import bits_per_byte
    from compressive_rt.runtime.backends.tensorrt import TensorRTBackend

    engine16 = gpu_engine.with_name("engine16")
    backend = TensorRTBackend(load_manifest(engine16), precision="fp16")
    got_logits, _ = run_session(engine16, backend)
    want_logits, _ = cpu_result[None]
    scale = max(1.0, max(float(np.abs(w).max()) for w in want_logits))
    for g, w, doc in zip(got_logits, want_logits, documents(), strict=True):
        assert float(np.abs(g - w).max()) <= FP16_RELATIVE * scale
        assert abs(bits_per_byte(g, doc) - bits_per_byte(w, doc)) <= \
            BITS_PER_BYTE_TOLERANCE["fp16"]


@NEEDS_TENSORRT
def test_tensorrt_refuses_batches_above_the_plans_max(gpu_engine):
    from compressive_rt.runtime.backends.tensorrt import TensorRTBackend
    from compressive_rt.runtime.manifest import EngineError

    backend = TensorRTBackend(load_manifest(gpu_engine), precision="fp32")
    with pytest.raises(EngineError, match="batch <= 4"):
        Session(gpu_engine, backend=backend, max_streams=5)


@NEEDS_ORT_CUDA
@pytest.mark.parametrize("chunk", [None, 1])
def test_onnxruntime_cuda_matches_onnxruntime_cpu(gpu_engine, cpu_result, chunk):
    from compressive_rt.runtime.backends.ort_gpu import OrtCudaBackend

    backend = OrtCudaBackend(load_manifest(gpu_engine), max_batch=4)
    assert_same(run_session(gpu_engine, backend, chunk), cpu_result[chunk], FP32_RELATIVE)


@NEEDS_ORT_TRT
def test_onnxruntime_tensorrt_ep_matches_onnxruntime_cpu(gpu_engine, cpu_result):
    from compressive_rt.runtime.backends.ort_gpu import OrtTensorrtBackend

    backend = OrtTensorrtBackend(load_manifest(gpu_engine), max_batch=4, workspace_mib=512)
    # The TensorRT EP exposes no switch for TensorRT's default TF32 GEMMs.
    assert_same(run_session(gpu_engine, backend, 5), cpu_result[5], TF32_RELATIVE_TOLERANCE)
