"""Export: the graphs, run through the runtime on ONNX Runtime CPU, equal the eager reference."""

import json

import numpy as np
import onnx
import pytest
from support.engines import each_compress_fn, random_model, tiny_config
from support.rules import FP32

from compressive_rt.export.pipeline import ExportError, export_model
from compressive_rt.export.verify import eager_logits
from compressive_rt.runtime.manifest import EngineError, load_manifest
from compressive_rt.runtime.session import Session

TOL = FP32  # max abs logit difference: these logits' scale is below 1


def random_tokens(batch: int, length: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, length)).astype(np.int64)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("compress_fn", each_compress_fn())
def test_segment_graph_reproduces_eager_over_20_segments(engine, compress_fn, batch):
    model, engine_dir = engine(compress_fn)
    seg_len = model.config.seg_len
    tokens = random_tokens(batch, 22 * seg_len)
    expected, memory = eager_logits(model, tokens)
    session = Session(engine_dir, max_streams=batch)
    streams = [session.add_stream() for _ in range(batch)]
    for start in range(0, tokens.shape[1], seg_len):
        got = session.feed({s: tokens[i, start:start + seg_len] for i, s in enumerate(streams)})
        for i, s in enumerate(streams):
            assert np.abs(got[s] - expected[i, start:start + seg_len]).max() <= TOL
    for i, s in enumerate(streams):
        state = session.stream_state(s)
        np.testing.assert_allclose(state["mem"], memory.mem[:, i].numpy(), atol=TOL, rtol=0)
        assert int(state["mem_len"]) == int(memory.mem_len[i]) == model.config.mem_len
        if compress_fn != "none":
            np.testing.assert_allclose(state["cmem"], memory.cmem[:, i].numpy(), atol=TOL, rtol=0)
            assert int(state["cmem_len"]) == int(memory.cmem_len[i]) == model.config.cmem_len


@pytest.mark.parametrize("compress_fn", each_compress_fn())
def test_extend_one_token_at_a_time_then_commit_equals_segment(engine, compress_fn):
    model, engine_dir = engine(compress_fn)
    seg_len = model.config.seg_len
    tokens = random_tokens(1, 12 * seg_len, seed=2)[0]
    whole = Session(engine_dir)
    by_token = Session(engine_dir)
    a, b = whole.add_stream(), by_token.add_stream()
    for start in range(0, len(tokens), seg_len):
        expected = whole.feed({a: tokens[start:start + seg_len]})[a]
        for t in range(seg_len):
            got = by_token.feed({b: tokens[start + t:start + t + 1]})[b]
            assert np.abs(got[0] - expected[t]).max() <= TOL
    state_whole, state_tokens = whole.stream_state(a), by_token.stream_state(b)
    assert int(state_whole["seg_len"]) == int(state_tokens["seg_len"]) == 0
    # The partial-segment buffers hold nothing valid at a boundary (seg_len 0): compare memory.
    for name in ("mem", "cmem", "mem_k", "mem_v", "mem_len", "cmem_len", "usage"):
        if name in state_whole:
            np.testing.assert_allclose(state_tokens[name], state_whole[name], atol=TOL, rtol=0,
                                       err_msg=name)


@pytest.mark.parametrize("compress_fn", each_compress_fn())
def test_streams_at_different_positions_match_each_stream_alone(engine, compress_fn):
    model, engine_dir = engine(compress_fn)
    lengths = [101, 77, 130]
    docs = [random_tokens(1, n, seed=10 + i)[0] for i, n in enumerate(lengths)]
    batched = Session(engine_dir, max_streams=3)
    ids = [batched.add_stream() for _ in docs]
    got = {s: [] for s in ids}
    done = [0, 0, 0]
    # Streams start at different offsets and advance by different chunk sizes.
    chunk_sizes = [(3, 9, 1), (11, 2, 5), (8, 8, 13)]
    step = 0
    while any(done[i] < n for i, n in enumerate(lengths)):
        feed = {}
        for i, s in enumerate(ids):
            size = chunk_sizes[i][step % 3]
            feed[s] = docs[i][done[i]:done[i] + size]
            done[i] += len(feed[s])
        for s, logits in batched.feed(feed).items():
            got[s].append(logits)
        step += 1
    for i, s in enumerate(ids):
        alone = Session(engine_dir)
        stream = alone.add_stream()
        expected = alone.feed({stream: docs[i]})[stream]
        assert np.abs(np.concatenate(got[s]) - expected).max() <= TOL


