"""`ctrt inspect`: what an engine directory holds, in one readable page.

The manifest summary (config, opset, verification and the CPU it ran on, quantization), per
graph: file size, parameter count (initializer elements), node count (as the manifest records
it), an op histogram and the TensorRT lint result; and any TensorRT plans.
"""

from __future__ import annotations

from collections import Counter
from math import prod
from pathlib import Path

import onnx

from compressive_rt.export.trt_lint import format_issues, lint_graph
from compressive_rt.runtime.cpu import CpuFeatures
from compressive_rt.runtime.manifest import load_manifest

CONFIG_KEYS = ("n_layers", "d_model", "n_heads", "d_ff", "vocab_size", "seg_len", "mem_len",
               "cmem_len", "compress_rate", "compress_fn", "pre_norm")


def _bytes(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def graph_files(path: Path, model: onnx.ModelProto) -> list[Path]:
    """The graph file and any external weight files it names."""
    files = {path}
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                files.add(path.parent / entry.value)
    return sorted(files)


def parameter_count(model: onnx.ModelProto) -> int:
    """Elements of every initializer (weights and folded constants such as position tables)."""
    return sum(prod(init.dims) for init in model.graph.initializer)


def op_histogram(model: onnx.ModelProto) -> Counter:
    return Counter(node.op_type for node in model.graph.node)


def inspect_engine_dir(engine_dir: Path | str) -> str:
    """A text report of an engine directory (checks the manifest and hashes first)."""
    manifest = load_manifest(engine_dir)
    data = manifest.data
    config = manifest.config
    lines = [f"engine directory {manifest.engine_dir}",
             "config: " + ", ".join(f"{k}={config[k]}" for k in CONFIG_KEYS if k in config),
             (f"opset {data.get('opset')}, precision {data.get('precision')}, exporter "
             f"{data.get('exporter')}")]
    checkpoint = data.get("checkpoint") or {}
    if checkpoint:
        lines.append("checkpoint: " + ", ".join(f"{k}={v}" for k, v in checkpoint.items()))
    verification = data.get("verification")
    if verification:
        lines.append(f"verified: passed={verification.get('passed')}, segments "
                     f"{verification.get('segments')}, max |error| segment "
                     f"{verification.get('segment_max_abs_error', 0):.2e}, extend "
                     f"{verification.get('extend_max_abs_error', 0):.2e} (tolerance "
                     f"{verification.get('tolerance', 0):.2e})")
        if "cpu" in verification:
            lines.append("verified on " + CpuFeatures.from_dict(verification["cpu"]).describe())
    quantization = data.get("quantization")
    if quantization:
        lines.append("quantization: " + ", ".join(f"{k}={v}" for k, v in quantization.items()))
    weights = data.get("weights")
    if weights:
        lines.append(f"weights: {weights['file']}, {_bytes(weights['bytes'])}, "
                     f"{len(weights['tensors'])} tensors shared by the graphs")
    for entry, spec in manifest.contract.items():
        path = manifest.graph_path(entry)
        model = onnx.load(str(path), load_external_data=False)
        files = graph_files(path, model) if not weights else [path]  # weights listed once
        size = sum(f.stat().st_size for f in files if f.is_file())
        histogram = op_histogram(model)
        nodes = data["entry_points"][entry].get("nodes")
        shown = f"{nodes} nodes" if nodes is not None else \
            f"{sum(histogram.values())} nodes (not recorded in the manifest)"
        issues = lint_graph(model, spec)
        lines += [
            "",
            (f"[{entry}] {path.name}: {_bytes(size)}, {parameter_count(model):,} parameters, "
            f"{shown}"),
            "  inputs:  " + ", ".join(f"{t.name}{list(t.shape)}" for t in spec.inputs),
            "  outputs: " + ", ".join(f"{t.name}{list(t.shape)}" for t in spec.outputs),
            "  ops: " + ", ".join(f"{op} {n}" for op, n in sorted(histogram.items())),
            "  TensorRT lint: " + format_issues(issues).replace("\n", "\n    "),
        ]
    section = data.get("tensorrt")
    if section:
        gpu = section.get("gpu", {})
        lines += ["", (f"TensorRT {section.get('tensorrt_version')} plans for {gpu.get('name')} "
                      f"(compute capability {gpu.get('compute_capability')}):")]
        for precision, built in section.get("engines", {}).items():
            plans = ", ".join(f"{p['file']} ({_bytes(p['bytes'])})"
                              for p in built["plans"].values())
            lines.append(f"  {precision}: batch <= {built['max_batch']} (opt "
                         f"{built['opt_batch']}): {plans}")
    return "\n".join(lines)
