"""Native TensorRT backend (10.x and 11.x): the plans of `ctrt build-engine`, device buffers via
cuda-python.

Buffers come from Backend.allocate: every tensor the Session asks for gets its own device
allocation (the Session holds the two ping-pong sets of the memory state and swaps them), and
tensors with a token axis (extend's tokens, logits, new_h/k/v) are views of one allocation per
name sized for T = L, so every token count shares it. Shapes come from the contract's specs,
wherever their batch axis is. A bound call (`bind`, once per call signature: the
Session keeps the handles) carries its addresses and, for `extend`, its token count; `run` sets
them on the entry point's context only when another call ran on it in between, so a
steady-state decode step only enqueues `execute_async_v3`.

With use_cuda_graph, a bound call is captured into a CUDA graph on its second run and
replayed from then on, but never in a call that changed the context's input shapes or
addresses: TensorRT may set up resources on the first enqueue after a shape change, which a
capture must not record, so such a call enqueues normally and the next call of that signature
captures. `close()` destroys the graphs, their executables and the stream, and frees the
buffers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from compressive_rt.errors import EngineError
from compressive_rt.runtime.backends.base import Backend
from compressive_rt.runtime.backends.cuda import (
    CudaStream,
    DeviceBuffer,
    DeviceBuffers,
    GpuUnavailable,
    check,
    check_engine_compatibility,
    gpu_info,
    import_cudart,
    import_tensorrt,
)
from compressive_rt.runtime.contract import TensorSpec
from compressive_rt.runtime.manifest import Manifest, sha256_file


@dataclass(eq=False)
class TensorRTCall:
    """A bound call: its context, the (name, address, shape) of every input and output, and
    once captured its CUDA graph (graph, executable)."""

    entry: str
    context: Any
    inputs: tuple[tuple[str, int, tuple[int, ...]], ...]
    outputs: tuple[tuple[str, int, tuple[int, ...]], ...]
    enqueued: bool = False  # run once as an ordinary enqueue at its own shapes
    graph: tuple[Any, Any] | None = None


class TensorRTBackend(DeviceBuffers, Backend):
    name = "tensorrt"

    def __init__(self, manifest: Manifest, precision: str | None = None, device: int = 0,
                 use_cuda_graph: bool = False) -> None:
        super().__init__(manifest)
        trt = import_tensorrt()
        cudart = import_cudart()
        gpu = gpu_info(device)  # raises GpuUnavailable without a GPU
        section = manifest.data.get("tensorrt")
        if not section or not section.get("engines"):
            raise EngineError(f"{manifest.engine_dir} holds no TensorRT plans: build them with "
                              f"`ctrt build-engine {manifest.engine_dir}`")
        check_engine_compatibility(section, trt.__version__, gpu["name"],
                                   gpu["compute_capability"])
        engines = section["engines"]
        precision = precision or ("fp32" if "fp32" in engines else next(iter(engines)))
        if precision not in engines:
            raise EngineError(f"{manifest.engine_dir} has TensorRT plans for "
                              f"{', '.join(engines)}, not {precision}: build them with "
                              f"`ctrt build-engine --precision {precision}`")
        built = engines[precision]
        self.precision = precision
        self.max_batch = int(built["max_batch"])
        self.use_cuda_graph = use_cuda_graph
        self.trt = trt
        self.cudart = cudart
        check(cudart.cudaSetDevice(device))
        self.stream = CudaStream()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engines: dict[str, Any] = {}
        self.contexts: dict[str, Any] = {}
        for entry, spec in manifest.contract.items():
            plan = built["plans"][entry]
            path = manifest.engine_dir / plan["file"]
            if not path.is_file():
                raise EngineError(f"{path} is missing (listed in the manifest's tensorrt section)")
            if sha256_file(path) != plan["sha256"]:
                raise EngineError(f"{path} does not match its sha256 in the manifest: rebuild "
                                  f"with `ctrt build-engine`")
            engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is None:
                raise EngineError(f"TensorRT could not deserialize {path}: rebuild it here with "
                                  f"`ctrt build-engine`")
            self._check_io(engine, spec, path)
            self.engines[entry] = engine
            self.contexts[entry] = engine.create_execution_context()
        self._bound: dict[str, TensorRTCall] = {}  # entry point -> the call its context holds
        self._graphs: list[tuple[Any, Any]] = []  # every captured (graph, executable)

    def _check_io(self, engine: Any, entry: Any, path: Any) -> None:
        trt = self.trt
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if sorted(inputs) != sorted(entry.input_names) or \
                sorted(outputs) != sorted(entry.output_names):
            raise EngineError(f"{path}: engine tensors {inputs} / {outputs} do not match the "
                              f"contract's {entry.input_names} / {entry.output_names}")
        types = {"float32": trt.float32, "int32": trt.int32, "bool": trt.bool}
        for spec in (*entry.inputs, *entry.outputs):
            if engine.get_tensor_dtype(spec.name) != types[spec.dtype]:
                raise EngineError(f"{path}: tensor {spec.name} is "
                                  f"{engine.get_tensor_dtype(spec.name)} in the engine, "
                                  f"{spec.dtype} in the contract")

    # ---- buffers ---------------------------------------------------------------------------
    def allocate(self, spec: TensorSpec, batch: int, tokens: int | None = None) -> DeviceBuffer:
        if batch > self.max_batch:
            raise EngineError(f"the TensorRT plans were built for batch <= {self.max_batch}, "
                              f"asked for {batch}: rebuild with `ctrt build-engine "
                              f"--max-batch {batch}`")
        return super().allocate(spec, batch, tokens)


    # ---- calls -----------------------------------------------------------------------------
    def bind(self, entry: str, feeds: dict[str, DeviceBuffer], fetches: dict[str, DeviceBuffer],
             tokens: int | None = None) -> TensorRTCall:
        return TensorRTCall(entry, self.contexts[entry],
                            tuple((n, b.ptr, b.shape) for n, b in feeds.items()),
                            tuple((n, b.ptr, b.shape) for n, b in fetches.items()))

    def run(self, handle: TensorRTCall) -> None:
        context = handle.context
        # One context per entry point holds the addresses and shapes of the call last run on
        # it: a call sets them only when another call of the same entry point ran in between.
        rebound = self._bound.get(handle.entry) is not handle
        if rebound:
            for name, ptr, shape in handle.inputs:
                if not context.set_input_shape(name, shape):
                    raise EngineError(f"{handle.entry}: input {name} shape {shape} is outside "
                                      f"the plan's optimization profile")
                context.set_tensor_address(name, ptr)
            for name, ptr, shape in handle.outputs:
                got = tuple(context.get_tensor_shape(name))
                if got != shape:
                    raise EngineError(f"{handle.entry}: output {name} has shape {got}, the "
                                      f"bound buffer {shape}")
                context.set_tensor_address(name, ptr)
            self._bound[handle.entry] = handle
        if handle.graph is None and self.use_cuda_graph and handle.enqueued and not rebound:
            handle.graph = self._capture(context)
            self._graphs.append(handle.graph)
        if handle.graph is not None:
            check(self.cudart.cudaGraphLaunch(handle.graph[1], self.stream.handle))
            return
        if not context.execute_async_v3(int(self.stream)):
            raise EngineError(f"TensorRT failed to enqueue {handle.entry}; see the TensorRT log "
                              f"above")
        handle.enqueued = True

    def _capture(self, context: Any) -> tuple[Any, Any]:
        """One enqueue captured into a CUDA graph: (graph, instantiated executable)."""
        cudart = self.cudart
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        check(cudart.cudaStreamBeginCapture(self.stream.handle, mode))
        ok = context.execute_async_v3(int(self.stream))
        graph = check(cudart.cudaStreamEndCapture(self.stream.handle))
        if not ok:
            cudart.cudaGraphDestroy(graph)
            raise EngineError("TensorRT failed to enqueue during CUDA graph capture")
        try:
            return graph, check(cudart.cudaGraphInstantiate(graph, 0))
        except BaseException:
            cudart.cudaGraphDestroy(graph)
            raise

    def synchronize(self) -> None:
        self.stream.synchronize()

    def close(self) -> None:
        """Destroy the CUDA graphs and their executables, the execution contexts and engines,
        then free the buffers and the stream. Idempotent."""
        if self.stream is not None and self.stream.handle is not None:
            self.stream.synchronize()  # no replay may still be running
        for graph, executable in self._graphs:
            self.cudart.cudaGraphExecDestroy(executable)
            self.cudart.cudaGraphDestroy(graph)
        self._graphs.clear()
        self._bound.clear()
        self.contexts.clear()
        self.engines.clear()
        self.release_device()


def tensorrt_available() -> bool:
    """True when TensorRT 10 or 11, cuda-python and a GPU are all present."""
    try:
        import_tensorrt()
        gpu_info()
    except GpuUnavailable:
        return False
    return True
