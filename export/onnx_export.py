"""Trace the entry points of `export.step` into ONNX graphs that follow runtime.contract."""

from __future__ import annotations

import hashlib
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from onnx.external_data_helper import set_external_data

from compressive_rt.ct_reference.model import CompressiveTransformer
from compressive_rt.export.simplify import simplify_graph
from compressive_rt.export.step import build_steps
from compressive_rt.runtime.contract import BATCH, TOKENS, EntryPoint, TensorSpec, entry_points
from compressive_rt.runtime.manifest import WEIGHTS_NAME, file_entry

OPSET = 17  # LayerNormalization is a single op from 17 on; TensorRT >= 8.6 parses it
EXTERNAL_DATA_BYTES = 2 * 1024**3  # protobuf's limit: larger weights are traced to external data
EXTERNAL_MIN_BYTES = 1024  # initializers this size or larger go to the shared weights file
WEIGHTS_ALIGNMENT = 4096  # page size: each tensor in the weights file can be mapped in place
# int8 engines: ONNX Runtime dynamic quantization of the MatMul weights (activations become u8
# per call), signed weights in a 7-bit range, [-64, 64] ("reduce_range"), one scale per output
# column ("per_channel", which wins back part of the lost bit). Why 7 bits: on x86 CPUs without
# VNNI (SSE4.1, AVX2, AVX-512 without VNNI) ONNX Runtime's u8s8 GEMM multiplies with VPMADDUBSW,
# which saturates the sum of two adjacent u8 x s8 products to int16
# (onnxruntime_session_options_config_keys.h, `session.x64quantprecision`). With |w| <= 64 that
# sum is at most 2 * 255 * 64 = 32640 <= 32767: every x86 kernel computes the same exact integers,
# so one engine verified on one CPU holds on all (ONNX Runtime's own Avx2WeightS8ToU8Transformer
# leaves weights within [-64, 64] alone for this reason: qdq_transformer/avx2_weight_s8_to_u8.cc).
# With 8-bit weights the test model's engine missed its tolerance on AVX2-only CPUs.
QUANT_OPTIONS = {"weight_type": "QInt8", "reduce_range": True, "per_channel": True}
# Kept fp32 in fp16 graphs: the numerically sensitive ops, and CumSum/Range whose fp16 rewrite
# by the converter gives ill-typed graphs (most_used's slot selection counts slots in floats).
FP32_OPS = ["LayerNormalization", "Softmax", "CumSum", "Range"]
TORCH_DTYPES = {"float32": torch.float32, "int32": torch.int32, "bool": torch.bool}


def example_tensor(spec: TensorSpec, batch: int, tokens: int) -> torch.Tensor:
    """A tracing input: zeros (empty memory) with the spec's shape and dtype."""
    shape = spec.concrete_shape(batch, tokens)
    if spec.dtype == "bool":
        return torch.ones(shape, dtype=torch.bool)
    return torch.zeros(shape, dtype=TORCH_DTYPES[spec.dtype])


def dynamic_axes(entry: EntryPoint) -> dict[str, dict[int, str]]:
    axes = {}
    for spec in (*entry.inputs, *entry.outputs):
        named = {i: dim for i, dim in enumerate(spec.shape) if dim in (BATCH, TOKENS)}
        if named:
            axes[spec.name] = named
    return axes


