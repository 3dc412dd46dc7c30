"""TensorRT build/run pieces that need no GPU: profiles, compatibility, inspect, the build's
version dispatch and atomic replacement, and clear errors where TensorRT, cuda-python or a GPU
is missing.

No GPU and no tensorrt module exist on the machines that run this suite, so the build tests
run `build_engines` against a fake `tensorrt` module (FakeTensorRT below) exposing the API
surface of TensorRT 10 or 11 that the build uses, and record what the build asked of it."""

from __future__ import annotations

import shutil
import sys
import types
from pathlib import Path

import onnx
import pytest
from support.engines import tiny_config

from compressive_rt.export.inspection import inspect_engine_dir
from compressive_rt.export.tensorrt_build import (
    build_engines,
    check_engine_compatibility,
    optimization_profiles,
)
from compressive_rt.runtime.backends.base import BackendUnavailable
from compressive_rt.runtime.backends.cuda import gpu_available
from compressive_rt.runtime.contract import entry_points
from compressive_rt.runtime.manifest import EngineError, load_manifest, sha256_file

CONFIG = tiny_config("conv")
NO_GPU_STACK = pytest.mark.skipif(gpu_available(), reason="a GPU stack is present here")


# ---- optimization profiles ------------------------------------------------------------------
def test_profiles_span_batch_one_to_max_and_tokens_one_to_seg_len():
    profiles = optimization_profiles(entry_points(CONFIG), max_batch=8, opt_batch=2)
    assert profiles["segment"]["tokens"] == ((1, 8), (2, 8), (8, 8))
    # per layer, batch-first, head-major: [B, H, C+M, dh]
    for layer in (0, 1):
        assert profiles["segment"][f"mem_k.{layer}"] == ((1, 4, 20, 8), (2, 4, 20, 8),
                                                         (8, 4, 20, 8))
        assert profiles["extend"][f"seg_k.{layer}"] == ((1, 4, 8, 8), (2, 4, 8, 8), (8, 4, 8, 8))
    assert "mem_k" not in profiles["segment"] and "mem_k.2" not in profiles["segment"]
    assert profiles["extend"]["tokens"] == ((1, 1), (2, 1), (8, 8))
    assert set(profiles["extend"]) == set(entry_points(CONFIG)["extend"].input_names)


def test_profiles_refuse_opt_batch_above_max_batch():
    with pytest.raises(EngineError, match="opt_batch=9, max_batch=8"):
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
    with pytest.raises(EngineError, match="precision must be one of fp32, fp16, bf16"):
        build_engines(engine_dir, precision="int8")


@NO_GPU_STACK
@pytest.mark.parametrize("backend", ["tensorrt", "onnxruntime-cuda", "onnxruntime-tensorrt"])
def test_gpu_backends_without_a_gpu_stack_name_the_extra(engine_dir, backend):
    from compressive_rt.runtime.backends.ort_gpu import OrtCudaBackend, OrtTensorrtBackend
    from compressive_rt.runtime.backends.tensorrt import TensorRTBackend

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
def test_device_buffer_layout_matches_the_cpu_backend(engine, monkeypatch, compress_fn):
    """Shared scratch arenas, 2D row writes and address bindings, exercised through ONNX
    Runtime CPU on host pointers: same logits and state as the numpy CPU backend."""
    import numpy as np

    from compressive_rt.runtime.backends import cuda, ort_gpu
    from compressive_rt.runtime.backends.ort import OrtCpuBackend
    from compressive_rt.runtime.session import Session

    fake = HostCudart()
    monkeypatch.setattr(cuda, "import_cudart", lambda: fake)
    monkeypatch.setattr(ort_gpu, "import_cudart", lambda: fake)
    monkeypatch.setattr(ort_gpu, "gpu_info", lambda device: {})

    class HostPointerBackend(ort_gpu.OrtGpuBackend):
        provider = "CPUExecutionProvider"
        device_type = "cpu"

        def providers(self, entry, profile):
            return ["CPUExecutionProvider"]

    out = engine(compress_fn)[1]
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


