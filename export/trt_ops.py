"""The ONNX operators TensorRT 10's ONNX parser imports, with the restrictions our graphs meet.

Source: github.com/onnx/onnx-tensorrt, `docs/operators.md` as of TensorRT 10.15 ("supports
operators in the inclusive range of opset 9 to opset 24"); TensorRT 10.0's copy of the same
file gives opset 9 to 20, which is the range used here so that every 10.x parser accepts the
graphs. Where the parser source (`onnxOpImporters.cpp`, TensorRT 10.x) or NVIDIA's layer
reference is more permissive than the table, the entry says so in `note`:
  - Clip: the importer lowers INT32/INT64 inputs (and tensor min/max) to elementwise max/min.
  - CumSum: operators.md lists FP32/FP16/BF16 only, while the Cumulative layer reference
    (docs.nvidia.com/deeplearning/tensorrt/latest/_static/operators/Cumulative.html) accepts
    int32/int64; integer CumSum is reported as a warning, not an error.
  - Conv/ConvTranspose: 1D convolutions are imported by unsqueezing to 2D.
  - Pad: modes constant, reflect, edge and wrap (the importer's SampleMode mapping).

Type names are ONNX TensorProto names. `types` are the element types of the input the
restriction applies to (`typed`: "input0", "input1" or "output0"); `maybe_types` are accepted
by some 10.x releases only (lint warning).
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCE = {
    "repository": "https://github.com/onnx/onnx-tensorrt",
    "file": "docs/operators.md",
    "version": "TensorRT 10.15 table (opset 9-24); opset range limited to TensorRT 10.0's 9-20",
    "also": "onnxOpImporters.cpp (TensorRT 10.x) for Clip/Conv/Pad/Range details; NVIDIA "
            "TensorRT operator reference (Cumulative) for CumSum types",
}
TENSORRT_MAJOR = 10
MIN_OPSET = 9
MAX_OPSET = 20

FLOATS = frozenset({"FLOAT", "FLOAT16", "BFLOAT16"})
FP32_FP16 = frozenset({"FLOAT", "FLOAT16"})
INTS = frozenset({"INT32", "INT64"})
BOOLS = frozenset({"BOOL"})
QUANTIZED = frozenset({"INT8", "FLOAT8E4M3FN", "INT4"})
NUMERIC = FLOATS | INTS
ANY = FLOATS | INTS | BOOLS


@dataclass(frozen=True)
class OpSupport:
    op_type: str
    supported: bool
    types: frozenset[str] = frozenset()
    typed: str = "input0"
    maybe_types: frozenset[str] = frozenset()
    restriction: str = ""
    note: str = ""


def _group(names: str, types: frozenset[str], **kw) -> dict[str, OpSupport]:
    return {name: OpSupport(name, True, types, **kw) for name in names.split()}


SUPPORTED: dict[str, OpSupport] = {
    **_group("Abs Add ArgMax ArgMin Div Equal Greater GreaterOrEqual IsNaN Less LessOrEqual Max "
             "Min Mod Mul Neg Pow Relu Shrink Sign Sub Sum DepthToSpace SpaceToDepth Scatter "
             "ScatterElements", NUMERIC),
    **_group("ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin "
             "ReduceProd ReduceSum ReduceSumSquare", NUMERIC,
             restriction="`axes` must be an initializer"),
    **_group("Flatten Gather GatherElements GatherND Identity Reshape ReverseSequence Shape Size "
             "Split Tile Transpose Trilu Where Concat Expand Slice", ANY),
    **_group("Squeeze Unsqueeze", ANY,
             restriction="`axes` must be resolvable to a constant"),
    **_group("If Loop", ANY, note="forbidden by the engine contract (no control flow)"),
    **_group("Cast CastLike", ANY | {"UINT8"}),
    **_group("And Or Xor Not", BOOLS),
    **_group("Acos Acosh Asin Asinh Atan Atanh BatchNormalization Ceil Celu Cos Cosh Einsum Elu "
             "Erf Exp Floor Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool GroupNormalization "
             "HardSigmoid HardSwish ImageScaler InstanceNormalization IsInf LeakyRelu Log "
             "LogSoftmax LRN LpNormalization MatMul MeanVarianceNormalization ParametricSoftplus "
             "PRelu Reciprocal Round ScaledTanh Scan Selu Sigmoid Sin Sinh Softmax Softplus "
             "Softsign Sqrt Tan Tanh ThresholdedRelu Upsample RMSNormalization", FLOATS),
    **_group("BlackmanWindow HammingWindow HannWindow DeformConv GridSample Mish "
             "NonMaxSuppression NonZero RoiAlign", FP32_FP16),
    **_group("RandomNormal RandomUniform", FLOATS, typed="output0",
             note="`seed` is ignored by TensorRT"),
    **_group("RandomNormalLike RandomUniformLike", FLOATS, note="`seed` is ignored by TensorRT"),
    "Constant": OpSupport("Constant", True, ANY | QUANTIZED, typed="output0",
                          restriction="`sparse_value`, `value_string(s)` unsupported"),
    "ConstantOfShape": OpSupport("ConstantOfShape", True, ANY | QUANTIZED,
                                 typed="output0"),
    "Range": OpSupport("Range", True, frozenset({"FLOAT"}) | INTS,
                       restriction="start, limit and delta of one type: int32, int64 or float"),
    "Mean": OpSupport("Mean", True, NUMERIC | {"FLOAT8E4M3FN"}),
    "Gelu": OpSupport("Gelu", True, NUMERIC | {"INT8"}),
    "OneHot": OpSupport("OneHot", True, ANY, restriction="`depth` must be a constant"),
    "EyeLike": OpSupport("EyeLike", True, ANY, restriction="input must be static"),
    "Hardmax": OpSupport("Hardmax", True, FLOATS, restriction="`axis` dimension must be static"),
    "Clip": OpSupport("Clip", True, NUMERIC,
                      note="INT32/INT64 lowered to elementwise max/min (onnxOpImporters.cpp); "
                           "operators.md lists FP32/FP16/BF16"),
    "CumSum": OpSupport("CumSum", True, FLOATS, maybe_types=INTS,
                        restriction="`axis` must be a build-time constant",
                        note="operators.md: FP32/FP16/BF16; Cumulative layer reference: also "
                             "int32/int64"),
    "Conv": OpSupport("Conv", True, FLOATS, restriction="1D (unsqueezed to 2D), 2D or 3D"),
    "ConvTranspose": OpSupport("ConvTranspose", True, FLOATS,
                               restriction="1D (unsqueezed to 2D), 2D or 3D"),
    "AveragePool": OpSupport("AveragePool", True, FLOATS,
                             restriction="2D or 3D pooling only; `dilations` all ones"),
    "MaxPool": OpSupport("MaxPool", True, FLOATS, restriction="2D or 3D pooling only; `Indices` "
                         "output unsupported; `dilations` all ones"),
    "LpPool": OpSupport("LpPool", True, FLOATS, restriction="`dilations` all ones"),
    "LayerNormalization": OpSupport("LayerNormalization", True, FLOATS,
                                    restriction="only the first output `Y` is supported"),
    "Pad": OpSupport("Pad", True, NUMERIC, restriction="mode constant, reflect, edge or wrap"),
    "TopK": OpSupport("TopK", True, NUMERIC, restriction="`sorted` must be 1; K < 3840"),
    "Resize": OpSupport("Resize", True, FLOATS, restriction="modes nearest/linear; no antialias"),
    "Dropout": OpSupport("Dropout", True, FLOATS,
                         restriction="`is_training` must be an initializer equal to False"),
    "ScatterND": OpSupport("ScatterND", True, NUMERIC, restriction="`reduction` must be none"),
    "GRU": OpSupport("GRU", True, FLOATS), "LSTM": OpSupport("LSTM", True, FLOATS),
    "RNN": OpSupport("RNN", True, FLOATS),
    "QuantizeLinear": OpSupport("QuantizeLinear", True, FLOATS, restriction="zero point must be 0"),
    "DequantizeLinear": OpSupport("DequantizeLinear", True, QUANTIZED,
                                  restriction="zero point must be 0"),
    "STFT": OpSupport("STFT", True, frozenset({"FLOAT"})),
}

UNSUPPORTED = frozenset([
    "AffineGrid", "Bernoulli", "BitShift", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor",
    "Col2Im", "CenterCropPad", "Compress", "ConcatFromSequence", "ConvInteger", "DFT", "Det",
    "DynamicQuantizeLinear", "ImageDecoder", "MatMulInteger", "MaxRoiPool", "MaxUnpool",
    "MelWeightMatrix", "Multinomial", "NegativeLogLikelihoodLoss", "Optional",
    "OptionalGetElement", "OptionalHasElement", "QLinearConv", "QLinearMatMul", "RegexFullMatch",
    "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase", "SequenceInsert",
    "SequenceLength", "SequenceMap", "SoftmaxCrossEntropyLoss", "SplitToSequence", "StringConcat",
    "StringNormalizer", "StringSplit", "TfIdfVectorizer", "Unique",
])

# TensorRT parses these, but the engine contract (docs/DESIGN.md) forbids control flow and
# data-dependent shapes in an engine graph.
CONTRACT_FORBIDDEN = {
    "Loop": "control flow (Loop) is forbidden by the engine contract",
    "If": "control flow (If) is forbidden by the engine contract",
    "Scan": "control flow (Scan) is forbidden by the engine contract",
    "NonZero": "NonZero has a data-dependent output shape, forbidden by the engine contract",
}

PAD_MODES = ("constant", "reflect", "edge", "wrap")
TOPK_MAX_K = 3840
