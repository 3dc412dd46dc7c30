"""TensorRT build/run pieces that need no GPU: profiles, compatibility, buffer plan, inspect,
and clear errors where TensorRT, cuda-python or a GPU is missing."""

from __future__ import annotations

import pytest

from ct_reference.config import ModelConfig
from ct_reference.model import CompressiveTransformer
from export.inspect import inspect_engine_dir
from export.pipeline import export_model
from export.tensorrt_build import build_engines, check_engine_compatibility, optimization_profiles
from runtime.backends.base import BackendUnavailable
from runtime.backends.cuda import gpu_available
from runtime.backends.plan import buffer_plan
from runtime.contract import entry_points
from runtime.manifest import EngineError, load_manifest

CONFIG = ModelConfig(n_layers=2, d_model=32, n_heads=4, d_ff=64, seg_len=8, mem_len=16,
                     cmem_len=4, compress_rate=2, compress_fn="conv")
NO_GPU_STACK = pytest.mark.skipif(gpu_available(), reason="a GPU stack is present here")


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("engine") / "tiny"
    export_model(CompressiveTransformer(CONFIG), out, verify_segments=2, log=lambda *_: None)
    return out


# ---- optimization profiles ------------------------------------------------------------------
def test_profiles_span_batch_one_to_max_and_tokens_one_to_seg_len():
    profiles = optimization_profiles(entry_points(CONFIG), max_batch=8, opt_batch=2)
    assert profiles["segment"]["tokens"] == ((1, 8), (2, 8), (8, 8))
    # batch-first, head-major: [B, N, H, C+M, dh]
    assert profiles["segment"]["mem_k"] == ((1, 2, 4, 20, 8), (2, 2, 4, 20, 8), (8, 2, 4, 20, 8))
    assert profiles["extend"]["tokens"] == ((1, 1), (2, 1), (8, 8))
    assert profiles["extend"]["seg_k"] == ((1, 2, 4, 8, 8), (2, 2, 4, 8, 8), (8, 2, 4, 8, 8))
    assert set(profiles["extend"]) == set(entry_points(CONFIG)["extend"].input_names)


def test_profiles_refuse_opt_batch_above_max_batch():
    with pytest.raises(ValueError, match="opt_batch=9, max_batch=8"):
        optimization_profiles(entry_points(CONFIG), max_batch=8, opt_batch=9)


# ---- compatibility --------------------------------------------------------------------------
SECTION = {"tensorrt_version": "10.8.0.43",
           "gpu": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}}


def test_plans_are_compatible_with_the_same_version_and_gpu():
    check_engine_compatibility(SECTION, "10.8.0.43", "NVIDIA H100 80GB HBM3", "9.0")


def test_another_tensorrt_version_is_refused_naming_both():
    with pytest.raises(EngineError, match=r"TensorRT 10\.8\.0\.43, this machine has TensorRT "
                                          r"10\.9\.0\.34"):
        check_engine_compatibility(SECTION, "10.9.0.34", "NVIDIA H100 80GB HBM3", "9.0")


def test_another_compute_capability_is_refused():
    with pytest.raises(EngineError, match=r"compute capability 9\.0.*NVIDIA L4 \(compute "
                                          r"capability 8\.9\)"):
        check_engine_compatibility(SECTION, "10.8.0.43", "NVIDIA L4", "8.9")


def test_another_gpu_model_of_the_same_capability_is_refused():
    with pytest.raises(EngineError, match="built on a NVIDIA H100 80GB HBM3, this GPU is a "
                                          "NVIDIA H200"):
        check_engine_compatibility(SECTION, "10.8.0.43", "NVIDIA H200", "9.0")