# ---- build: TensorRT 10 / 11 dispatch and atomic replacement (fake tensorrt module) --------
class FakeTensorRT(types.ModuleType):
    """The part of the `tensorrt` module that export.tensorrt_build uses, as TensorRT `version`
    exposes it: 11.x has no FP16/BF16/precision-constraint flags and no platform_has_fast_fp16
    (NVIDIA's "Removed Python APIs" list). A fake because no GPU or TensorRT exists here; it
    records every flag the build sets and fails the build numbered `fail_on_build` (1-based)."""

    def __init__(self, version: str, fail_on_build: int | None = None) -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        major = int(version.split(".")[0])
        flags = ["TF32", "REFIT"] + (["FP16", "BF16", "OBEY_PRECISION_CONSTRAINTS",
                                      "PREFER_PRECISION_CONSTRAINTS"] if major < 11 else [])
        self.BuilderFlag = types.SimpleNamespace(**{name: name for name in flags})
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
        self.LayerType = types.SimpleNamespace(NORMALIZATION="NORMALIZATION", SOFTMAX="SOFTMAX",
                                               MATRIX_MULTIPLY="MATRIX_MULTIPLY")
        self.float32 = "float32"
        self.major, self.fail_on_build = major, fail_on_build
        self.creation_flags, self.set_flags, self.cleared_flags = [], [], []
        self.pinned_layers, self.builds = [], 0
        fake = self

        class Logger:
            WARNING = 2

            def __init__(self, severity):
                pass

        class Layer:
            def __init__(self, kind):
                self.type, self.precision = kind, None

            def set_output_type(self, index, dtype):
                fake.pinned_layers.append((self.type, dtype))

        class Network:
            def __init__(self):
                self.inputs = []
                self.layers = [Layer(k) for k in ("NORMALIZATION", "MATRIX_MULTIPLY", "SOFTMAX")]
                self.num_layers = len(self.layers)

            @property
            def num_inputs(self):
                return len(self.inputs)

            def get_input(self, i):
                return types.SimpleNamespace(name=self.inputs[i])

            def get_layer(self, i):
                return self.layers[i]

        class OnnxParser:
            def __init__(self, network, logger):
                self.network, self.num_errors = network, 0

            def parse_from_file(self, path):
                self.network.inputs = [v.name for v in onnx.load(path).graph.input]
                self.network.graph = Path(path).name
                return True

        class Config:
            def set_memory_pool_limit(self, pool, size):
                pass

            def set_flag(self, flag):
                fake.set_flags.append(flag)

            def clear_flag(self, flag):
                fake.cleared_flags.append(flag)

            def add_optimization_profile(self, profile):
                self.profile = profile

            def create_timing_cache(self, data):
                return data

            def set_timing_cache(self, cache, ignore_mismatch):
                pass

            def get_timing_cache(self):
                return types.SimpleNamespace(serialize=lambda: b"timing cache")

        class Profile:
            def __init__(self):
                self.shapes = {}

            def set_shape(self, name, low, opt, high):
                self.shapes[name] = (low, opt, high)

        class Builder:
            def __init__(self, logger):
                if fake.major < 11:
                    self.platform_has_fast_fp16 = True

            def create_network(self, flags):
                fake.creation_flags.append(flags)
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                fake.builds += 1
                if fake.builds == fake.fail_on_build:
                    raise RuntimeError("CUDA out of memory while building")
                return f"plan of {network.graph} by TensorRT {fake.__version__}".encode()

        self.Logger, self.OnnxParser, self.Builder = Logger, OnnxParser, Builder


FAKE_GPU = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


@pytest.fixture
def fake_tensorrt(monkeypatch):
    """install(version, fail_on_build=None) puts a FakeTensorRT where `import tensorrt` finds it
    and a fake GPU behind gpu_info; returns the module."""
    import compressive_rt.export.tensorrt_build as tensorrt_build

    monkeypatch.setattr(tensorrt_build, "gpu_info", lambda device=0: dict(FAKE_GPU))

    def install(version: str, fail_on_build: int | None = None) -> FakeTensorRT:
        module = FakeTensorRT(version, fail_on_build)
        monkeypatch.setitem(sys.modules, "tensorrt", module)
        return module

    return install


@pytest.fixture
def own_engine(engine_dir, tmp_path):
    """A private copy of the tiny fp32 engine directory."""
    out = tmp_path / "engine"
    shutil.copytree(engine_dir, out)
    return out


@pytest.fixture(scope="module")
def fp16_engine_dir(engine):
    """The session's tiny fp16 conv engine (read only: a build works on a copy)."""
    return engine("conv", "fp16")[1]


def directory_bytes(path: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(path.iterdir()) if f.is_file()}


def build_quietly(engine: Path, precision: str, **options) -> dict:
    return build_engines(engine, precision=precision, max_batch=2, opt_batch=1,
                         log=lambda *_: None, **options)


