"""Engine directories for the benchmark: a fast export, derived variants, tunable ORT sessions.

`export_engine` writes the same graphs and manifest as `export.pipeline.export_model` but skips
the 20-segment verification (minutes at the default size); the benchmark checks the engine
against the eager model on its own inputs instead. `derive_engine` rewrites graphs (ONNX
Runtime's offline fusions) into a new directory with a consistent manifest, and
`TunedOrtBackend` opens an engine with any `onnxruntime.SessionOptions`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

from compressive_rt.runtime.backends.ort import OrtCpuBackend
from compressive_rt.runtime.manifest import (
    MANIFEST_NAME,
    Manifest,
    record_graphs,
    write_manifest,
)


def export_engine(model, out_dir: Path) -> Path:
    """Export `model`'s three entry points and a manifest into out_dir (no verification)."""
    from compressive_rt.export.pipeline import write_engine

    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = write_engine(model, out_dir)
    manifest["verification"] = {"skipped": "benchmark engine"}
    write_manifest(out_dir, manifest)
    return out_dir


def derive_engine(src_dir: Path, out_dir: Path,
                  transform: Callable[[Path, Path], None]) -> Path:
    """Copy an engine dir, passing every graph through transform(src_graph, dst_graph), then
    storing the new graphs' weights once in out_dir's own weights file."""
    import json

    from compressive_rt.export.onnx_export import load_graphs, write_graphs

    manifest = json.loads((src_dir / MANIFEST_NAME).read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    for entry in manifest["entry_points"].values():
        transform(src_dir / entry["file"], out_dir / entry["file"])
    record_graphs(manifest, write_graphs(load_graphs(out_dir, list(manifest["entry_points"])),
                                         out_dir))
    for leftover in out_dir.glob("*.data"):  # a transform's own external data, now copied
        leftover.unlink()
    write_manifest(out_dir, manifest)
    return out_dir


def ort_offline(level: str) -> Callable[[Path, Path], None]:
    """Save ONNX Runtime's own optimized graph at `level` ("basic" keeps standard ONNX ops)."""
    def transform(src: Path, dst: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = {
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}[level]
        options.optimized_model_filepath = str(dst)
        # Weights beside the saved graph (derive_engine then stores them in its weights file);
        # without this the saved graph keeps pointing at the source directory's weights file.
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", f"{dst.stem}.data")
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        options.log_severity_level = 3
        ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    return transform


def transformer_optimizer(num_heads: int, hidden_size: int) -> Callable[[Path, Path], None]:
    """onnxruntime.transformers' offline fusions (model_type="bert": LayerNorm/Gelu/Attention
    patterns, Add+LayerNorm -> SkipLayerNormalization), without ORT's own graph pass."""
    def transform(src: Path, dst: Path) -> None:
        from onnxruntime.transformers.optimizer import optimize_model

        optimized = optimize_model(str(src), model_type="bert", num_heads=num_heads,
                                   hidden_size=hidden_size, opt_level=0)
        optimized.save_model_to_file(str(dst))
    return transform


def non_standard_ops(engine_dir: Path) -> list[str]:
    """Ops outside the default ONNX domain (contrib ops): TensorRT's parser rejects them."""
    import onnx

    found = set()
    for graph in engine_dir.glob("*.onnx"):
        for node in onnx.load(str(graph), load_external_data=False).graph.node:
            if node.domain not in ("", "ai.onnx"):
                found.add(f"{node.domain}.{node.op_type}")
    return sorted(found)


def remove_engine(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class TunedOrtBackend(OrtCpuBackend):
    """OrtCpuBackend whose sessions use the options `tune(options)` returns."""

    def __init__(self, manifest: Manifest, threads: int, tune: Callable[[Any], Any]) -> None:
        import compressive_rt.runtime.backends.ort as ort_backend

        original = ort_backend.cpu_session_options
        ort_backend.cpu_session_options = lambda *args: tune(original(*args))
        try:
            super().__init__(manifest, threads=threads)
        finally:
            ort_backend.cpu_session_options = original


def ort_option_variants(threads: int) -> dict[str, Callable[[Any], Any]]:
    """Session-option variants tried against the runtime's default (`cpu_session_options`)."""
    import onnxruntime as ort

    def setter(**changes):
        def tune(options):
            for key, value in changes.items():
                if key.startswith("config:"):
                    options.add_session_config_entry(key[len("config:"):], value)
                else:
                    setattr(options, key, value)
            return options
        return tune

    level = ort.GraphOptimizationLevel
    variants = {
        "default (ENABLE_ALL)": setter(),
        "opt level DISABLE_ALL": setter(graph_optimization_level=level.ORT_DISABLE_ALL),
        "opt level BASIC": setter(graph_optimization_level=level.ORT_ENABLE_BASIC),
        "opt level EXTENDED": setter(graph_optimization_level=level.ORT_ENABLE_EXTENDED),
        "no mem pattern": setter(enable_mem_pattern=False),
        "no cpu mem arena": setter(enable_cpu_mem_arena=False),
        # the default turns spinning off (cpu_session_options); ORT warns that it is overwritten
        "spinning on": setter(**{"config:session.intra_op.allow_spinning": "1"}),
    }
    if threads > 1:
        variants["intra_op threads 1"] = setter(intra_op_num_threads=1)
    variants[f"intra_op threads {threads * 2}"] = setter(intra_op_num_threads=threads * 2)
    return variants
