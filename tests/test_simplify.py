"""export.simplify on a graph small enough to read: reshape targets from a tensor's own dims."""

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

from compressive_rt.export.simplify import simplify_graph


def view_as_heads_graph() -> onnx.ModelProto:
    """y = x.view(batch, tokens, 2, 4) as the tracer spells it: Shape -> Gather -> Unsqueeze
    for each dynamic dim, joined with the constant ones by Concat."""
    constants = {"zero": np.array(0, np.int64), "one": np.array(1, np.int64),
                 "axes": np.array([0], np.int64), "heads": np.array([2], np.int64),
                 "head_dim": np.array([4], np.int64)}
    nodes = [helper.make_node("Shape", ["x"], ["shape"])]
    for i, index in enumerate(("zero", "one")):
        nodes += [helper.make_node("Gather", ["shape", index], [f"dim{i}"], axis=0),
                  helper.make_node("Unsqueeze", [f"dim{i}", "axes"], [f"dim{i}_1d"])]
    nodes += [helper.make_node("Concat", ["dim0_1d", "dim1_1d", "heads", "head_dim"], ["target"],
                               axis=0),
              helper.make_node("Reshape", ["x", "target"], ["y"])]
    graph = helper.make_graph(
        nodes, "view", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                      ["batch", "tokens", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "tokens", 2, 4])],
        initializer=[numpy_helper.from_array(v, k) for k, v in constants.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_reshape_to_a_tensors_own_dims_copies_them_and_its_shape_arithmetic_goes():
    simplified = simplify_graph(view_as_heads_graph())
    assert [node.op_type for node in simplified.graph.node] == ["Reshape"]
    initializers = {t.name: numpy_helper.to_array(t) for t in simplified.graph.initializer}
    assert initializers[simplified.graph.node[0].input[1]].tolist() == [0, 0, 2, 4]
    session = onnxruntime.InferenceSession(simplified.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    for batch, tokens in ((1, 1), (3, 5)):
        x = np.arange(batch * tokens * 8, dtype=np.float32).reshape(batch, tokens, 8)
        np.testing.assert_array_equal(session.run(None, {"x": x})[0], x.reshape(batch, tokens,
                                                                                 2, 4))