def test_tensorrt_10_builds_fp16_from_fp32_graphs_with_the_weak_typing_flags(fake_tensorrt,
                                                                             own_engine):
    trt = fake_tensorrt("10.8.0.43")
    section = build_quietly(own_engine, "fp16")
    assert trt.creation_flags == [0, 0, 0]  # explicit batch, not strongly typed
    assert trt.set_flags == ["FP16", "PREFER_PRECISION_CONSTRAINTS"] * 3
    assert trt.cleared_flags == ["TF32"] * 3
    assert trt.pinned_layers == [("NORMALIZATION", "float32"), ("SOFTMAX", "float32")] * 3
    built = section["engines"]["fp16"]
    assert (built["typing"], built["graph_precision"]) == ("weak", "fp32")


@pytest.mark.slow
def test_tensorrt_10_builds_fp16_graphs_strongly_typed(fake_tensorrt, fp16_engine_dir,
                                                       tmp_path):
    engine = tmp_path / "engine16"
    shutil.copytree(fp16_engine_dir, engine)
    trt = fake_tensorrt("10.8.0.43")
    section = build_quietly(engine, "fp16")
    assert trt.creation_flags == [1 << 1] * 3  # 1 << STRONGLY_TYPED
    assert trt.set_flags == [] and trt.pinned_layers == []
    assert section["engines"]["fp16"]["typing"] == "strong"


def test_tensorrt_11_builds_fp32_strongly_typed_with_tf32_cleared(fake_tensorrt, own_engine):
    trt = fake_tensorrt("11.4.0.106")
    section = build_quietly(own_engine, "fp32")
    assert trt.creation_flags == [0, 0, 0]  # strongly typed is TensorRT 11's only mode
    assert trt.set_flags == [] and trt.pinned_layers == []
    assert trt.cleared_flags == ["TF32"] * 3
    assert section["tensorrt_version"] == "11.4.0.106"
    assert section["engines"]["fp32"]["typing"] == "strong"


@pytest.mark.slow
def test_tensorrt_11_builds_fp16_plans_from_fp16_graphs(fake_tensorrt, fp16_engine_dir,
                                                        tmp_path):
    engine = tmp_path / "engine16"
    shutil.copytree(fp16_engine_dir, engine)
    trt = fake_tensorrt("11.4.0.106")
    section = build_quietly(engine, "fp16")
    assert trt.creation_flags == [0, 0, 0] and trt.set_flags == []
    built = section["engines"]["fp16"]
    assert (built["typing"], built["graph_precision"]) == ("strong", "fp16")


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_tensorrt_11_refuses_reduced_precision_from_fp32_graphs(fake_tensorrt, own_engine,
                                                                 precision):
    trt = fake_tensorrt("11.4.0.106")
    before = directory_bytes(own_engine)
    with pytest.raises(EngineError, match=r"TensorRT 11 builds strongly typed networks only.*"
                                          r"holds fp32 graphs.*--precision fp16"):
        build_quietly(own_engine, precision)
    assert trt.builds == 0 and directory_bytes(own_engine) == before


@pytest.mark.slow
def test_fp16_graphs_build_only_fp16_plans(fake_tensorrt, fp16_engine_dir):
    fake_tensorrt("10.8.0.43")
    with pytest.raises(EngineError, match=r"holds fp16 graphs .*build --precision fp16, or "
                                          r"export fp32 graphs for fp32 plans"):
        build_quietly(fp16_engine_dir, "fp32")


@pytest.mark.parametrize("version", ["9.3.0.1", "12.0.1.3"])
def test_tensorrt_outside_10_and_11_is_refused_naming_the_version(fake_tensorrt, own_engine,
                                                                  version):
    trt = fake_tensorrt(version)
    with pytest.raises(BackendUnavailable, match=rf"TensorRT {version} is installed; this project "
                                                 r"supports TensorRT 10\.x and 11\.x"):
        build_quietly(own_engine, "fp32")
    assert trt.builds == 0


def test_build_records_plan_files_hashes_and_sizes(fake_tensorrt, own_engine, tmp_path):
    fake_tensorrt("10.8.0.43")
    cache = tmp_path / "timing.cache"
    section = build_quietly(own_engine, "fp32", timing_cache=cache)
    plans = section["engines"]["fp32"]["plans"]
    assert set(plans) == {"segment", "extend", "commit"}
    for entry, plan in plans.items():
        path = own_engine / f"{entry}.fp32.plan"
        assert plan == {"file": path.name, "sha256": sha256_file(path),
                        "bytes": path.stat().st_size}
        assert path.read_bytes() == f"plan of {entry}.onnx by TensorRT 10.8.0.43".encode()
    assert load_manifest(own_engine).data["tensorrt"] == section
    assert cache.read_bytes() == b"timing cache"


