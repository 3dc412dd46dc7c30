"""Weights once: one weights file per engine directory, one copy in memory, fp16 engines
(int8 engines: test_int8.py)."""

import hashlib
import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from support.engines import each_compress_fn, random_model, tiny_config

from compressive_rt.benchmarks.memory import directory_bytes, runtime_peak_rss, state_bytes
from compressive_rt.export.pipeline import export_model
from compressive_rt.runtime.manifest import EngineError
from compressive_rt.runtime.session import RuntimeInputError, Session

MIB = 1024**2
# What a process that scores may add beyond weights + state: ONNX Runtime's activation arena
# and kernels' scratch (measured 23-25 MiB at d_model 256); a second copy of the weights
# (~37 MiB in `wide_engine`) would not fit.
RSS_MARGIN_MIB = 30


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def wide_engine(tmp_path_factory):
    """d_model 256, 4 layers, d_ff 4096 (~37 MiB of fp32 weights): a second copy in memory
    would show."""
    config = tiny_config("conv", n_layers=4, d_model=256, n_heads=4, d_ff=4096, seg_len=32,
                         mem_len=64, cmem_len=32)
    model = random_model(config, std=0.05)
    out = tmp_path_factory.mktemp("wide") / "engine"
    export_model(model, out, verify_segments=2, log=quiet)  # it is here for its size
    return model, out


def external_locations(graph_path) -> set[str]:
    graph = onnx.load(str(graph_path), load_external_data=False)
    return {entry.value for tensor in graph.graph.initializer for entry in tensor.external_data
            if entry.key == "location"}


