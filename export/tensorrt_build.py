"""`ctrt build-engine`: an engine directory's ONNX graphs -> TensorRT plans + manifest section.

One `.plan` per entry point and precision (`segment.fp16.plan`, ...): ONNX parser, one
optimization profile per entry (batch 1..max_batch, opt at opt_batch; extend's tokens 1..L,
opt 1: the decode step), a workspace limit, an optional timing cache shared by all builds.

TensorRT 10.x and 11.x are supported; `build_recipe` says how each builds:
  - TensorRT 11 removed weak typing (BuilderFlag.FP16/BF16, the precision-constraint flags,
    platform_has_fast_fp16): every network is strongly typed and the ONNX graph's types are
    the engine's precision. fp32 plans come from fp32 graphs, fp16 plans from the fp16 graphs
    of `ctrt export --precision fp16` (fp16 weights and activations; LayerNorm, Softmax and
    most_used's slot counting fp32; the contract's inputs and outputs, state included, stay
    fp32 with Casts at the edges, so the runtime binds the same buffers for every precision).
    This project exports no bf16 graph, so TensorRT 11 builds no bf16 plan.
  - TensorRT 10 builds fp16 graphs the same way (strongly typed) and fp32 graphs as before:
    fp32, or weakly typed fp16/bf16 (builder flags, LayerNorm and Softmax pinned to fp32).
  - fp32 plans clear BuilderFlag.TF32 (on by default): TF32 GEMMs keep ~10 mantissa bits, too
    coarse for the contract's 1e-4 of the logit scale. TensorRT 11's migration guide does not
    list TF32 among the removed flags; the clear is guarded in case a release drops it.
Any other TensorRT major is refused naming the installed version (runtime.backends.cuda).

The directory is replaced atomically: everything is built into a temporary sibling copy (the
graphs and weights copied), swapped in only when every plan and the manifest are written, so a
failure leaves the previous plans and manifest exactly as they were. The manifest gains a
`tensorrt` section: TensorRT version, GPU, and per precision the typing, profiles and plan
files with their sha256 and size in bytes. A plan only runs on the TensorRT version and GPU it
was built for; `check_engine_compatibility` refuses any other clearly.

TensorRT and cuda-python are imported inside functions: this module imports without them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compressive_rt.errors import EngineError
from compressive_rt.export.replace import rewrite_directory
from compressive_rt.export.trt_lint import errors, format_issues, lint_graph
from compressive_rt.runtime.backends.cuda import (
    GPU_EXTRA,
    GpuUnavailable,
    Shape,
    check_engine_compatibility,
    gpu_info,
    import_tensorrt,
    optimization_profiles,
    tensorrt_major,
)
from compressive_rt.runtime.files import atomic_write
from compressive_rt.runtime.manifest import file_entry, load_manifest, write_manifest

__all__ = [
    "GPU_EXTRA",
    "PRECISIONS",
    "BuildError",
    "BuildRecipe",
    "GpuUnavailable",
    "build_engines",
    "build_recipe",
    "check_engine_compatibility",
    "optimization_profiles",
    "plan_name",
]
PRECISIONS = ("fp32", "fp16", "bf16")


class BuildError(EngineError):
    """build-engine refused or failed; the engine directory was left exactly as it was."""


def plan_name(entry: str, precision: str) -> str:
    return f"{entry}.{precision}.plan"


@dataclass(frozen=True)
class BuildRecipe:
    """How one TensorRT major builds plans of one precision from graphs of another."""

    strongly_typed: bool  # the graph's types are the precision (always so on TensorRT 11)
    creation_flags: tuple[str, ...]  # NetworkDefinitionCreationFlag names set
    builder_flags: tuple[str, ...]  # BuilderFlag names set (weak typing, TensorRT 10 only)
    pin_fp32_layers: bool  # LayerNorm / Softmax forced to fp32 (weak typing only)

    @property
    def typing(self) -> str:
        return "strong" if self.strongly_typed else "weak"


def build_recipe(major: int, precision: str, graph_precision: str) -> BuildRecipe:
    """The recipe for `precision` plans from graphs of `graph_precision` on TensorRT `major`;
    raises BuildError saying what to do when that combination cannot be built."""
    if precision not in PRECISIONS:
        raise BuildError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if graph_precision not in ("fp32", "fp16"):
        raise BuildError(f"the manifest says the graphs are {graph_precision!r}; build-engine "
                         f"reads fp32 or fp16 graphs: re-export with `ctrt export`")
    if graph_precision == "fp16":
        if precision != "fp16":
            raise BuildError(f"the engine directory holds fp16 graphs (`ctrt export --precision "
                             f"fp16`): build --precision fp16, or export fp32 graphs for "
                             f"{precision} plans")
        # Strongly typed on both majors: the converter's fp32 islands stay fp32.
        return BuildRecipe(True, () if major >= 11 else ("STRONGLY_TYPED",), (), False)
    if precision == "fp32":
        return BuildRecipe(major >= 11, (), (), False)
    if major >= 11:
        raise BuildError(
            f"TensorRT {major} builds strongly typed networks only (weak typing and "
            f"BuilderFlag.{precision.upper()} were removed): the graph's types set the "
            f"precision, and this engine directory holds fp32 graphs. "
            + ("Export fp16 graphs with `ctrt export CHECKPOINT DIR --precision fp16` and "
               "build those, or build --precision fp32"
               if precision == "fp16" else
               "This project exports no bf16 graphs: build --precision fp16 from fp16 graphs "
               "(`ctrt export --precision fp16`) or --precision fp32"))
    flags = ("FP16",) if precision == "fp16" else ("BF16",)
    return BuildRecipe(False, (), (*flags, "PREFER_PRECISION_CONSTRAINTS"), True)


def _build_one(trt: Any, logger: Any, graph: Path, entry: str, recipe: BuildRecipe,
               profile_shapes: Mapping[str, tuple[Shape, Shape, Shape]],
               workspace_mib: int, cache_bytes: bytes | None,
               optimization_level: int | None = None) -> tuple[bytes, bytes]:
    """Build one serialized plan; returns (plan, timing cache bytes)."""
    builder = trt.Builder(logger)
    creation = 0  # explicit batch is the only mode from TensorRT 10 on
    for name in recipe.creation_flags:
        creation |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(creation)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(graph)):  # resolves external weight files beside it
        messages = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BuildError(f"TensorRT could not parse {graph}:\n  " + "\n  ".join(messages))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if optimization_level is not None:
        config.builder_optimization_level = optimization_level  # 0..5, TensorRT's default 3
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 stays fp32 (module docstring)
    if "FP16" in recipe.builder_flags and not builder.platform_has_fast_fp16:
        raise BuildError("this GPU has no fast fp16: build with --precision fp32")
    for name in recipe.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if recipe.pin_fp32_layers:
        # Normalization and softmax statistics overflow fp16 on long rows: keep them fp32.
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
        raise BuildError(f"TensorRT failed to build {entry} from {graph}; run with a larger "
                         f"--workspace or see the log above")
    return bytes(plan), bytes(config.get_timing_cache().serialize())


def build_engines(engine_dir: Path | str, precision: str | None = None, max_batch: int = 8,
                  opt_batch: int = 1, workspace_mib: int = 4096,
                  timing_cache: Path | str | None = None, optimization_level: int | None = None,
                  log: Callable[[str], Any] = print) -> dict:
    """Build one plan per entry point into engine_dir; returns the manifest's tensorrt section.

    precision None builds the graphs' own precision (fp32 or fp16). Atomic: a failure leaves
    engine_dir (plans and manifest) as it was."""
    if precision is not None and precision not in PRECISIONS:
        raise BuildError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    manifest = load_manifest(engine_dir)
    engine_dir = manifest.engine_dir
    graph_precision = manifest.data.get("precision", "fp32")
    precision = precision or graph_precision
    profiles = optimization_profiles(manifest.contract, max_batch, opt_batch)
    for entry, spec in manifest.contract.items():
        found = errors(lint_graph(manifest.graph_path(entry), spec))
        if found:
            raise BuildError(f"{manifest.graph_path(entry)} fails the TensorRT lint:\n"
                             f"{format_issues(found)}")
    trt = import_tensorrt()
    recipe = build_recipe(tensorrt_major(trt.__version__), precision, graph_precision)
    gpu = gpu_info()
    logger = trt.Logger(trt.Logger.WARNING)
    cache_path = Path(timing_cache) if timing_cache else None
    cache_bytes = cache_path.read_bytes() if cache_path and cache_path.is_file() else None
    section = dict(manifest.data.get("tensorrt") or {})
    if section.get("tensorrt_version") != trt.__version__ or section.get("gpu") != gpu:
        section = {}  # plans of another version or GPU are useless here: start over
    with rewrite_directory(engine_dir) as work:
        plans = {}
        for entry in manifest.contract:
            started = time.perf_counter()
            plan, cache_bytes = _build_one(trt, logger, manifest.graph_path(entry),
                                           entry, recipe, profiles[entry], workspace_mib,
                                           cache_bytes, optimization_level)
            path = work / plan_name(entry, precision)
            path.write_bytes(plan)
            plans[entry] = file_entry(path)
            log(f"built {path.name} ({len(plan) / 2**20:.1f} MiB, {recipe.typing}ly typed) in "
                f"{time.perf_counter() - started:.1f}s")
        section.update({"tensorrt_version": trt.__version__, "gpu": gpu})
        section.setdefault("engines", {})[precision] = {
            "graph_precision": graph_precision, "typing": recipe.typing,
            "max_batch": max_batch, "opt_batch": opt_batch, "workspace_mib": workspace_mib,
            "profiles": {entry: {name: {"min": list(s[0]), "opt": list(s[1]), "max": list(s[2])}
                                 for name, s in shapes.items()}
                         for entry, shapes in profiles.items()},
            "plans": plans,
        }
        listed = {plan["file"] for built in section["engines"].values()
                  for plan in built["plans"].values()}
        for stale in work.glob("*.plan"):  # plans of another TensorRT version or GPU
            if stale.name not in listed:
                stale.unlink()
        data = dict(manifest.data)
        data["tensorrt"] = section
        write_manifest(work, data)
    if cache_path and cache_bytes:
        atomic_write(cache_path, lambda f: f.write(cache_bytes))
    return section