def test_failed_build_leaves_plans_and_manifest_exactly_as_they_were(fake_tensorrt, own_engine):
    fake_tensorrt("10.8.0.43")
    build_quietly(own_engine, "fp32")
    before = directory_bytes(own_engine)
    trt = fake_tensorrt("10.8.0.43", fail_on_build=2)  # segment builds, extend fails
    with pytest.raises(RuntimeError, match="out of memory"):
        build_engines(own_engine, precision="fp32", max_batch=4, log=lambda *_: None)
    assert trt.builds == 2
    assert directory_bytes(own_engine) == before
    assert sorted(p.name for p in own_engine.parent.iterdir()) == ["engine"]  # no temp dirs


def test_plans_of_another_tensorrt_version_are_dropped_on_rebuild(fake_tensorrt, own_engine):
    fake_tensorrt("10.8.0.43")
    build_quietly(own_engine, "fp16")
    build_quietly(own_engine, "fp32")
    assert set(load_manifest(own_engine).data["tensorrt"]["engines"]) == {"fp16", "fp32"}
    fake_tensorrt("11.4.0.106")
    section = build_quietly(own_engine, "fp32")
    assert set(section["engines"]) == {"fp32"}
    assert sorted(p.name for p in own_engine.glob("*.plan")) == [
        "commit.fp32.plan", "extend.fp32.plan", "segment.fp32.plan"]


# ---- TensorRT backend calls, CUDA graphs and close (fake context and CUDA runtime) ----------
class GraphCudart(HostCudart):
    """HostCudart plus the stream-capture and graph calls, recording them in `events`."""

    class cudaStreamCaptureMode:  # noqa: N801
        cudaStreamCaptureModeThreadLocal = 1

    def __init__(self, events: list) -> None:
        super().__init__()
        self.events, self.capturing, self.graphs = events, False, 0

    def cudaStreamBeginCapture(self, stream, mode):  # noqa: N802
        self.capturing = True
        return (0,)

    def cudaStreamEndCapture(self, stream):  # noqa: N802
        self.capturing, self.graphs = False, self.graphs + 1
        return 0, f"graph{self.graphs}"

    def cudaGraphInstantiate(self, graph, flags):  # noqa: N802
        return 0, f"exec of {graph}"

    def cudaGraphLaunch(self, executable, stream):  # noqa: N802
        self.events.append(("launch", executable))
        return (0,)

    def cudaGraphExecDestroy(self, executable):  # noqa: N802
        self.events.append(("destroy", executable))
        return (0,)

    def cudaGraphDestroy(self, graph):  # noqa: N802
        self.events.append(("destroy", graph))
        return (0,)

    def cudaStreamDestroy(self, stream):  # noqa: N802
        self.events.append(("destroy", "stream"))
        return (0,)


class FakeContext:
    """An execution context that records shape changes and enqueues (captured or not)."""

    def __init__(self, events: list, cudart: GraphCudart) -> None:
        self.events, self.cudart, self.shapes = events, cudart, {}

    def set_input_shape(self, name, shape):
        if self.shapes.get(name) != shape:
            self.events.append(("shape", name, shape))
        self.shapes[name] = shape
        return True

    def set_tensor_address(self, name, ptr):
        pass

    def get_tensor_shape(self, name):
        return (2, self.shapes["tokens"][1], 256)

    def execute_async_v3(self, stream):
        self.events.append(("capture" if self.cudart.capturing else "enqueue",))
        return True


@pytest.fixture
def graph_backend(monkeypatch):
    """A TensorRTBackend with use_cuda_graph on a fake context and CUDA runtime (its __init__
    needs a GPU and plans: the attributes it sets are set here instead)."""
    from compressive_rt.runtime.backends import cuda
    from compressive_rt.runtime.backends.tensorrt import TensorRTBackend

    events = []
    fake = GraphCudart(events)
    monkeypatch.setattr(cuda, "import_cudart", lambda: fake)
    backend = object.__new__(TensorRTBackend)
    backend.cudart, backend.use_cuda_graph = fake, True
    backend.stream, backend._allocations = cuda.CudaStream(), []
    backend.contexts, backend.engines = {"extend": FakeContext(events, fake)}, {"extend": None}
    backend._bound, backend._graphs = {}, []
    return backend, events


def device_buffer(shape, ptr):
    import numpy as np

    from compressive_rt.runtime.backends.cuda import DeviceBuffer

    return DeviceBuffer(ptr, shape, np.dtype(np.int32), None)


