"""Backends by name: the one place that maps `--backend` choices to backend classes (each
imported only when chosen, so the GPU stacks load only where they are used)."""

from __future__ import annotations

from compressive_rt.errors import RuntimeInputError
from compressive_rt.runtime.backends.base import Backend
from compressive_rt.runtime.manifest import Manifest

BACKENDS = ("onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt")


def open_backend(name: str, manifest: Manifest, threads: int | None = None,
                 max_streams: int = 1, prepack: str = "all") -> Backend:
    """A backend by name, or "auto": native TensorRT when the engine directory holds plans
    and a GPU with TensorRT is here, else ONNX Runtime CPU. `prepack` applies to ONNX Runtime
    CPU: which sessions re-lay weights out for speed, each with its own copy ("all", "decode"
    or "none": runtime/backends/ort.py)."""
    if name == "auto":
        from compressive_rt.runtime.backends.tensorrt import tensorrt_available

        name = "tensorrt" if "tensorrt" in manifest.data and tensorrt_available() \
            else "onnxruntime-cpu"
    if name == "onnxruntime-cpu":
        from compressive_rt.runtime.backends.ort import OrtCpuBackend

        return OrtCpuBackend(manifest, threads=threads, prepack=prepack)
    if name == "onnxruntime-cuda":
        from compressive_rt.runtime.backends.ort_gpu import OrtCudaBackend

        return OrtCudaBackend(manifest, max_batch=max_streams)
    if name == "onnxruntime-tensorrt":
        from compressive_rt.runtime.backends.ort_gpu import OrtTensorrtBackend

        return OrtTensorrtBackend(manifest, max_batch=max_streams)
    if name == "tensorrt":
        from compressive_rt.runtime.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(manifest)
    raise RuntimeInputError(f"unknown backend {name!r}; choose auto or one of "
                            f"{', '.join(BACKENDS)}")
