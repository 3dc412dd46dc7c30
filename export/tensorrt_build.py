"""`ctrt build-engine`: an engine directory's ONNX graphs -> TensorRT plans + manifest section.

One `.plan` per entry point and precision (`segment.fp16.plan`, ...), built with the TensorRT
10 Python API: explicit-batch network (the default in 10), ONNX parser, one optimization
profile per entry (batch 1..max_batch, opt at opt_batch; extend's tokens 1..L, opt 1: the
decode step), a workspace limit, an optional timing cache shared by all builds. The manifest
gains a `tensorrt` section: TensorRT version, GPU name and compute capability, and per
precision the profiles and plan files with their sha256. A plan only runs on the TensorRT
version and GPU it was built for; `check_engine_compatibility` refuses any other clearly.

TensorRT and cuda-python are imported inside functions: this module imports without them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from export.trt_lint import errors, format_issues, lint_graph
from runtime.backends.cuda import (
    GPU_EXTRA,
    GpuUnavailable,
    check_engine_compatibility,
    gpu_info,
    import_tensorrt,
)
from runtime.backends.plan import Shape, optimization_profiles
from runtime.manifest import (
    MANIFEST_NAME,
    EngineError,
    load_manifest,
    sha256_file,
    write_json_atomic,
)

__all__ = [
    "GPU_EXTRA",
    "PRECISIONS",
    "GpuUnavailable",
    "build_engines",
    "check_engine_compatibility",
    "optimization_profiles",
    "plan_name",
]
PRECISIONS = ("fp32", "fp16", "bf16")


def plan_name(entry: str, precision: str) -> str:
    return f"{entry}.{precision}.plan"


def _build_one(trt, logger, graph: Path, entry: str,
               profile_shapes: Mapping[str, tuple[Shape, Shape, Shape]], precision: str,
               workspace_mib: int, cache_bytes: bytes | None,
               optimization_level: int | None = None) -> tuple[bytes, bytes]:
    """Build one serialized plan; returns (plan, timing cache bytes)."""
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(graph)):  # resolves external weight files beside it
        messages = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineError(f"TensorRT could not parse {graph}:\n  " + "\n  ".join(messages))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if optimization_level is not None:
        config.builder_optimization_level = optimization_level  # 0..5, TensorRT's default 3
    if precision == "fp32":
        # TF32 GEMMs (on by default) keep ~10 mantissa bits: too coarse for the contract's
        # fp32 tolerance (1e-4 of the logit scale).
        config.clear_flag(trt.BuilderFlag.TF32)
    else:
        if precision == "fp16" and not builder.platform_has_fast_fp16:
            raise EngineError("this GPU has no fast fp16: build with --precision fp32")
        config.set_flag(trt.BuilderFlag.FP16 if precision == "fp16" else trt.BuilderFlag.BF16)
        # Normalization and softmax statistics overflow fp16 on long rows: keep them fp32.
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if layer.type in (trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX):
                layer.precision = trt.float32
                layer.set_output_type(0, trt.float32)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        low, opt, high = profile_shapes[tensor.name]
        profile.set_shape(tensor.name, low, opt, high)
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(cache_bytes or b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(f"TensorRT failed to build {entry} ({precision}) from {graph}; run "
                          f"with a larger --workspace-mib or see the log above")
    return bytes(plan), bytes(config.get_timing_cache().serialize())


def build_engines(engine_dir: Path | str, precision: str = "fp16", max_batch: int = 8,
                  opt_batch: int = 1, workspace_mib: int = 4096,
                  timing_cache: Path | str | None = None, optimization_level: int | None = None,
                  log=print) -> dict:
    """Build one plan per entry point into engine_dir; returns the manifest's tensorrt section."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    manifest = load_manifest(engine_dir)
    engine_dir = manifest.engine_dir
    profiles = optimization_profiles(manifest.contract, max_batch, opt_batch)
    for entry, spec in manifest.contract.items():
        found = errors(lint_graph(manifest.graph_path(entry), spec))
        if found:
            raise EngineError(f"{manifest.graph_path(entry)} fails the TensorRT lint:\n"
                              f"{format_issues(found)}")
    trt = import_tensorrt()
    gpu = gpu_info()
    logger = trt.Logger(trt.Logger.WARNING)
    cache_path = Path(timing_cache) if timing_cache else None
    cache_bytes = cache_path.read_bytes() if cache_path and cache_path.is_file() else None
    plans = {}
    for entry in manifest.contract:
        started = time.perf_counter()
        plan, cache_bytes = _build_one(trt, logger, manifest.graph_path(entry), entry,
                                       profiles[entry], precision, workspace_mib, cache_bytes,
                                       optimization_level)
        path = engine_dir / plan_name(entry, precision)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(plan)
        tmp.replace(path)
        plans[entry] = {"file": path.name, "sha256": sha256_file(path), "bytes": len(plan)}
        log(f"built {path.name} ({len(plan) / 2**20:.1f} MiB) in "
            f"{time.perf_counter() - started:.1f}s")
    if cache_path and cache_bytes:
        cache_path.write_bytes(cache_bytes)
    data = dict(manifest.data)
    section = data.get("tensorrt") or {}
    if section.get("tensorrt_version") != trt.__version__ or section.get("gpu") != gpu:
        section = {}  # plans of another version or GPU are useless here: start over
    section.update({"tensorrt_version": trt.__version__, "gpu": gpu})
    section.setdefault("engines", {})[precision] = {
        "max_batch": max_batch, "opt_batch": opt_batch, "workspace_mib": workspace_mib,
        "profiles": {entry: {name: {"min": list(s[0]), "opt": list(s[1]), "max": list(s[2])}
                             for name, s in shapes.items()}
                     for entry, shapes in profiles.items()},
        "plans": plans,
    }
    data["tensorrt"] = section
    write_json_atomic(engine_dir / MANIFEST_NAME, data)
    return section