def test_cuda_graph_is_captured_only_after_an_ordinary_enqueue_at_the_same_shapes(graph_backend):
    backend, events = graph_backend
    one, three = device_buffer((2, 1), 1000), device_buffer((2, 3), 1000)
    logits = {"logits": device_buffer((2, 1, 256), 2000)}
    logits3 = {"logits": device_buffer((2, 3, 256), 2000)}
    call_one = backend.bind("extend", {"tokens": one}, logits, tokens=1)  # bound once each,
    call_three = backend.bind("extend", {"tokens": three}, logits3, tokens=3)  # as a Session
    for call in (call_one, call_three, call_one, call_one, call_three, call_three, call_one,
                 call_three):
        backend.run(call)
    assert events == [
        ("shape", "tokens", (2, 1)), ("enqueue",),
        ("shape", "tokens", (2, 3)), ("enqueue",),
        ("shape", "tokens", (2, 1)), ("enqueue",),  # seen before, but shapes just changed
        ("capture",), ("launch", "exec of graph1"),
        ("shape", "tokens", (2, 3)), ("enqueue",),
        ("capture",), ("launch", "exec of graph2"),
        ("shape", "tokens", (2, 1)), ("launch", "exec of graph1"),
        ("shape", "tokens", (2, 3)), ("launch", "exec of graph2"),
    ]


def test_close_destroys_graphs_executables_stream_and_frees_buffers(graph_backend):
    import numpy as np

    backend, events = graph_backend
    tokens = backend.new_buffer((2, 1), np.dtype(np.int32))
    logits = {"logits": device_buffer((2, 1, 256), 2000)}
    call = backend.bind("extend", {"tokens": tokens}, logits, tokens=1)
    for _ in range(2):
        backend.run(call)
    events.clear()
    backend.close()
    backend.close()  # idempotent
    assert events == [("destroy", "exec of graph1"), ("destroy", "graph1"),
                      ("destroy", "stream")]
    assert backend.cudart.blocks == {} and backend._graphs == []


def test_copy_last_logits_copies_each_row_at_the_index_in_one_copy(monkeypatch, engine_dir):
    import numpy as np

    from compressive_rt.runtime.backends import cuda
    from compressive_rt.runtime.backends.ort import OrtCpuBackend

    fake = HostCudart()
    monkeypatch.setattr(cuda, "import_cudart", lambda: fake)
    stream = cuda.CudaStream()
    host = np.arange(4 * 3 * 5, dtype=np.float32).reshape(4, 3, 5)  # [B, T, V]
    memory = cuda.DeviceMemory(host.nbytes)
    cpu = OrtCpuBackend(load_manifest(engine_dir))
    for batch in (1, 3, 4):  # the call's rows [0, batch) into a host array with room for 6
        buffer = cuda.DeviceBuffer(memory.ptr, (batch, 3, 5), host.dtype, memory)
        stream.from_host(buffer, host[:batch])
        got = np.full((6, 5), -1, np.float32)
        got_cpu = got.copy()
        stream.copy_rows_to_host(buffer, 1, got)
        cpu.copy_last_logits(host[:batch], 1, got_cpu)
        want = np.concatenate([host[:batch, 1], np.full((6 - batch, 5), -1, np.float32)])
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got_cpu, want)
    with pytest.raises(ValueError, match=r"host_out must be a C-contiguous float32 array of "
                                         r"shape \(4 or more, 5\)"):
        stream.copy_rows_to_host(buffer, 2, np.zeros((4, 4), np.float32))


def test_session_closes_its_backend_at_the_end_of_a_with_block(engine_dir):
    from compressive_rt.runtime.backends.ort import OrtCpuBackend
    from compressive_rt.runtime.session import Session

    closed = []

    class ClosingBackend(OrtCpuBackend):
        def close(self):
            closed.append(True)

    with Session(engine_dir, backend=ClosingBackend(load_manifest(engine_dir))) as session:
        session.feed({session.add_stream(): [1, 2, 3]})
        assert closed == []
    assert closed == [True]


def test_build_without_a_precision_builds_the_graphs_own(fake_tensorrt, fp16_engine_dir,
                                                         tmp_path):
    engine = tmp_path / "engine16"
    shutil.copytree(fp16_engine_dir, engine)
    fake_tensorrt("11.4.0.106")
    section = build_engines(engine, max_batch=2, log=lambda *_: None)
    assert set(section["engines"]) == {"fp16"}
