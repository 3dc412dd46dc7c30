"""Where the time of the `segment` and `extend` (T=1) graphs goes, by ONNX op type.

Exports the default config (`ModelConfig()`, random weights) and runs each graph through ONNX
Runtime's profiler (SessionOptions.enable_profiling) with full memory (mem_len = M, cmem_len = C)
and a half-full partial segment, then prints the share of node time per op type (per node the
median over the runs, so a run preempted on a shared machine does not skew the split) and, for
extend, per kind of work (CATEGORIES: weight MatMuls, attention MatMuls, Split/Concat, shape
ops, the rest).

    python -m compressive_rt.benchmarks.profile_ops [--threads 2] [--runs 10] [--batch 1]

The inputs are built from the engine contract alone, so the same script profiles any contract
version (run it in a virtual environment with another checkout installed (`pip install -e`)
to profile that code).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from compressive_rt.ct_reference.config import ModelConfig
from compressive_rt.ct_reference.model import CompressiveTransformer
from compressive_rt.export.onnx_export import export_graphs, weight_matmuls, write_graphs
from compressive_rt.runtime.contract import entry_points

NUMPY_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}


def contract_inputs(config: ModelConfig, entry: str, batch: int,
                    tokens: int) -> dict[str, np.ndarray]:
    """Inputs of one call: random tokens and state, memories full, partial segment half full."""
    rng = np.random.default_rng(0)
    counts = {"mem_len": config.mem_len, "cmem_len": config.cmem_len,
              "seg_len": config.seg_len // 2}
    feeds = {}
    for spec in entry_points(config)[entry].inputs:
        shape = spec.concrete_shape(batch, tokens)
        if spec.name == "tokens":
            feeds[spec.name] = rng.integers(0, config.vocab_size, shape).astype(np.int32)
        elif spec.name in counts:
            feeds[spec.name] = np.full(shape, counts[spec.name], dtype=np.int32)
        elif spec.dtype == "bool":
            feeds[spec.name] = np.ones(shape, dtype=np.bool_)
        else:
            feeds[spec.name] = rng.standard_normal(shape).astype(NUMPY_DTYPES[spec.dtype])
    return feeds


SHAPE_OPS = {"Unsqueeze", "Reshape", "Squeeze", "Transpose", "Gather", "Shape", "Expand", "Slice",
             "Cast", "ConstantOfShape", "Range"}
CATEGORIES = ("weight MatMuls", "attention MatMuls", "Split/Concat", "shape ops", "the rest")


def category(op: str, node: str, weight_nodes: set[str]) -> str:
    """The kind of work of one profiled node: a MatMul by a linear layer's weight (by name,
    from the graph), another MatMul (attention: scores and reads), a Split/Concat, a shape op."""
    if op == "MatMul" and node in weight_nodes:
        return CATEGORIES[0]
    if op in ("MatMul", "FusedMatMul"):
        return CATEGORIES[1]
    if op in ("Split", "Concat"):
        return CATEGORIES[2]
    return CATEGORIES[3] if op in SHAPE_OPS else CATEGORIES[4]


def op_time_split(graph: Path, feeds: dict[str, np.ndarray], threads: int, runs: int,
                  profile_dir: Path) -> tuple[dict[str, float], dict[str, float]]:
    """Microseconds per run spent in each op type and in each of CATEGORIES: sums over the
    nodes of their median time."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_profiling = True
    options.profile_file_prefix = str(profile_dir / graph.stem)
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    session.run(None, feeds)  # warm-up, dropped below
    for _ in range(runs):
        session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    # Per node, the median over the timed runs (the first, warm-up run is dropped): on a
    # shared machine a preempted run inflates whichever node it hits; the median does not.
    per_node: dict[str, list[float]] = defaultdict(list)
    op_of: dict[str, str] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_node[event["name"]].append(event["dur"])
            op_of[event["name"]] = event["args"]["op_name"]
    weight_nodes = set(weight_matmuls(onnx.load(str(graph), load_external_data=False)))
    totals: dict[str, float] = defaultdict(float)
    kinds: dict[str, float] = defaultdict(float)
    for node, durations in per_node.items():
        median = float(np.median(durations[1:] or durations))
        totals[op_of[node]] += median
        kinds[category(op_of[node], node.removesuffix("_kernel_time"), weight_nodes)] += median
    return dict(totals), dict(kinds)


def print_split(title: str, split: dict[str, float], top: int) -> None:
    total = sum(split.values())
    print(f"{title}: {total / 1000:.2f} ms of node time per call")
    for op, micros in sorted(split.items(), key=lambda item: -item[1])[:top]:
        print(f"  {op:<24} {100 * micros / total:5.1f}%  {micros / 1000:7.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    config = ModelConfig()
    torch.manual_seed(0)
    model = CompressiveTransformer(config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        write_graphs(export_graphs(model, out), out)  # <entry>.onnx + weights.bin
        for entry, tokens in (("segment", config.seg_len), ("extend", 1)):
            feeds = contract_inputs(config, entry, args.batch, tokens)
            split, kinds = op_time_split(out / f"{entry}.onnx", feeds, args.threads, args.runs,
                                         out)
            print_split(f"{entry} (batch {args.batch}, T={tokens})", split, args.top)
            if entry == "extend":
                print_split(f"{entry} by kind of work", kinds, len(CATEGORIES))


if __name__ == "__main__":
    main()
