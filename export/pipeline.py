"""`ctrt export`: checkpoint -> verified engine directory (graphs + manifest.json), atomically."""

from __future__ import annotations

import platform
import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch

from compressive_rt.ct_reference.model import CompressiveTransformer
from compressive_rt.errors import CtrtError
from compressive_rt.export.onnx_export import (
    OPSET,
    QUANT_OPTIONS,
    convert_to_fp16,
    export_graphs,
    load_graphs,
    quantize_to_int8,
    write_graphs,
)
from compressive_rt.export.replace import replace_directory, staging_directory, tensorrt_plans
from compressive_rt.export.verify import RELATIVE_TOLERANCE, verify_engine
from compressive_rt.runtime.cpu import cpu_features
from compressive_rt.runtime.manifest import (
    MANIFEST_NAME,
    new_manifest,
    record_graphs,
    write_manifest,
)


class ExportError(CtrtError):
    """Export refused: the message says why; nothing was left in the output directory."""


def _prepare_output(out_dir: Path) -> Path:
    """Check out_dir can be (re)written and return a fresh temp dir beside it."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST_NAME).is_file():
        raise ExportError(f"{out_dir} is not empty and holds no engine: choose another "
                          f"directory (an existing engine directory is replaced)")
    try:
        return staging_directory(out_dir)
    except OSError as exc:
        raise ExportError(f"cannot write to {out_dir.parent}: {exc.strerror}") from None


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import onnxslim

    try:
        own = version("compressive-rt")
    except PackageNotFoundError:
        own = "source"
    return {"compressive_rt": own, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "onnxslim": onnxslim.__version__,
            "numpy": np.__version__,
            "python": platform.python_version()}


def write_engine(model: CompressiveTransformer, out_dir: Path, checkpoint: dict | None = None,
                 opset: int = OPSET) -> dict:
    """The graphs, their shared weights file and manifest.json in out_dir, not yet verified;
    returns the manifest."""
    started = time.perf_counter()
    model.eval()
    written = write_graphs(export_graphs(model, out_dir, opset=opset), out_dir)
    manifest = new_manifest(model.config.to_dict(), written, opset=opset,
                            exporter="torch.onnx (TorchScript)", versions=_versions(),
                            checkpoint=checkpoint or {},
                            export_seconds=round(time.perf_counter() - started, 2))
    write_manifest(out_dir, manifest)
    return manifest


def export_model(model: CompressiveTransformer, out_dir: Path | str, checkpoint: dict | None = None,
                 verify_segments: int = 20, precision: str = "fp32", log=print) -> dict:
    """Export, verify against the eager model, then swap into place; returns the manifest.

    Everything is built in a temporary sibling directory: a failure at any point leaves an
    existing engine directory at out_dir exactly as it was.

    precision "fp16" converts the verified fp32 graphs to fp16 weights and activations (fp32
    inputs and outputs), "int8" quantizes their MatMul weights to int8 (ONNX Runtime dynamic
    quantization, 7-bit range: the same integers on every x86 CPU, see QUANT_OPTIONS); either
    is verified again with its own stated tolerance."""
    if precision not in RELATIVE_TOLERANCE:
        raise ExportError(f"precision must be one of {', '.join(RELATIVE_TOLERANCE)}, "
                          f"got {precision!r}")
    out_dir = Path(out_dir)
    tmp = _prepare_output(out_dir)
    try:
        manifest = write_engine(model, tmp, checkpoint)
        log(f"exported {', '.join(manifest['entry_points'])} in {manifest['export_seconds']:.1f}s;"
            f" verifying against the eager model over {verify_segments} segments ...")
        manifest["verification"] = _verify(model, tmp, verify_segments, "fp32")
        if precision != "fp32":
            convert_engine(tmp, manifest, precision)
            log(f"converted to {precision}; verifying again ...")
            manifest["verification"] = _verify(model, tmp, verify_segments, precision)
        write_manifest(tmp, manifest)
        stale_plans = tensorrt_plans(out_dir)
        replace_directory(tmp, out_dir)
        if stale_plans:
            log(f"replaced the engine in {out_dir}; its TensorRT plans ({', '.join(stale_plans)}) "
                f"were built for the old graphs and were removed: rebuild them with "
                f"`ctrt build-engine {out_dir}`")
        return manifest
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def convert_engine(engine_dir: Path, manifest: dict, precision: str) -> None:
    """Rewrite the verified fp32 graphs of engine_dir in place as fp16 or int8 graphs with
    their own shared weights file, and record that in the manifest (written to disk)."""
    graphs = load_graphs(engine_dir, list(manifest["entry_points"]))
    if precision == "fp16":
        graphs = {name: convert_to_fp16(graph) for name, graph in graphs.items()}
    else:
        graphs = {name: quantize_to_int8(graph, engine_dir) for name, graph in graphs.items()}
        manifest["quantization"] = {"method": "onnxruntime dynamic", "ops": ["MatMul"],
                                    **QUANT_OPTIONS}
    record_graphs(manifest, write_graphs(graphs, engine_dir))
    manifest["precision"] = precision
    manifest["verification_fp32"] = manifest.pop("verification")
    write_manifest(engine_dir, manifest)


def _verify(model: CompressiveTransformer, engine_dir: Path, segments: int,
            precision: str) -> dict:
    """Verification figures of the graphs in engine_dir and the CPU features they were
    verified on; raises ExportError beyond tolerance."""
    started = time.perf_counter()
    check = verify_engine(model, engine_dir, segments=segments, precision=precision)
    if not check.passed:
        raise ExportError(
            f"exported {precision} graphs differ from the eager model beyond tolerance "
            f"{check.tolerance:.2e}: segment {check.segment_max_abs_error:.2e}, extend "
            f"{check.extend_max_abs_error:.2e}, memory {check.memory_max_abs_error:.2e}, "
            f"bits per byte {check.bits_per_byte_error:.2e} (tolerance "
            f"{check.bits_per_byte_tolerance}), counts equal: {check.counts_equal}, on "
            f"{cpu_features().describe()}; nothing was written")
    return {**check.to_dict(), "precision": precision, "cpu": cpu_features().to_dict(),
            "seconds": round(time.perf_counter() - started, 2)}
