"""int8 engines: verified, recorded with the CPU they were verified on, and the same on every x86
CPU (no u8 x s8 pair sum can saturate the int16 of the AVX2 kernels).

This machine may have VNNI or not; no test here depends on which: the AVX2 kernel's arithmetic
is emulated in float ops (tests/support/avx2_u8s8.py) where a test needs it."""

import json
import platform
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from support.avx2_u8s8 import INT16_MAX, emulate_u8s8_avx2
from support.engines import each_compress_fn, random_model, tiny_config

from compressive_rt.export.inspection import inspect_engine_dir
from compressive_rt.export.onnx_export import load_graphs, quantize_to_int8, write_graphs
from compressive_rt.export.pipeline import export_model
from compressive_rt.export.verify import eager_logits, verify_engine
from compressive_rt.runtime.manifest import MANIFEST_NAME, record_graphs, write_manifest
from compressive_rt.runtime.session import Session

U8_MAX = 255
# ONNX's and ONNX Runtime's ops that multiply integers (the kernels whose sums may saturate)
INTEGER_PRODUCT_OPS = frozenset({"MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv",
                                 "QGemm", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
                                 "QAttention"})


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def int8_engine(tmp_path_factory):
    """(model, fp32 engine dir, int8 engine dir, int8 manifest) of the test model (the one whose
    int8 export failed its verification on AVX2-only CPUs with 8-bit weights)."""
    model = random_model(tiny_config("conv"), std=0.1)
    root = tmp_path_factory.mktemp("int8")
    export_model(model, root / "fp32", log=quiet)
    manifest = export_model(model, root / "int8", precision="int8", log=quiet)
    return model, root / "fp32", root / "int8", manifest


def rewritten_engine(engine_dir: Path, out_dir: Path, rewrite) -> Path:
    """A copy of engine_dir whose graphs are `rewrite(graph)`, hashes recorded anew."""
    shutil.copytree(engine_dir, out_dir)
    manifest = json.loads((out_dir / MANIFEST_NAME).read_text())
    graphs = {name: rewrite(graph)
              for name, graph in load_graphs(out_dir, list(manifest["entry_points"])).items()}
    record_graphs(manifest, write_graphs(graphs, out_dir))
    write_manifest(out_dir, manifest)
    return out_dir


def emulated(graph: onnx.ModelProto) -> onnx.ModelProto:
    emulate_u8s8_avx2(graph)
    return graph


def logits(engine_dir: Path, tokens: np.ndarray) -> np.ndarray:
    session = Session(engine_dir)
    stream = session.add_stream()
    return session.feed({stream: tokens})[stream]


def test_int8_export_is_verified_and_recorded_in_the_manifest(int8_engine):
    model, _, engine_dir, manifest = int8_engine
    assert manifest["precision"] == "int8"
    assert manifest["quantization"] == {"method": "onnxruntime dynamic", "ops": ["MatMul"],
                                        "weight_type": "QInt8", "reduce_range": True,
                                        "per_channel": True}
    check = manifest["verification"]
    assert check["precision"] == "int8" and check["passed"]
    assert check["tolerance"] == pytest.approx(1e-1 * max(1.0, check["logit_scale"]))
    assert check["bits_per_byte_error"] <= 2e-2
    assert check["bits_per_byte_tolerance"] == 2e-2
    assert check["segment_max_abs_error"] > manifest["verification_fp32"]["segment_max_abs_error"]
    assert "int8" in {t["dtype"] for t in manifest["weights"]["tensors"].values()}
    tokens = np.random.default_rng(5).integers(0, 256, (1, 21 * model.config.seg_len))
    expected, _ = eager_logits(model, tokens)
    assert np.abs(logits(engine_dir, tokens[0]) - expected[0]).max() <= check["tolerance"]


def test_the_manifest_records_the_cpu_features_the_graphs_were_verified_on(int8_engine):
    _, _, engine_dir, manifest = int8_engine
    names = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():  # Linux: every logical CPU lists the same flags and model name
        lines = cpuinfo.read_text().splitlines()
        flags = next((line.split(":")[1] for line in lines if line.startswith("flags")), "")
        model_name = next((line.split(":")[1] for line in lines
                           if line.startswith("model name")), "").strip()
        expected = {name: name in flags.split() for name in names}
    else:
        model_name, expected = platform.processor(), dict.fromkeys(names)
    for check in (manifest["verification"], manifest["verification_fp32"]):
        cpu = check["cpu"]
        assert cpu["features"] == expected
        assert cpu["machine"] == platform.machine() and cpu["model"] == model_name
    assert json.loads((engine_dir / MANIFEST_NAME).read_text())["verification"]["cpu"] == \
        manifest["verification"]["cpu"]
    report = inspect_engine_dir(engine_dir)
    present = " ".join(name for name in names if expected[name])
    assert f"verified on {platform.machine()} " in report and present in report
    assert "quantization: method=onnxruntime dynamic, ops=['MatMul'], weight_type=QInt8, " \
           "reduce_range=True, per_channel=True" in report


