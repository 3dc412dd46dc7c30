"""The traced graphs without their shape clutter: onnxslim folds what the tracer left as
constants and shape arithmetic and removes the no-op chains around them.

Why onnxslim (an export-time dependency, the `train` extra; the runtime never imports it): it
folds constants and shape subgraphs under its own symbolic shape inference (the `batch` and
`tokens` axes stay symbolic), removes Unsqueeze/Squeeze, Reshape and Transpose chains and
common subexpressions, in standard ONNX ops, in pure Python, and can be told to leave tensors
alone. onnxoptimizer has the eliminations but no general constant folding, so the shape
subgraphs would stay. ONNX Runtime's offline optimisation (BASIC, the level that keeps standard
ops) leaves more behind: the tiny test model's `segment` graph goes from 559 nodes to 254 there,
to 177 here; `commit` from 231 to 108, to 58 here.

The weights stay as traced: every floating-point initializer is handed to onnxslim as a graph
input, so no subgraph that reads a weight (a transpose of it, an Identity the tracer put on a
weight used twice) is folded into a new tensor: the graphs keep pointing at the same weights,
which the one weights file stores once for all graphs (onnx_export.write_graphs), and ONNX
Runtime still folds such subgraphs at load, in memory. The tracer's own folding already made
each layer's position table (R projected through W_r) a Constant node of every graph that uses
it; folded to initializers here, the weights file holds each once instead of one copy per graph
file: the default config's engine directory is 141.2 MB instead of 146.5. MatMul + Add is not
fused into Gemm: int8 engines quantize MatMul nodes (onnx_export.quantize_to_int8).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16,
                         TensorProto.DOUBLE})
KEPT_PATTERNS = ["FusionGemm", "FusionGemmAdd", "FusionGemmMul"]


def simplify_graph(graph: onnx.ModelProto) -> onnx.ModelProto:
    """The graph folded and simplified; same inputs (order and shapes), outputs and weights."""
    import onnxslim

    weights = [tensor for tensor in graph.graph.initializer if tensor.data_type in FLOAT_TYPES]
    inputs = list(graph.graph.input)
    held_out = onnx.ModelProto()
    held_out.CopyFrom(graph)
    kept = [tensor for tensor in graph.graph.initializer if tensor.data_type not in FLOAT_TYPES]
    del held_out.graph.initializer[:]
    held_out.graph.initializer.extend(kept)
    held_out.graph.input.extend(helper.make_tensor_value_info(tensor.name, tensor.data_type,
                                                              list(tensor.dims))
                                for tensor in weights)
    slimmed = onnxslim.slim(held_out, skip_fusion_patterns=KEPT_PATTERNS)
    if copy_dims_in_reshapes(slimmed.graph):
        remove_dead_nodes(slimmed.graph)
    read = {name for node in slimmed.graph.node for name in node.input}
    read |= {value.name for value in slimmed.graph.output}
    slimmed.graph.initializer.extend(tensor for tensor in weights if tensor.name in read)
    del slimmed.graph.input[:]
    slimmed.graph.input.extend(inputs)  # the inputs as traced, an unread one included
    # The inferred types of intermediate values go: the fp16 converter retypes nodes but not
    # every recorded type (a CumSum kept fp32 would read as fp16), and loaders infer them anyway.
    del slimmed.graph.value_info[:]
    return slimmed


def _dims(graph: onnx.GraphProto) -> dict[str, list]:
    """Each typed value's dims as shape inference left them: a size, a symbol, or None."""
    dims = {}
    for value in (*graph.input, *graph.output, *graph.value_info):
        shape = value.type.tensor_type.shape
        dims[value.name] = [dim.dim_value or dim.dim_param or None for dim in shape.dim]
    return dims


def copy_dims_in_reshapes(graph: onnx.GraphProto) -> int:
    """Reshape targets built from the dims of a tensor (Shape -> Gather -> Unsqueeze, joined by
    Concat: how the tracer spells `x.view(batch, tokens, heads, head_dim)`) become constants
    where each such dim is the reshaped tensor's own dim at the same place: 0, which Reshape
    reads as "copy this dim". The shape arithmetic is then dead (see remove_dead_nodes).
    Returns how many Reshapes were rewritten."""
    producers = {out: node for node in graph.node for out in node.output}
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer
                 if t.data_type == TensorProto.INT64 and not t.external_data}
    dims = _dims(graph)

    def copied_dim(part: str, data: str, position: int) -> bool:
        """Whether `part` is Unsqueeze(Gather(Shape(t), position)) with t's dim there known
        to be data's (t is data, or shape inference gave both the same size or name)."""
        unsqueeze = producers.get(part)
        gather = producers.get(unsqueeze.input[0]) if unsqueeze.op_type == "Unsqueeze" else None
        shape = producers.get(gather.input[0]) if gather and gather.op_type == "Gather" else None
        if shape is None or shape.op_type != "Shape" or shape.attribute or \
                constants.get(gather.input[1], np.zeros(2)).shape != () or \
                int(constants[gather.input[1]]) != position:
            return False
        if shape.input[0] == data:
            return True
        ours, theirs = dims.get(data, []), dims.get(shape.input[0], [])
        known = position < min(len(ours), len(theirs)) and ours[position] is not None
        return known and ours[position] == theirs[position] and \
            not str(ours[position]).startswith("unk__")  # made up by inference: not trusted

    rewritten = 0
    for node in graph.node:
        concat = producers.get(node.input[1]) if node.op_type == "Reshape" else None
        if concat is None or concat.op_type != "Concat" or \
                any(a.name == "allowzero" and a.i for a in node.attribute):
            continue
        target = []
        for position, part in enumerate(concat.input):
            if part in constants and constants[part].shape == (1,):
                target.append(int(constants[part][0]))
            elif part in producers and copied_dim(part, node.input[0], position):
                target.append(0)
            else:
                break
        else:
            name = f"{node.output[0]}/copied_shape"
            graph.initializer.append(numpy_helper.from_array(np.array(target, np.int64), name))
            node.input[1] = name
            rewritten += 1
    return rewritten


def remove_dead_nodes(graph: onnx.GraphProto) -> None:
    """Drop nodes whose outputs nothing reads, and initializers no node reads."""
    needed = {value.name for value in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    initializers = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