@pytest.mark.parametrize("compress_fn", ["conv", "most_used"])
def test_document_not_a_multiple_of_seg_len_scores_like_eager(engine, compress_fn):
    model, engine_dir = engine(compress_fn)
    tokens = random_tokens(1, 21 * model.config.seg_len + 5, seed=3)
    expected, _ = eager_logits(model, tokens)
    session = Session(engine_dir)
    stream = session.add_stream()
    got = session.feed({stream: tokens[0]})[stream]
    assert got.shape == expected[0].shape
    assert np.abs(got - expected[0]).max() <= TOL


@pytest.mark.slow
def test_post_layer_norm_model_exports_equal(engine):
    model, engine_dir = engine("conv", pre_norm=False)
    tokens = random_tokens(2, 20 * model.config.seg_len + 3, seed=4)
    expected, _ = eager_logits(model, tokens)
    session = Session(engine_dir, max_streams=2)
    ids = [session.add_stream(), session.add_stream()]
    got = session.feed({s: tokens[i] for i, s in enumerate(ids)})
    for i, s in enumerate(ids):
        assert np.abs(got[s] - expected[i]).max() <= TOL


def test_manifest_records_contract_hashes_and_verification(engine):
    model, engine_dir = engine("conv")
    data = json.loads((engine_dir / "manifest.json").read_text())
    assert data["config"] == model.config.to_dict()
    assert set(data["entry_points"]) == {"segment", "extend", "commit"}
    segment = data["entry_points"]["segment"]
    assert segment["inputs"][0] == {"name": "tokens", "dtype": "int32", "shape": ["batch", 8]}
    assert len(segment["sha256"]) == 64
    extend_logits = data["entry_points"]["extend"]["outputs"][0]
    assert extend_logits["shape"] == ["batch", "tokens", 256]
    check = data["verification"]
    assert check["passed"] and check["segments"] >= 20
    assert check["segment_max_abs_error"] <= check["tolerance"]
    assert {"torch", "onnx", "onnxruntime"} <= set(data["versions"])
    assert data["opset"] == 17


def test_export_refuses_graphs_that_differ_from_the_model(tmp_path, monkeypatch):
    import compressive_rt.export.pipeline as pipeline

    model = random_model(tiny_config("conv"), seed=0)
    other = random_model(tiny_config("conv"), seed=1)
    real_export = pipeline.export_graphs
    # A faulty exporter: writes another model's graphs; verification must catch it.
    monkeypatch.setattr(pipeline, "export_graphs",
                        lambda _, out, **options: real_export(other, out, **options))
    out = tmp_path / "engine"
    with pytest.raises(ExportError, match="differ from the eager model"):
        export_model(model, out, log=lambda *_: None)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temp directory left behind


def test_export_to_an_unwritable_place_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    with pytest.raises(ExportError, match="cannot write"):
        export_model(random_model(tiny_config()), blocker / "engine", log=lambda *_: None)


def test_export_refuses_a_non_engine_directory_with_files(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not empty"):
        export_model(random_model(tiny_config()), tmp_path, log=lambda *_: None)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_runtime_refuses_a_graph_changed_after_export(engine, tmp_path):
    import shutil

    _, engine_dir = engine("mean_pool")
    copy = tmp_path / "engine"
    shutil.copytree(engine_dir, copy)
    graph = copy / "extend.onnx"
    graph.write_bytes(graph.read_bytes()[:-100])  # truncated
    with pytest.raises(EngineError, match="extend.onnx does not match the sha256"):
        load_manifest(copy)


def test_runtime_refuses_a_manifest_whose_contract_does_not_match(engine, tmp_path):
    import shutil

    _, engine_dir = engine("mean_pool")
    copy = tmp_path / "engine"
    shutil.copytree(engine_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["config"]["mem_len"] = 32
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EngineError, match="do not match this runtime's engine contract"):
        Session(copy)


def test_graphs_keep_no_zero_length_dimension_for_a_plain_transformer_xl(engine):
    _, engine_dir = engine("none")
    manifest = load_manifest(engine_dir)
    for entry in manifest.contract.values():
        for spec in (*entry.inputs, *entry.outputs):
            assert 0 not in spec.shape, spec
            assert not spec.name.startswith("cmem")


def run_ctrt(*args: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "compressive_rt.cli.main", *args],
                          capture_output=True, text=True, timeout=300)


def saved_checkpoint(path, compress_fn: str = "conv"):
    from compressive_rt.ct_reference.checkpoint import save_checkpoint

    save_checkpoint(path, random_model(tiny_config(compress_fn)))
    return path


