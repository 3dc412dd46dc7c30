"""TensorRT-compatibility lint for an exported graph: ops, attributes, types, static shapes.

Checks every node against `export.trt_ops` (TensorRT 10's ONNX parser support table) for the
graph's opset, the element types each op receives (from ONNX shape inference), the engine
contract's rules (no control flow, no data-dependent shapes) and the graph's inputs/outputs:
every dimension static except the named dynamic axes `batch` and `tokens`, and no INT64 at the
boundary. TensorRT 10 and 11 compute in INT64 for most index ops (Gather, Range, Where, Concat,
Expand...), so INT64 inside the graph is fine where the table lists it; at the boundary the
engine contract uses int32 (counts and token ids) and an INT64 binding would double the
transfer and break the native runtime's buffers, allocated with the contract's dtypes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto, shape_inference

from compressive_rt.export import trt_ops
from compressive_rt.runtime.contract import BATCH, TOKENS, EntryPoint

ERROR, WARNING = "error", "warning"
BOUNDARY_TYPES = frozenset({"FLOAT", "FLOAT16", "BFLOAT16", "INT32", "BOOL"})


@dataclass(frozen=True)
class LintIssue:
    severity: str  # "error" (TensorRT or the contract rejects it) or "warning"
    where: str  # the node ("node 'name' (OpType)"), tensor or graph the issue is about
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.where}: {self.message}"


def _type_name(elem_type: int) -> str:
    return TensorProto.DataType.Name(elem_type) if elem_type else "UNDEFINED"


def _load(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    return onnx.load(str(model), load_external_data=False)  # structure only; weights stay out


class _Graph:
    """Types, producers and constants of one graph, for the node checks."""

    def __init__(self, model: onnx.ModelProto) -> None:
        try:
            inferred = shape_inference.infer_shapes(model, data_prop=True)
        except Exception:  # noqa: BLE001 - an un-inferable graph is still linted, untyped
            inferred = model
        graph = inferred.graph
        self.types: dict[str, str] = {}
        self.ranks: dict[str, int] = {}
        for value in (*graph.input, *graph.output, *graph.value_info):
            tensor = value.type.tensor_type
            self.types[value.name] = _type_name(tensor.elem_type)
            if tensor.HasField("shape"):
                self.ranks[value.name] = len(tensor.shape.dim)
        self.constants: dict[str, onnx.TensorProto] = {}
        for init in graph.initializer:
            self.types[init.name] = _type_name(init.data_type)
            self.ranks[init.name] = len(init.dims)
            self.constants[init.name] = init
        for node in graph.node:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        self.types[node.output[0]] = _type_name(attr.t.data_type)
                        self.constants[node.output[0]] = attr.t
        self.consumed = {name for node in graph.node for name in node.input}

    def is_constant(self, name: str) -> bool:
        return name in self.constants

    def value(self, name: str) -> list:
        return onnx.numpy_helper.to_array(self.constants[name]).reshape(-1).tolist()


def _attr(node: onnx.NodeProto, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _input(node: onnx.NodeProto, index: int) -> str:
    return node.input[index] if len(node.input) > index else ""


def _restrictions(node: onnx.NodeProto, g: _Graph) -> list[str]:
    """Why TensorRT would refuse this node's attributes or non-constant inputs."""
    op, problems = node.op_type, []
    rank = g.ranks.get(_input(node, 0))
    if op == "Pad":
        mode = _attr(node, "mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode not in trt_ops.PAD_MODES:
            problems.append(f"Pad mode {mode!r} is not one of {', '.join(trt_ops.PAD_MODES)}")
    elif op in ("Conv", "ConvTranspose"):
        if rank is not None and not 3 <= rank <= 5:
            problems.append(f"{op} input has rank {rank}; TensorRT takes 1D, 2D or 3D only")
    elif op in ("AveragePool", "MaxPool", "LpPool"):
        if op != "LpPool" and rank is not None and rank not in (4, 5):
            problems.append(f"{op} input has rank {rank}; TensorRT pools in 2D or 3D only")
        if any(d != 1 for d in _attr(node, "dilations", [])):
            problems.append(f"{op} dilations must be all ones")
        if op == "MaxPool" and len(node.output) > 1 and node.output[1]:
            problems.append("MaxPool's Indices output is unsupported")
    elif op == "CumSum":
        if not g.is_constant(_input(node, 1)):
            problems.append("CumSum axis must be a build-time constant (initializer/Constant)")
    elif op == "TopK":
        if _attr(node, "sorted", 1) != 1:
            problems.append("TopK requires sorted=1")
        k = _input(node, 1)
        if not g.is_constant(k):
            problems.append("TopK K must be a constant")
        elif max(g.value(k)) >= trt_ops.TOPK_MAX_K:
            problems.append(f"TopK K must be < {trt_ops.TOPK_MAX_K}")
    elif op == "LayerNormalization":
        extra = [name for name in node.output[1:] if name]
        if extra:
            problems.append(f"LayerNormalization outputs {extra} beyond Y are unsupported")
    elif op.startswith("Reduce"):
        axes = _input(node, 1)
        if axes and not g.is_constant(axes):
            problems.append(f"{op} axes must be an initializer")
    elif op in ("Squeeze", "Unsqueeze"):
        axes = _input(node, 1)
        if axes and not g.is_constant(axes):
            problems.append(f"{op} axes must be resolvable to a constant")
    elif op == "Dropout":
        training = _input(node, 2)
        if training and not (g.is_constant(training) and not any(g.value(training))):
            problems.append("Dropout is_training must be an initializer equal to False")
    elif op == "ScatterND":
        reduction = _attr(node, "reduction", b"none")
        if (reduction.decode() if isinstance(reduction, bytes) else reduction) != "none":
            problems.append("ScatterND reduction must be 'none'")
    elif op == "OneHot":
        if not g.is_constant(_input(node, 1)):
            problems.append("OneHot depth must be a constant")
    elif op == "Constant":
        if any(_attr(node, name) is not None
               for name in ("sparse_value", "value_string", "value_strings")):
            problems.append("Constant with sparse or string values is unsupported")
    elif op == "Range":
        kinds = {g.types.get(name) for name in node.input}
        if len(kinds) > 1:
            problems.append(f"Range start/limit/delta have different types {sorted(kinds)}")
    return problems


def _typed_names(node: onnx.NodeProto, support: trt_ops.OpSupport) -> list[str]:
    if support.typed == "output0":
        return [node.output[0]]
    if node.op_type == "Where":
        return [_input(node, 1)]
    return [_input(node, 0)] if _input(node, 0) else []


def _check_node(node: onnx.NodeProto, index: int, g: _Graph) -> list[LintIssue]:
    op = node.op_type
    where = f"node {node.name or f'#{index}'!r} ({op})"
    if node.domain not in ("", "ai.onnx"):
        return [LintIssue(ERROR, where, f"custom domain {node.domain!r} needs a TensorRT "
                                        f"plugin; the engine graphs use standard ops only")]
    if op in trt_ops.CONTRACT_FORBIDDEN:
        return [LintIssue(ERROR, where, trt_ops.CONTRACT_FORBIDDEN[op])]
    if op in trt_ops.UNSUPPORTED:
        return [LintIssue(ERROR, where, f"{op} is not supported by the TensorRT "
                                        f"{trt_ops.TENSORRT_MAJOR} ONNX parser")]
    support = trt_ops.SUPPORTED.get(op)
    if support is None:
        return [LintIssue(ERROR, where, f"{op} is not in the TensorRT "
                                        f"{trt_ops.TENSORRT_MAJOR} ONNX parser's operator table")]
    issues = [LintIssue(ERROR, where, problem) for problem in _restrictions(node, g)]
    for name in _typed_names(node, support):
        kind = g.types.get(name, "UNDEFINED")
        if kind in support.types or kind == "UNDEFINED":
            continue
        if kind in support.maybe_types:
            issues.append(LintIssue(WARNING, where, f"{op} on {kind} ({name!r}): {support.note}; "
                                                    f"cast to FLOAT before it to be portable"))
        elif kind == "DOUBLE":
            issues.append(LintIssue(WARNING, where, f"{op} on DOUBLE ({name!r}): TensorRT casts "
                                                    f"DOUBLE down to FLOAT"))
        else:
            allowed = ", ".join(sorted(support.types))
            issues.append(LintIssue(ERROR, where, f"{op} on {kind} ({name!r}) is unsupported; "
                                                  f"TensorRT takes {allowed}"))
    if op == "Cast":
        target = _type_name(_attr(node, "to", 0))
        if target not in support.types:
            issues.append(LintIssue(ERROR, where, f"Cast to {target} is unsupported"))
    return issues


def _check_boundary(model: onnx.ModelProto, entry: EntryPoint | None) -> list[LintIssue]:
    issues = []
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    specs = {s.name: s for s in (*entry.inputs, *entry.outputs)} if entry else {}
    allowed_axes = {BATCH, TOKENS} if entry is None else \
        {d for s in specs.values() for d in s.shape if isinstance(d, str)}
    for kind, values in (("input", graph.input), ("output", graph.output)):
        for value in values:
            if value.name in initializers:
                continue
            where = f"graph {kind} {value.name!r}"
            tensor = value.type.tensor_type
            elem = _type_name(tensor.elem_type)
            if elem == "INT64":
                issues.append(LintIssue(ERROR, where, "INT64 at the engine boundary: the "
                                        "contract binds int32 (export counts/tokens as int32)"))
            elif elem not in BOUNDARY_TYPES:
                issues.append(LintIssue(ERROR, where, f"element type {elem} cannot be an "
                                                      f"engine binding"))
            dims = []
            for axis, dim in enumerate(tensor.shape.dim):
                if dim.HasField("dim_value"):
                    if dim.dim_value <= 0:
                        issues.append(LintIssue(ERROR, where, f"axis {axis} has size "
                                                f"{dim.dim_value}; no zero-length dimension "
                                                f"may reach an engine"))
                    dims.append(dim.dim_value)
                elif dim.HasField("dim_param") and dim.dim_param in allowed_axes:
                    dims.append(dim.dim_param)
                else:
                    name = dim.dim_param or "unnamed"
                    issues.append(LintIssue(ERROR, where, f"axis {axis} is dynamic ({name!r}); "
                                            f"only {sorted(allowed_axes)} may be dynamic"))
                    dims.append(None)
            if value.name in specs and tuple(dims) != tuple(specs[value.name].shape):
                issues.append(LintIssue(ERROR, where, f"shape {dims} differs from the "
                                        f"contract's {list(specs[value.name].shape)}"))
    if entry is not None:
        names_in = [v.name for v in graph.input if v.name not in initializers]
        names_out = [v.name for v in graph.output]
        if names_in != entry.input_names or names_out != entry.output_names:
            issues.append(LintIssue(ERROR, "graph", f"inputs {names_in} / outputs {names_out} "
                                    f"differ from the contract's {entry.input_names} / "
                                    f"{entry.output_names}"))
    return issues


def graph_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def lint_graph(model: onnx.ModelProto | str | Path,
               entry: EntryPoint | None = None) -> list[LintIssue]:
    """Every reason TensorRT 10 (or the engine contract) would reject this graph.

    `entry` (optional) also checks the graph's inputs/outputs against the contract exactly.
    An empty list, or warnings only, means the graph should parse and build."""
    model = _load(model)
    issues = []
    opset = graph_opset(model)
    if not trt_ops.MIN_OPSET <= opset <= trt_ops.MAX_OPSET:
        issues.append(LintIssue(ERROR, "graph", f"opset {opset} is outside TensorRT "
                                f"{trt_ops.TENSORRT_MAJOR}'s {trt_ops.MIN_OPSET}.."
                                f"{trt_ops.MAX_OPSET}"))
    g = _Graph(model)
    for index, node in enumerate(model.graph.node):
        issues.extend(_check_node(node, index, g))
    issues.extend(_check_boundary(model, entry))
    return issues


def errors(issues: list[LintIssue]) -> list[LintIssue]:
    return [issue for issue in issues if issue.severity == ERROR]


def format_issues(issues: list[LintIssue]) -> str:
    if not issues:
        return "ok"
    return "\n".join(str(issue) for issue in issues)