# ---- buffer plan ----------------------------------------------------------------------------
def test_buffer_plan_exact_bytes_at_batch_3():
    plan = buffer_plan(entry_points(CONFIG), max_batch=3)
    sizes = {name: b.nbytes for name, b in plan.buffers.items()}
    assert sizes == {
        "mem/A": 12288, "mem/B": 12288,  # 2 layers * 3 * 16 * 32 * 4
        "cmem/A": 3072, "cmem/B": 3072,  # 2 * 3 * 4 * 32 * 4
        "mem_k/A": 15360, "mem_k/B": 15360, "mem_v/A": 15360, "mem_v/B": 15360,  # C+M = 20
        "mem_len/A": 12, "mem_len/B": 12, "cmem_len/A": 12, "cmem_len/B": 12,
        "tokens": 96, "seg_len": 12,  # tokens [3, 8] int32
        "seg_h": 6144, "seg_k": 6144, "seg_v": 6144,  # 2 * 3 * 8 * 32 * 4, single
        "logits": 24576,  # [3, 8, 256] float32, shared by segment and extend (T = L)
        "new_h": 6144, "new_k": 6144, "new_v": 6144,  # extend rows sized for T = L
    }
    assert plan.total_bytes == 153756


def test_buffer_plan_ping_pong_aliases_and_slice_writes():
    plan = buffer_plan(entry_points(CONFIG), max_batch=3)
    assert plan.aliases == {"mem_out": "mem", "cmem_out": "cmem", "mem_k_out": "mem_k",
                            "mem_v_out": "mem_v", "mem_len_out": "mem_len",
                            "cmem_len_out": "cmem_len"}
    assert plan.slice_writes == {"new_h": "seg_h", "new_k": "seg_k", "new_v": "seg_v"}
    inputs, outputs = plan.bindings("segment", parity=0)
    assert inputs["mem"] == "mem/A" and outputs["mem_out"] == "mem/B"
    inputs, outputs = plan.bindings("commit", parity=1)
    assert inputs["mem"] == "mem/B" and outputs["mem_out"] == "mem/A"


@pytest.mark.parametrize("compress_fn", ["conv", "most_used", "none"])
def test_no_buffer_is_input_and_output_of_the_same_call(compress_fn):
    cfg = CONFIG.replace(compress_fn=compress_fn, cmem_len=0 if compress_fn == "none" else 4)
    plan = buffer_plan(entry_points(cfg), max_batch=2)
    for entry in plan.contract:
        for parity in (0, 1, {"usage": 1}, {"mem": 1, "mem_k": 1}):
            inputs, outputs = plan.bindings(entry, parity)
            assert not set(inputs.values()) & set(outputs.values()), (entry, parity)
            assert set(inputs.values()) | set(outputs.values()) <= set(plan.buffers)


def test_most_used_extend_ping_pongs_usage():
    cfg = CONFIG.replace(compress_fn="most_used")
    plan = buffer_plan(entry_points(cfg), max_batch=2)
    inputs, outputs = plan.bindings("extend", {"usage": 1})
    assert (inputs["usage"], outputs["usage_out"]) == ("usage/B", "usage/A")


# ---- engine directory: inspect and build ----------------------------------------------------
def test_inspect_reports_manifest_ops_parameters_and_lint(engine_dir):
    report = inspect_engine_dir(engine_dir)
    assert "compress_fn=conv" in report
    for entry in ("[segment] segment.onnx", "[extend] extend.onnx", "[commit] commit.onnx"):
        assert entry in report
    assert report.count("TensorRT lint: ok") == 3
    assert "LayerNormalization" in report and "parameters" in report


@NO_GPU_STACK
def test_build_without_tensorrt_names_the_extra(engine_dir):
    with pytest.raises(BackendUnavailable, match=r"pip install 'compressive-rt\[gpu\]'"):
        build_engines(engine_dir, precision="fp32", max_batch=2, opt_batch=1)


def test_build_refuses_an_unknown_precision(engine_dir):
    with pytest.raises(ValueError, match="precision must be one of fp32, fp16, bf16"):
        build_engines(engine_dir, precision="int8")


@NO_GPU_STACK
@pytest.mark.parametrize("backend", ["tensorrt", "onnxruntime-cuda", "onnxruntime-tensorrt"])
def test_gpu_backends_without_a_gpu_stack_name_the_extra(engine_dir, backend):
    from runtime.backends.ort_gpu import OrtCudaBackend, OrtTensorrtBackend
    from runtime.backends.tensorrt import TensorRTBackend

    cls = {"tensorrt": TensorRTBackend, "onnxruntime-cuda": OrtCudaBackend,
           "onnxruntime-tensorrt": OrtTensorrtBackend}[backend]
    with pytest.raises(BackendUnavailable, match=r"compressive-rt\[gpu\]"):
        cls(load_manifest(engine_dir))


