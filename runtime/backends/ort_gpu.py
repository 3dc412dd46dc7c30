"""ONNX Runtime on an NVIDIA GPU: the CUDA execution provider, or the TensorRT one.

Both run the exported ONNX graphs (no `ctrt build-engine` step: the TensorRT EP builds and
caches its own engines under <engine dir>/ort_tensorrt_cache, with the same optimization
profiles as the native plans). Buffers are device allocations from cuda-python, bound by
address with IOBinding, so a step copies no state; the layout is the native backend's
(Backend.allocate). ONNX Runtime runs on its own stream and returns when the outputs
are ready; the backend's own stream (row writes, uploads) is synchronized before each call.
"""

from __future__ import annotations

from typing import Any

from compressive_rt.errors import EngineError
from compressive_rt.runtime.backends.base import Backend
from compressive_rt.runtime.backends.cuda import (
    GPU_EXTRA,
    CudaStream,
    DeviceBuffer,
    DeviceBuffers,
    GpuUnavailable,
    check,
    gpu_info,
    import_cudart,
    optimization_profiles,
)
from compressive_rt.runtime.manifest import Manifest

CUDA_EP, TENSORRT_EP = "CUDAExecutionProvider", "TensorrtExecutionProvider"


def _shapes(profile: dict, which: int) -> str:
    """ORT's profile syntax: "name:1x128,name2:8x1x128x512"."""
    return ",".join(f"{name}:{'x'.join(str(d) for d in shapes[which])}"
                    for name, shapes in profile.items())


class OrtGpuBackend(DeviceBuffers, Backend):
    """ONNX Runtime with a GPU provider list; subclasses choose the providers."""

    name = "onnxruntime-gpu"
    provider = CUDA_EP
    device_type = "cuda"  # IOBinding's name for where the bound addresses live

    def __init__(self, manifest: Manifest, device: int = 0, max_batch: int = 8) -> None:
        super().__init__(manifest)
        try:
            import onnxruntime as ort
        except ImportError:
            raise GpuUnavailable(f"onnxruntime is not installed: {GPU_EXTRA}") from None
        if self.provider not in ort.get_available_providers():
            raise GpuUnavailable(f"this onnxruntime has no {self.provider} (it has "
                                 f"{', '.join(ort.get_available_providers())}): replace the "
                                 f"onnxruntime package by onnxruntime-gpu, {GPU_EXTRA}")
        import_cudart()
        gpu_info(device)  # raises GpuUnavailable without a GPU
        check(import_cudart().cudaSetDevice(device))
        self.device = device
        self.max_batch = max_batch
        self.stream = CudaStream()
        profiles = optimization_profiles(manifest.contract, max_batch, 1)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.sessions: dict[str, Any] = {}
        for entry, spec in manifest.contract.items():
            path = manifest.graph_path(entry)
            providers = self.providers(entry, profiles[entry])
            try:
                session = ort.InferenceSession(str(path), options, providers=providers)
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
                raise EngineError(f"{path} cannot be loaded by ONNX Runtime with "
                                  f"{self.provider}: {exc}") from None
            if session.get_providers()[0] != self.provider:
                raise GpuUnavailable(f"ONNX Runtime fell back to {session.get_providers()} for "
                                     f"{path}: {self.provider} could not start")
            names_in = [i.name for i in session.get_inputs()]
            if names_in != spec.input_names:
                raise EngineError(f"{path}: graph inputs {names_in} do not match the "
                                  f"contract's {spec.input_names}")
            self.sessions[entry] = session

    def cuda_options(self) -> dict:
        # use_tf32=0: TF32 GEMMs are too coarse for the contract's fp32 tolerance.
        return {"device_id": self.device, "cudnn_conv_algo_search": "HEURISTIC",
                "do_copy_in_default_stream": True, "use_tf32": 0}

    def providers(self, entry: str, profile: dict) -> list:
        return [(CUDA_EP, self.cuda_options())]

    def close(self) -> None:
        """Drop the ONNX Runtime sessions, then free the buffers and the stream."""
        self.sessions.clear()
        self.release_device()


    def bind(self, entry: str, feeds: dict[str, DeviceBuffer], fetches: dict[str, DeviceBuffer],
             tokens: int | None = None) -> tuple[Any, Any]:
        session = self.sessions[entry]
        binding = session.io_binding()
        for name, b in feeds.items():
            binding.bind_input(name, self.device_type, self.device, b.dtype, list(b.shape), b.ptr)
        for name, b in fetches.items():
            binding.bind_output(name, self.device_type, self.device, b.dtype, list(b.shape),
                                b.ptr)
        return session, binding

    def run(self, handle: tuple[Any, Any]) -> None:
        session, binding = handle
        self.stream.synchronize()  # row writes and uploads on our stream come first
        session.run_with_iobinding(binding)


class OrtCudaBackend(OrtGpuBackend):
    name = "onnxruntime-cuda"
    provider = CUDA_EP


class OrtTensorrtBackend(OrtGpuBackend):
    """The TensorRT execution provider, falling back to CUDA for any node it does not take."""

    name = "onnxruntime-tensorrt"
    provider = TENSORRT_EP

    def __init__(self, manifest: Manifest, device: int = 0, max_batch: int = 8,
                 fp16: bool = False, workspace_mib: int = 4096) -> None:
        self.fp16 = fp16
        self.workspace_mib = workspace_mib
        super().__init__(manifest, device=device, max_batch=max_batch)

    def providers(self, entry: str, profile: dict) -> list:
        cache = self.manifest.engine_dir / "ort_tensorrt_cache"
        trt_options = {
            "device_id": self.device,
            "trt_fp16_enable": self.fp16,
            "trt_max_workspace_size": self.workspace_mib << 20,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache),
            "trt_profile_min_shapes": _shapes(profile, 0),
            "trt_profile_opt_shapes": _shapes(profile, 1),
            "trt_profile_max_shapes": _shapes(profile, 2),
        }
        return [(TENSORRT_EP, trt_options), (CUDA_EP, self.cuda_options())]
