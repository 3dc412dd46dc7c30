"""The TensorRT lint: exported graphs pass; unsupported ops and dynamic dims are named."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper
from support.engines import COMPRESS_FNS, random_model, tiny_config

from compressive_rt.export import trt_ops
from compressive_rt.export.onnx_export import export_graphs, write_graphs
from compressive_rt.export.trt_lint import ERROR, errors, lint_graph
from compressive_rt.runtime.contract import entry_points


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """{compress_fn: (config, {entry: path})} for every compression function."""
    graphs = {}
    for fn in COMPRESS_FNS:
        cfg = tiny_config(fn)
        out = tmp_path_factory.mktemp(fn)
        written = write_graphs(export_graphs(random_model(cfg), out), out)
        graphs[fn] = (cfg, {entry: out / graph["file"]
                            for entry, graph in written["entry_points"].items()})
    return graphs


@pytest.mark.slow
@pytest.mark.parametrize("compress_fn", COMPRESS_FNS)
def test_every_exported_graph_passes_the_lint(exported, compress_fn):
    cfg, paths = exported[compress_fn]
    contract = entry_points(cfg)
    for entry, path in paths.items():
        found = errors(lint_graph(path, contract[entry]))
        assert found == [], f"{compress_fn}/{entry}: {found}"


@pytest.mark.slow
def test_most_used_graphs_raise_no_lint_warning(exported):
    cfg, paths = exported["most_used"]
    for path in paths.values():
        assert lint_graph(path) == []


def small_model(nodes, inputs, outputs, initializers=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def vec(name: str, elem=TensorProto.FLOAT, shape=("batch", 4)):
    return helper.make_tensor_value_info(name, elem, list(shape))


def test_unsupported_op_is_named():
    model = small_model([helper.make_node("Unique", ["x"], ["y"], name="dedupe")],
                        [vec("x")], [vec("y", shape=("batch", 4))])
    found = errors(lint_graph(model))
    assert [i.where for i in found] == ["node 'dedupe' (Unique)"]
    assert "not supported by the TensorRT 10 ONNX parser" in found[0].message


def test_loop_is_refused_by_the_contract_naming_the_node():
    body = helper.make_graph([], "body", [], [])
    loop = helper.make_node("Loop", ["trip", "cond"], [], name="repeat", body=body)
    model = small_model([loop, helper.make_node("Identity", ["x"], ["y"], name="copy")],
                        [vec("x"), helper.make_tensor_value_info("trip", TensorProto.INT64, []),
                         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                        [vec("y")])
    found = [i for i in lint_graph(model) if i.where == "node 'repeat' (Loop)"]
    assert len(found) == 1 and found[0].severity == ERROR
    assert "control flow" in found[0].message


def test_non_batch_dynamic_dimension_is_refused():
    model = small_model([helper.make_node("Relu", ["x"], ["y"], name="act")],
                        [vec("x", shape=("batch", "width"))], [vec("y", shape=("batch", 4))])
    found = errors(lint_graph(model))
    assert [i.where for i in found] == ["graph input 'x'"]
    assert "axis 1 is dynamic ('width')" in found[0].message


def test_int64_graph_input_is_refused():
    model = small_model([helper.make_node("Cast", ["ids"], ["y"], to=TensorProto.FLOAT)],
                        [vec("ids", TensorProto.INT64)], [vec("y")])
    found = errors(lint_graph(model))
    assert [i.where for i in found] == ["graph input 'ids'"]
    assert "INT64" in found[0].message


def test_matmul_on_int64_is_refused():
    model = small_model(
        [helper.make_node("Cast", ["x"], ["xi"], name="to_int", to=TensorProto.INT64),
         helper.make_node("MatMul", ["xi", "w"], ["yi"], name="int_matmul"),
         helper.make_node("Cast", ["yi"], ["y"], name="to_float", to=TensorProto.FLOAT)],
        [vec("x")], [vec("y")],
        [helper.make_tensor("w", TensorProto.INT64, [4, 4], [1] * 16)])
    found = errors(lint_graph(model))
    assert [i.where for i in found] == ["node 'int_matmul' (MatMul)"]
    assert "INT64" in found[0].message


def test_cumsum_axis_from_a_graph_input_is_refused():
    model = small_model([helper.make_node("CumSum", ["x", "axis"], ["y"], name="running")],
                        [vec("x"), helper.make_tensor_value_info("axis", TensorProto.INT32, [])],
                        [vec("y")])
    messages = [i.message for i in errors(lint_graph(model)) if "running" in i.where]
    assert messages == ["CumSum axis must be a build-time constant (initializer/Constant)"]


def test_pad_wrap_is_accepted_and_opset_21_is_refused():
    pads = helper.make_tensor("pads", TensorProto.INT64, [4], [0, 1, 0, 1])
    pad = helper.make_node("Pad", ["x", "pads"], ["y"], name="edge_pad", mode="wrap")
    model = small_model([pad], [vec("x")], [vec("y", shape=("batch", 6))], [pads])
    assert lint_graph(model) == []
    newer = small_model([pad], [vec("x")], [vec("y", shape=("batch", 6))], [pads], opset=21)
    assert [i.where for i in errors(lint_graph(newer))] == ["graph"]


@pytest.mark.slow
def test_table_names_its_source_and_covers_every_op_we_export(exported):
    assert "onnx-tensorrt" in trt_ops.SOURCE["repository"]
    assert trt_ops.SOURCE["file"] == "docs/operators.md"
    ops = {node.op_type for _, paths in exported.values() for path in paths.values()
           for node in onnx.load(str(path)).graph.node}
    assert ops <= set(trt_ops.SUPPORTED)