def test_the_three_graphs_point_at_one_relative_weights_file(engine):
    _, engine_dir = engine("conv")
    data = json.loads((engine_dir / "manifest.json").read_text())
    weights = data["weights"]
    assert weights["file"] == "weights.bin"
    path = engine_dir / "weights.bin"
    assert weights["bytes"] == path.stat().st_size
    assert weights["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    for entry in data["entry_points"].values():
        assert external_locations(engine_dir / entry["file"]) == {"weights.bin"}
        assert entry["initializers"]


def test_a_tensor_several_graphs_use_is_stored_once(engine):
    _, engine_dir = engine("conv")
    data = json.loads((engine_dir / "manifest.json").read_text())
    keys = {name: set(entry["initializers"].values())
            for name, entry in data["entry_points"].items()}
    assert keys["segment"] & keys["extend"] and keys["segment"] & keys["commit"]
    blob = (engine_dir / "weights.bin").read_bytes()
    contents = []
    for tensor in data["weights"]["tensors"].values():
        size = int(np.prod(tensor["shape"])) * np.dtype(tensor["dtype"]).itemsize
        contents.append(blob[tensor["offset"]:tensor["offset"] + size])
    assert len(set(contents)) == len(contents)  # no two stored tensors hold the same bytes


@pytest.mark.slow
def test_engine_directory_is_within_1_1x_the_weights(wide_engine):
    model, engine_dir = wide_engine
    parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert directory_bytes(engine_dir) <= 1.1 * parameter_bytes


@pytest.mark.parametrize("damage, message", [
    ("flip", "weights.bin does not match the sha256"),
    ("truncate", "weights.bin holds 4096 bytes"),
    ("remove", "weights.bin is missing"),
])
def test_runtime_refuses_a_damaged_weights_file_before_onnx_runtime_reads_it(
        engine, tmp_path, monkeypatch, damage, message):
    import onnxruntime

    _, engine_dir = engine("mean_pool")
    copy = tmp_path / "engine"
    shutil.copytree(engine_dir, copy)
    weights = copy / "weights.bin"
    blob = bytearray(weights.read_bytes())
    if damage == "flip":
        blob[len(blob) // 2] ^= 0xFF
        weights.write_bytes(bytes(blob))
    elif damage == "truncate":
        weights.write_bytes(bytes(blob[:4096]))
    else:
        weights.unlink()

    def no_session(*args, **kwargs):
        raise AssertionError("ONNX Runtime was given a damaged engine")

    monkeypatch.setattr(onnxruntime, "InferenceSession", no_session)
    with pytest.raises(EngineError, match=message):
        Session(copy)


def test_a_manifest_without_its_weights_entry_is_refused(engine, tmp_path):
    """Without the entry the graphs would read weights.bin with no hash check."""
    _, engine_dir = engine("mean_pool")
    copy = tmp_path / "engine"
    shutil.copytree(engine_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["weights"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EngineError, match="lists no weights file: re-export the checkpoint"):
        Session(copy)


@pytest.mark.slow
def test_a_session_without_prepacking_holds_one_copy_of_the_weights(wide_engine):
    model, engine_dir = wide_engine
    weights_mib = (engine_dir / "weights.bin").stat().st_size / MIB
    state_mib = state_bytes(model.config.to_dict(), 1) / MIB
    rss = runtime_peak_rss(engine_dir, streams=1, tokens=100, prepack="none")
    grown = rss["peak_mib"] - rss["baseline_mib"]
    assert grown <= weights_mib + state_mib + RSS_MARGIN_MIB, (grown, weights_mib, state_mib)


@pytest.mark.slow
def test_prepacking_every_session_costs_at_least_one_more_copy_of_the_weights(wide_engine):
    _, engine_dir = wide_engine
    weights_mib = (engine_dir / "weights.bin").stat().st_size / MIB
    peak = {mode: runtime_peak_rss(engine_dir, streams=1, tokens=100, prepack=mode)["peak_mib"]
            for mode in ("none", "all")}
    assert peak["all"] - peak["none"] >= weights_mib, (peak, weights_mib)


@pytest.mark.slow
def test_an_unknown_prepack_mode_is_refused(wide_engine):
    with pytest.raises(RuntimeInputError, match="prepack must be one of all, decode, none, "
                                                "got 'some'"):
        Session(wide_engine[1], prepack="some")


@pytest.mark.slow
def test_fp16_engine_has_its_own_weights_file_at_half_the_size(engine):
    _, fp32_dir = engine("conv")
    _, fp16_dir = engine("conv", "fp16")
    manifest = json.loads((fp16_dir / "manifest.json").read_text())
    fp16_bytes = manifest["weights"]["bytes"]
    assert fp16_bytes == (fp16_dir / "weights.bin").stat().st_size
    stored = sum(int(np.prod(t["shape"])) for t in manifest["weights"]["tensors"].values())
    dtypes = {t["dtype"] for t in manifest["weights"]["tensors"].values()}
    assert {dtype for dtype in dtypes if dtype.startswith("float")} == {"float16"}
    assert dtypes - {"float16"} <= {"int64"}  # index tables folded from the tracer's constants
    assert stored * 2 <= fp16_bytes < json.loads(
        (fp32_dir / "manifest.json").read_text())["weights"]["bytes"]



def float_tensors(graph: onnx.ModelProto) -> list[np.ndarray]:
    """The graph's floating-point initializers and Constant node values."""
    tensors = [numpy_helper.to_array(t) for t in graph.graph.initializer]
    tensors += [numpy_helper.to_array(a.t) for node in graph.graph.node
                if node.op_type == "Constant" for a in node.attribute if a.name == "value"]
    return [t for t in tensors if t.dtype.kind == "f"]


def tensors_made_by_simplifying(model, work_dir) -> dict[str, bytes]:
    """Float initializers of the simplified graphs that the traced graphs do not hold (as an
    initializer or a Constant node), by graph and name."""
    from compressive_rt.export.onnx_export import trace_graphs
    from compressive_rt.export.simplify import simplify_graph

    made = {}
    for name, traced in trace_graphs(model, work_dir).items():
        known = {(t.dtype.str, t.shape, t.tobytes()) for t in float_tensors(traced)}
        for tensor in simplify_graph(traced).graph.initializer:
            array = numpy_helper.to_array(tensor)
            if array.dtype.kind == "f" and (array.dtype.str, array.shape,
                                            array.tobytes()) not in known:
                made[f"{name}/{tensor.name}"] = array.tobytes()
    return made


@pytest.mark.parametrize("compress_fn", each_compress_fn())
def test_simplifying_the_graphs_derives_no_new_tensor_from_the_weights(compress_fn, tmp_path):
    """What simplification folds into new tensors (index tables, slot counts) is the same for
    two models of one config with different weights: nothing is computed from the weights."""
    config = tiny_config(compress_fn)
    first = tensors_made_by_simplifying(random_model(config, seed=0), tmp_path)
    second = tensors_made_by_simplifying(random_model(config, seed=1), tmp_path)
    assert first == second
