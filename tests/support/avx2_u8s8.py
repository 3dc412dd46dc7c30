"""ONNX Runtime's u8s8 GEMM as x86 CPUs without VNNI compute it, in plain float ops.

Such a CPU cannot be had on a machine with VNNI, so the tests emulate its arithmetic: MLAS's
AVX2 kernel multiplies u8 activations by s8 weights with VPMADDUBSW, which adds the products of
two adjacent k (2j, 2j + 1) and saturates that sum to int16, then adds the pairs in int32
(VPMADDWD, VPADDD); the activations' zero point is subtracted afterwards as zero_point x the
weight column's sum. Every value stays an integer below 2**24, so float32 holds it exactly.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INT16_MIN, INT16_MAX = -32768, 32767


def emulate_u8s8_avx2(graph: onnx.ModelProto) -> int:
    """Rewrite, in place, every MatMulInteger of `graph` with a constant int8 weight into the
    saturating arithmetic above; returns how many were rewritten."""
    initializers = {tensor.name: tensor for tensor in graph.graph.initializer}
    nodes, rewritten = [], 0
    for node in graph.graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "MatMulInteger" else None
        if weight is None or weight.data_type != TensorProto.INT8:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(weight).astype(np.float32)  # [K, N]
        assert w.shape[0] % 2 == 0, "odd K: the kernel pads with zeros, not emulated here"
        assert not numpy_helper.to_array(initializers[node.input[3]]).any(), "weight zero point"
        p = f"avx2_emulation_{rewritten}/"
        constants = {"w_even": w[0::2], "w_odd": w[1::2],  # [K/2, N] each
                     "w_colsum": w.sum(axis=0),  # [N]
                     "zero": np.array([0], np.int64), "one": np.array([1], np.int64),
                     "end": np.array([2**62], np.int64), "last": np.array([-1], np.int64),
                     "step": np.array([2], np.int64), "pairs": np.array([-2], np.int64),
                     "lo": np.array(INT16_MIN, np.float32), "hi": np.array(INT16_MAX, np.float32)}
        graph.graph.initializer.extend(numpy_helper.from_array(v, p + k)
                                       for k, v in constants.items())
        activation, activation_zero_point = node.input[0], node.input[2]
        nodes += [
            helper.make_node("Cast", [activation], [p + "a"], to=TensorProto.FLOAT),  # [..., K]
            helper.make_node("Slice", [p + "a", p + "zero", p + "end", p + "last", p + "step"],
                             [p + "a_even"]),  # [..., K/2]
            helper.make_node("Slice", [p + "a", p + "one", p + "end", p + "last", p + "step"],
                             [p + "a_odd"]),
            helper.make_node("Unsqueeze", [p + "a_even", p + "last"], [p + "a_even1"]),
            helper.make_node("Unsqueeze", [p + "a_odd", p + "last"], [p + "a_odd1"]),
            helper.make_node("Mul", [p + "a_even1", p + "w_even"], [p + "even"]),  # [..., K/2, N]
            helper.make_node("Mul", [p + "a_odd1", p + "w_odd"], [p + "odd"]),
            helper.make_node("Add", [p + "even", p + "odd"], [p + "pair"]),
            helper.make_node("Clip", [p + "pair", p + "lo", p + "hi"], [p + "saturated"]),
            helper.make_node("ReduceSum", [p + "saturated", p + "pairs"], [p + "sum"],
                             keepdims=0),  # [..., N]
            helper.make_node("Cast", [activation_zero_point], [p + "za"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [p + "za", p + "w_colsum"], [p + "offset"]),
            helper.make_node("Sub", [p + "sum", p + "offset"], [p + "product"]),
            helper.make_node("Cast", [p + "product"], [node.output[0]], to=TensorProto.INT32),
        ]
        rewritten += 1
    del graph.graph.node[:]
    graph.graph.node.extend(nodes)
    return rewritten