def export_entry(step: torch.nn.Module, entry: EntryPoint, path: Path, batch: int = 2,
                 tokens: int = 2, opset: int = OPSET) -> onnx.ModelProto:
    """One entry point's graph as traced, weights inline (traced through `path`, removed
    again)."""
    args = tuple(example_tensor(spec, batch, tokens) for spec in entry.inputs)
    weight_bytes = sum(p.numel() * p.element_size() for p in step.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter about constants and shapes
        torch.onnx.export(step, args, str(path), input_names=entry.input_names,
                          output_names=entry.output_names, dynamic_axes=dynamic_axes(entry),
                          opset_version=opset, dynamo=False, do_constant_folding=True,
                          external_data=weight_bytes > EXTERNAL_DATA_BYTES)
    graph = onnx.load(str(path))
    for written in path.parent.iterdir():  # the graph and any external data the tracer wrote
        if written.name.startswith(path.name) or written.suffix == ".data":
            written.unlink()
    keep_contract_inputs(graph, entry)
    stamp_shapes(graph, entry)
    return graph


ONNX_DTYPES = {"float32": onnx.TensorProto.FLOAT, "int32": onnx.TensorProto.INT32,
               "bool": onnx.TensorProto.BOOL}


def keep_contract_inputs(graph: onnx.ModelProto, entry: EntryPoint) -> None:
    """Give the graph every contract input, in contract order, even one the function does not
    read (the tracer drops those: e.g. `commit` with enhanced recurrence reprojects the memory
    and never reads seg_k/seg_v), so the runtime binds the same names for every config."""
    present = {value.name: value for value in graph.graph.input}
    if list(present) == entry.input_names:
        return
    inputs = [present.get(spec.name) or onnx.helper.make_tensor_value_info(
        spec.name, ONNX_DTYPES[spec.dtype], list(spec.shape)) for spec in entry.inputs]
    del graph.graph.input[:]
    graph.graph.input.extend(inputs)


def stamp_shapes(graph: onnx.ModelProto, entry: EntryPoint) -> None:
    """Write the contract's shapes on the graph's inputs and outputs: static sizes as numbers,
    only `batch`/`tokens` symbolic (the tracer leaves some sizes it could not infer named)."""
    specs = {spec.name: spec for spec in (*entry.inputs, *entry.outputs)}
    for value in (*graph.graph.input, *graph.graph.output):
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        for size in specs[value.name].shape:
            dim = dims.add()
            if isinstance(size, str):
                dim.dim_param = size
            else:
                dim.dim_value = size


def trace_graphs(model: CompressiveTransformer, work_dir: Path,
                 opset: int = OPSET) -> dict[str, onnx.ModelProto]:
    """One ONNX graph per entry point as the tracer writes it, weights inline, by entry name
    (traced via work_dir)."""
    steps = build_steps(model)
    contract = entry_points(model.config)
    graphs = {}
    with torch.no_grad():
        for name, entry in contract.items():
            graphs[name] = export_entry(steps[name], entry, work_dir / f"{name}.onnx",
                                        opset=opset)
    return graphs


def export_graphs(model: CompressiveTransformer, work_dir: Path,
                  opset: int = OPSET) -> dict[str, onnx.ModelProto]:
    """The traced graphs, simplified (export.simplify): what an engine directory holds."""
    return {name: simplify_graph(graph)
            for name, graph in trace_graphs(model, work_dir, opset).items()}


def write_graphs(graphs: dict[str, onnx.ModelProto], out_dir: Path) -> dict:
    """Write the graphs as `<entry>.onnx` and their initializers once to WEIGHTS_NAME.

    Every initializer of at least EXTERNAL_MIN_BYTES becomes ONNX external data in the one
    weights file; a tensor several graphs hold (same dtype, shape and bytes, whatever its name)
    is written once and each graph points at the same offset. Offsets are page-aligned so the
    file can be memory-mapped. Returns the manifest's "weights" entry (the file, its hash and
    the tensor index) and each graph's entry (file, hash, its initializers' tensor keys, its
    node count)."""
    weights_path = out_dir / WEIGHTS_NAME
    tensors: dict[str, dict] = {}
    key_of_content: dict[tuple, str] = {}
    initializers: dict[str, dict[str, str]] = {}
    with open(weights_path, "wb") as weights_file:
        for name, graph in graphs.items():
            initializers[name] = {}
            for tensor in graph.graph.initializer:
                array = numpy_helper.to_array(tensor)
                if array.nbytes < EXTERNAL_MIN_BYTES:
                    continue
                data = np.ascontiguousarray(array).tobytes()
                content = (array.dtype.str, array.shape, hashlib.sha256(data).digest())
                key = key_of_content.get(content)
                if key is None:
                    offset = -weights_file.tell() % WEIGHTS_ALIGNMENT + weights_file.tell()
                    weights_file.seek(offset)
                    weights_file.write(data)
                    key = key_of_content[content] = f"t{len(tensors)}"
                    tensors[key] = {"offset": offset, "dtype": array.dtype.name,
                                    "shape": list(array.shape)}
                offset = tensors[key]["offset"]
                tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
                set_external_data(tensor, WEIGHTS_NAME, offset=offset, length=len(data))
                tensor.data_location = onnx.TensorProto.EXTERNAL
                tensor.ClearField("raw_data")
                initializers[name][tensor.name] = key
    entries = {}
    for name, graph in graphs.items():
        path = out_dir / f"{name}.onnx"
        onnx.save_model(graph, str(path))
        entries[name] = {**file_entry(path), "initializers": initializers[name],
                         "nodes": len(graph.graph.node)}
    return {"weights": {**file_entry(weights_path), "tensors": tensors}, "entry_points": entries}


def load_graphs(engine_dir: Path, names: list[str]) -> dict[str, onnx.ModelProto]:
    """The graphs of an engine directory with their weights read in (for conversions)."""
    return {name: onnx.load(str(engine_dir / f"{name}.onnx")) for name in names}


def inline_weight_identities(graph: onnx.ModelProto) -> None:
    """Drop Identity nodes that only rename a weight: the tracer emits them when two weights
    are equal (e.g. the LayerNorm scales of an untrained model, all ones), and the fp16
    converter retypes such an Identity without its recorded output type."""
    weights = {t.name for t in graph.graph.initializer}
    renamed = {node.output[0]: node.input[0] for node in graph.graph.node
               if node.op_type == "Identity" and node.input[0] in weights}
    graph_outputs = {value.name for value in graph.graph.output}
    renamed = {out: src for out, src in renamed.items() if out not in graph_outputs}
    if not renamed:
        return
    kept = [node for node in graph.graph.node
            if not (node.op_type == "Identity" and node.output[0] in renamed)]
    for node in kept:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    del graph.graph.node[:]
    graph.graph.node.extend(kept)
    info = [value for value in graph.graph.value_info if value.name not in renamed]
    del graph.graph.value_info[:]
    graph.graph.value_info.extend(info)


def separate_consumed_outputs(graph: onnx.ModelProto) -> None:
    """Give every graph output that nodes also read (extend's new_k.i / new_v.i: each layer
    attends over its new keys, contract v3) an Identity of its own, so the nodes read the inner
    value: the fp16 converter casts an output to fp32 under its own name, which would turn the
    readers' fp16 input into fp32 (an ill-typed graph)."""
    read = {name for node in graph.graph.node for name in node.input}
    consumed = {value.name for value in graph.graph.output} & read
    if not consumed:
        return
    for node in graph.graph.node:
        node.output[:] = [f"{name}.value" if name in consumed else name for name in node.output]
        node.input[:] = [f"{name}.value" if name in consumed else name for name in node.input]
    graph.graph.node.extend(onnx.helper.make_node("Identity", [f"{name}.value"], [name],
                                                  name=f"{name}.identity")
                            for name in sorted(consumed))


def own_fp32_weights(graph: onnx.ModelProto, fp32_nodes: list) -> None:
    """Give each node kept fp32 its own copy of any weight it shares with other nodes (equal
    weights are deduplicated by the tracer: an untrained model's LayerNorm shift and a linear
    bias are both zeros), so the converter can make the other readers' copy fp16."""
    readers: dict[str, int] = {}
    for node in graph.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    weights = {t.name: t for t in graph.graph.initializer}
    for node in fp32_nodes:
        for i, name in enumerate(node.input):
            if name in weights and readers[name] > 1:
                copy = onnx.TensorProto()
                copy.CopyFrom(weights[name])
                copy.name = f"{name}.fp32.{node.name}"
                graph.graph.initializer.append(copy)
                node.input[i] = copy.name


def convert_to_fp16(graph: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with fp16 weights and activations, keeping the contract's fp32 inputs
    and outputs (casts at the edges) and LayerNormalization / Softmax in fp32.

    Casts from integers or booleans to float stay fp32 (the converter would retype them to
    fp16 but leave their recorded output type fp32: an ill-typed graph that ONNX Runtime and
    a strongly typed TensorRT build refuse); the converter casts their outputs down where fp16
    ops read them."""
    from onnxconverter_common.float16 import convert_float_to_float16

    inline_weight_identities(graph)
    separate_consumed_outputs(graph)
    to_float = [node.name for node in graph.graph.node if node.op_type == "Cast" and
                any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in node.attribute)]
    own_fp32_weights(graph, [node for node in graph.graph.node if node.op_type in FP32_OPS])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "-inf truncated to -10000" for the attention mask
        graph = convert_float_to_float16(graph, keep_io_types=True, op_block_list=FP32_OPS,
                                         node_block_list=to_float)
    return graph


def weight_matmuls(graph: onnx.ModelProto) -> list[str]:
    """The MatMul nodes that multiply by a linear layer's weight: a 2-D initializer [K, N].
    The others read activations, or a per-layer position table [H, dh, C+M+L] folded from
    the weights at export, which stays fp32."""
    matrices = {t.name for t in graph.graph.initializer if len(t.dims) == 2}
    return [node.name for node in graph.graph.node
            if node.op_type == "MatMul" and node.input[1] in matrices]


def quantize_to_int8(graph: onnx.ModelProto, work_dir: Path,
                     quant_options: dict = QUANT_OPTIONS) -> onnx.ModelProto:
    """ONNX Runtime's dynamic quantization: the weights of weight_matmuls stored int8 with
    quant_options, activations quantized per call; everything else stays fp32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = work_dir / "int8.onnx"
    options = {**quant_options, "weight_type": getattr(QuantType, quant_options["weight_type"])}
    quantized = weight_matmuls(graph)
    others = [node.name for node in graph.graph.node
              if node.op_type == "MatMul" and node.name not in quantized]
    logging.disable(logging.WARNING)  # the quantizer's advice to run its pre-processing first
    try:
        quantize_dynamic(graph, str(path), op_types_to_quantize=["MatMul"],
                         nodes_to_exclude=others, **options)
        return onnx.load(str(path))
    finally:
        logging.disable(logging.NOTSET)
        path.unlink(missing_ok=True)