# ---- device-buffer layout, run on host memory ---------------------------------------------
class HostCudart:
    """cuda-python's runtime calls used by runtime.backends.cuda, on host memory (ctypes)."""

    class cudaError_t:  # noqa: N801 - cuda-python's names
        cudaSuccess = 0

    class cudaMemcpyKind:  # noqa: N801
        cudaMemcpyHostToDevice = cudaMemcpyDeviceToHost = cudaMemcpyDeviceToDevice = 1

    def __init__(self) -> None:
        self.blocks = {}

    def cudaMalloc(self, nbytes):  # noqa: N802
        import numpy as np

        block = np.zeros(nbytes, dtype=np.uint8)
        self.blocks[block.ctypes.data] = block
        return 0, block.ctypes.data

    def cudaMemset(self, ptr, value, nbytes):  # noqa: N802
        import ctypes

        ctypes.memset(ptr, value, nbytes)
        return (0,)

    def cudaFree(self, ptr):  # noqa: N802
        self.blocks.pop(ptr, None)
        return (0,)

    def cudaStreamCreate(self):  # noqa: N802
        return 0, 1

    def cudaStreamSynchronize(self, stream):  # noqa: N802
        return (0,)

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):  # noqa: N802
        import ctypes

        ctypes.memmove(dst, src, nbytes)
        return (0,)

    def cudaMemcpy2DAsync(self, dst, dpitch, src, spitch, width, height, kind, stream):  # noqa: N802
        import ctypes

        for i in range(height):
            ctypes.memmove(dst + i * dpitch, src + i * spitch, width)
        return (0,)

    def cudaSetDevice(self, device):  # noqa: N802
        return (0,)


@pytest.mark.parametrize("compress_fn", ["conv", "most_used"])
def test_device_buffer_layout_matches_the_cpu_backend(tmp_path, monkeypatch, compress_fn):
    """Shared scratch arenas, 2D row writes and address bindings, exercised through ONNX
    Runtime CPU on host pointers: same logits and state as the numpy CPU backend."""
    import numpy as np

    from runtime.backends import cuda, ort_gpu
    from runtime.backends.ort import OrtCpuBackend
    from runtime.session import Session

    fake = HostCudart()
    monkeypatch.setattr(cuda, "import_cudart", lambda: fake)
    monkeypatch.setattr(ort_gpu, "import_cudart", lambda: fake)
    monkeypatch.setattr(ort_gpu, "gpu_info", lambda device: {})

    class HostPointerBackend(ort_gpu.OrtGpuBackend):
        provider = "CPUExecutionProvider"
        device_type = "cpu"

        def providers(self, entry, profile):
            return ["CPUExecutionProvider"]

    out = tmp_path / "engine"
    cfg = CONFIG.replace(compress_fn=compress_fn)
    export_model(CompressiveTransformer(cfg), out, verify_segments=2, log=lambda *_: None)
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 256, n) for n in (29, 22)]
    results = []
    for backend in (OrtCpuBackend(load_manifest(out)),
                    HostPointerBackend(load_manifest(out), max_batch=2)):
        session = Session(out, backend=backend, max_streams=2)
        ids = [session.add_stream(), session.add_stream()]
        logits = [[], []]
        for start in range(0, 29, 3):  # chunks of 3: extend + commit, streams out of step
            got = session.feed({s: d[start:start + 3] for s, d in zip(ids, docs, strict=True)})
            for i, s in enumerate(ids):
                if s in got:
                    logits[i].append(got[s])
        got = session.feed({ids[0]: docs[0][:8]})  # a whole segment for stream 0
        logits[0].append(got[ids[0]])
        results.append(([np.concatenate(x) for x in logits],
                        [session.stream_state(s) for s in ids]))
    (want_logits, want_states), (got_logits, got_states) = results
    for g, w in zip(got_logits, want_logits, strict=True):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-5)
    for g, w in zip(got_states, want_states, strict=True):
        assert set(g) == set(w)
        for name in w:
            np.testing.assert_allclose(g[name], w[name], rtol=0, atol=1e-5, err_msg=name)