def test_no_u8s8_pair_sum_of_the_int8_graphs_can_saturate_int16(int8_engine):
    """Every integer MatMul multiplies u8 activations (DynamicQuantizeLinear) by a constant s8
    weight with zero point 0; VPMADDUBSW adds two products of one weight column, so the largest
    pair sum is at most 255 x (the column's two largest |w|)."""
    _, _, engine_dir, manifest = int8_engine
    for name, graph in load_graphs(engine_dir, list(manifest["entry_points"])).items():
        initializers = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer}
        producers = {out: node for node in graph.graph.node for out in node.output}
        matmuls = [node for node in graph.graph.node if node.op_type == "MatMulInteger"]
        assert matmuls, name
        for node in matmuls:
            assert producers[node.input[0]].op_type == "DynamicQuantizeLinear"  # u8 [0, 255]
            weight = initializers[node.input[1]]  # [K, N]
            assert weight.dtype == np.int8 and not initializers[node.input[3]].any()
            top_two = np.sort(np.abs(weight.astype(np.int32)), axis=0)[-2:].sum(axis=0)  # [N]
            worst = U8_MAX * int(top_two.max())
            assert worst <= INT16_MAX, (name, node.name, worst)


@pytest.mark.parametrize("compress_fn", each_compress_fn())
def test_int8_logits_are_the_same_under_the_avx2_kernels_saturating_arithmetic(compress_fn,
                                                                              tmp_path):
    """On the simplified graphs of every compression function: the emulation rewrites every
    integer product there is (no integer op is left to run with VNNI's exact sums), and the
    logits do not move."""
    model = random_model(tiny_config(compress_fn), std=0.1)
    engine_dir = tmp_path / "int8"
    manifest = export_model(model, engine_dir, precision="int8", log=quiet)
    entries = list(manifest["entry_points"])
    graphs = load_graphs(engine_dir, entries).values()
    assert sum(node.op_type == "MatMulInteger" for graph in graphs for node in graph.graph.node)
    avx2 = rewritten_engine(engine_dir, tmp_path / "avx2", emulated)
    for graph in load_graphs(avx2, entries).values():
        assert not {node.op_type for node in graph.graph.node} & INTEGER_PRODUCT_OPS
    tokens = np.random.default_rng(6).integers(0, 256, 20 * model.config.seg_len)
    exact = logits(engine_dir, tokens)
    assert np.abs(logits(avx2, tokens) - exact).max() <= 1e-5 * max(1.0, np.abs(exact).max())


def test_full_range_int8_weights_fail_verification_under_the_avx2_arithmetic(int8_engine,
                                                                            tmp_path):
    """The reported failure, reproduced on any CPU: 8-bit weights (ONNX Runtime's default
    quantization) verify with exact sums and not with the AVX2 kernel's saturated ones."""
    model, fp32_dir, _, _ = int8_engine

    def full_range(graph: onnx.ModelProto) -> onnx.ModelProto:
        return quantize_to_int8(graph, tmp_path, {"weight_type": "QInt8"})

    exact = rewritten_engine(fp32_dir, tmp_path / "exact", full_range)
    avx2 = rewritten_engine(exact, tmp_path / "avx2", emulated)
    assert verify_engine(model, exact, precision="int8").passed
    check = verify_engine(model, avx2, precision="int8")
    assert not check.passed
    assert max(check.segment_max_abs_error, check.extend_max_abs_error) > check.tolerance


def test_the_bench_int8_experiment_records_and_prints_the_cpu_features(int8_engine, tmp_path):
    from compressive_rt.benchmarks.extras import quantization
    from compressive_rt.benchmarks.report import quantization_rows
    from compressive_rt.benchmarks.settings import SMOKE
    from compressive_rt.runtime.cpu import cpu_features

    model, fp32_dir, _, manifest = int8_engine
    result = quantization(fp32_dir, 1, model.config, tmp_path, SMOKE)
    assert "error" not in result, result.get("error")
    assert result["cpu"] == manifest["verification"]["cpu"] == cpu_features().to_dict()
    assert result["quantization"] == {key: manifest["quantization"][key]
                                      for key in ("weight_type", "reduce_range", "per_channel")}
    assert result["segment_b1_ms"] > 0 and result["decode_b1_ms"] > 0
    assert abs(result["bpb_delta"]) <= 2e-2
    figures, isa = quantization_rows(result)
    assert "int8 dynamic quantization" in figures and f"delta {result['bpb_delta']:+.4f}" in figures
    assert isa == f"    int8 ISA: {cpu_features().describe()}"