@pytest.mark.slow
def test_ctrt_export_writes_a_verified_engine(tmp_path):
    checkpoint = saved_checkpoint(tmp_path / "ckpt")
    result = run_ctrt("export", str(checkpoint), str(tmp_path / "engine"))
    assert result.returncode == 0, result.stderr
    assert "max |logit error| segment" in result.stdout
    manifest = load_manifest(tmp_path / "engine")
    assert manifest.data["checkpoint"]["sha256"]
    assert manifest.data["verification"]["passed"]


@pytest.mark.slow
def test_ctrt_export_of_a_corrupt_checkpoint_is_a_clear_error_and_writes_nothing(tmp_path):
    checkpoint = saved_checkpoint(tmp_path / "ckpt")
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    result = run_ctrt("export", str(checkpoint), str(tmp_path / "engine"))
    assert result.returncode == 2
    assert result.stderr.startswith("error:") and "model.safetensors" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "engine").exists()


@pytest.mark.slow
def test_ctrt_export_of_an_unknown_compression_function_is_a_clear_error(tmp_path):
    checkpoint = saved_checkpoint(tmp_path / "ckpt")
    config = json.loads((checkpoint / "config.json").read_text())
    config["compress_fn"] = "zip"
    (checkpoint / "config.json").write_text(json.dumps(config))
    result = run_ctrt("export", str(checkpoint), str(tmp_path / "engine"))
    assert result.returncode == 2
    assert "unknown compress_fn 'zip'" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "engine").exists()


@pytest.mark.slow
@pytest.mark.parametrize("compress_fn", each_compress_fn())
def test_fp16_engine_runs_optimized_on_the_cpu_within_the_fp16_tolerance(engine, compress_fn):
    """ONNX Runtime opens fp16 graphs with graph optimisation on (the Casts of the fp16
    weights fold at load), and they stay within fp16's stated tolerance of the eager model."""
    import onnxruntime

    model, engine_dir = engine(compress_fn, "fp16")
    manifest = json.loads((engine_dir / "manifest.json").read_text())
    assert manifest["precision"] == "fp16"
    assert manifest["verification_fp32"]["passed"]
    check = manifest["verification"]
    assert check["precision"] == "fp16" and check["passed"]
    assert check["tolerance"] == pytest.approx(3e-2 * max(1.0, check["logit_scale"]))
    assert check["segment_max_abs_error"] > manifest["verification_fp32"]["segment_max_abs_error"]
    tokens = random_tokens(1, 21 * model.config.seg_len, seed=5)
    expected, _ = eager_logits(model, tokens)
    session = Session(engine_dir, backend="onnxruntime-cpu")
    levels = {entry: ort_session.get_session_options().graph_optimization_level
              for entry, ort_session in session.backend.sessions.items()}
    assert levels == dict.fromkeys(("segment", "extend", "commit"),
                                   onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL)
    stream = session.add_stream()
    got = session.feed({stream: tokens[0]})[stream]
    assert np.abs(got - expected[0]).max() <= check["tolerance"]


@pytest.mark.slow
def test_fp16_export_of_most_used_is_verified_and_types_check(engine):
    """most_used counts slots in floats (CumSum, Range, Casts from bool): they stay fp32, so
    the fp16 graph is well typed (a strongly typed TensorRT build needs that) and verifies."""
    _, engine_dir = engine("most_used", "fp16")
    manifest = json.loads((engine_dir / "manifest.json").read_text())
    assert manifest["precision"] == "fp16" and manifest["verification"]["passed"]
    for entry in manifest["entry_points"].values():
        onnx.checker.check_model(onnx.load(str(engine_dir / entry["file"])), full_check=True)


def test_graphs_are_simplified_and_the_manifest_and_inspect_count_their_nodes(engine,
                                                                             tmp_path):
    from compressive_rt.export.inspection import inspect_engine_dir, op_histogram
    from compressive_rt.export.onnx_export import trace_graphs

    model, engine_dir = engine("conv")
    traced = trace_graphs(model, tmp_path)
    data = json.loads((engine_dir / "manifest.json").read_text())
    report = inspect_engine_dir(engine_dir)
    for name, entry in data["entry_points"].items():
        graph = onnx.load(str(engine_dir / entry["file"]), load_external_data=False)
        assert entry["nodes"] == len(graph.graph.node) < len(traced[name].graph.node) / 2
        assert f"[{name}] {entry['file']}: " in report and f", {entry['nodes']} nodes\n" in report
        ops, traced_ops = op_histogram(graph), op_histogram(traced[name])
        assert ops["Constant"] == 0 < traced_ops["Constant"]
        assert ops["Shape"] < traced_ops["Shape"] and ops["Unsqueeze"] < traced_ops["Unsqueeze"]
