"""Contract v3 (runtime/contract.py): state per layer, no copy of state in extend, engines of
format 2 refused, snapshots of a v2 engine converted on restore into the v3 engine of the same
checkpoint and refused by any other (tests/fixtures/contract_v2: data written by the v2 code)."""

import io
import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import onnx
import pytest
from support.rules import fp32_bound

from compressive_rt.ct_reference.checkpoint import checkpoint_sha256, load_model
from compressive_rt.errors import EngineError
from compressive_rt.export.pipeline import export_model
from compressive_rt.runtime.contract import PER_LAYER, entry_points, graph_tensor_parts
from compressive_rt.runtime.manifest import Manifest, load_manifest
from compressive_rt.runtime.session import RuntimeInputError, Session
from compressive_rt.runtime.snapshot import check_restore_compatible

FIXTURE = Path(__file__).parent / "fixtures" / "contract_v2"
CHECKPOINT = FIXTURE / "checkpoint"
HISTORIES = json.loads((FIXTURE / "histories.json").read_text())
MORE = (np.arange(30, dtype=np.int32) * 11) % 256  # 30 tokens: crosses 3 or 4 commits


def export_checkpoint(out_dir: Path, precision: str = "fp32") -> Path:
    """`ctrt export CHECKPOINT OUT` of the fixture's checkpoint (its checkpoint_sha256)."""
    model, _ = load_model(CHECKPOINT)
    checkpoint = {"path": str(CHECKPOINT), "sha256": checkpoint_sha256(CHECKPOINT)}
    export_model(model, out_dir, checkpoint=checkpoint, precision=precision,
                 log=lambda *_: None)
    return out_dir


@pytest.fixture(scope="module")
def v3_engine(tmp_path_factory):
    return export_checkpoint(tmp_path_factory.mktemp("v3") / "engine")


def test_the_fixture_is_the_v2_engine_of_this_checkpoint():
    manifest = json.loads((FIXTURE / "engine_v2" / "manifest.json").read_text())
    assert manifest["format_version"] == 2
    assert manifest["checkpoint"]["sha256"] == checkpoint_sha256(CHECKPOINT)


def test_an_engine_of_format_2_is_refused_naming_the_re_export(tmp_path):
    engine_dir = tmp_path / "engine"
    shutil.copytree(FIXTURE / "engine_v2", engine_dir)
    with pytest.raises(EngineError, match=r"has format_version 2; this runtime reads version 3 "
                                          r"\(contract v3, state per layer\): re-export the "
                                          r"checkpoint with `ctrt export CHECKPOINT "):
        load_manifest(engine_dir)
    with pytest.raises(EngineError, match="re-export"):
        Session(engine_dir)


@pytest.mark.parametrize("name", sorted(HISTORIES))
def test_a_v2_snapshot_restores_exactly_and_continues_as_an_uninterrupted_v3_stream(
        v3_engine, name):
    history = np.array(HISTORIES[name], dtype=np.int32)
    session = Session(v3_engine, max_streams=2)
    restored = session.restore(FIXTURE / f"{name}.npz")
    with np.load(FIXTURE / f"{name}.npz", allow_pickle=False) as v2:
        # the relayout into per-layer buffers is exact: the state is the v2 arrays, bit for bit
        for tensor, value in session.stream_state(restored).items():
            np.testing.assert_array_equal(value, v2[tensor], err_msg=tensor)
    assert session.position(restored) == len(history)
    uninterrupted = session.add_stream()
    session.feed({uninterrupted: history[:20]})
    session.feed({uninterrupted: history[20:]})
    want_state = session.stream_state(uninterrupted)
    for tensor, value in session.stream_state(restored).items():
        np.testing.assert_allclose(value, want_state[tensor], atol=fp32_bound(want_state[tensor]),
                                   rtol=0, err_msg=tensor)
    np.testing.assert_allclose(session.last_logits(restored), session.last_logits(uninterrupted),
                               atol=fp32_bound(session.last_logits(uninterrupted)), rtol=0)
    got = session.feed({restored: MORE, uninterrupted: MORE})
    np.testing.assert_allclose(got[restored], got[uninterrupted],
                               atol=fp32_bound(got[uninterrupted]), rtol=0)
    assert session.position(restored) == session.position(uninterrupted) == len(history) + 30


def test_a_v2_snapshot_is_refused_by_an_engine_of_another_checkpoint(engine):
    _, other = engine("conv")  # the same config, other weights, exported without a checkpoint
    with pytest.raises(RuntimeInputError, match=r"taken with another engine .* names another "
                                                r"checkpoint: snapshot engine contract v2, "
                                                r"checkpoint 6cbb347c56f9, precision not "
                                                r"recorded, .*; this engine contract v3, "
                                                r"checkpoint not recorded, fp32"):
        Session(other).restore(FIXTURE / "partial_cmem.npz")


def with_data(manifest: Manifest, **changes) -> Manifest:
    return Manifest(manifest.engine_dir, {**manifest.data, **changes}, manifest.contract)


def v2_meta() -> dict:
    with np.load(FIXTURE / "boundary.npz", allow_pickle=False) as archive:
        return json.loads(archive["__meta__"].tobytes())


def test_the_restore_rule_asks_the_same_checkpoint_config_and_precision(v3_engine):
    manifest, meta = load_manifest(v3_engine), v2_meta()
    check_restore_compatible(meta["engine"], meta["config"], manifest)  # converted on load
    other_config = {**meta["config"], "dropout": 0.5}
    with pytest.raises(RuntimeInputError, match="taken with another model config than this "
                                                "engine's: snapshot engine contract v2"):
        check_restore_compatible(meta["engine"], meta["config"], with_data(
            manifest, config=other_config))
    with pytest.raises(RuntimeInputError, match="the snapshot was taken with a fp32 engine of "
                                                "this checkpoint; this engine is int8 .*: "
                                                "restore it into a fp32 engine"):
        check_restore_compatible(meta["engine"], meta["config"],
                                 with_data(manifest, precision="int8"))
    # a v2 identity records no precision: the caller may name it (a store moved to int8)
    check_restore_compatible(meta["engine"], meta["config"], with_data(manifest, precision="int8"),
                             precision="int8")
    with pytest.raises(RuntimeInputError, match="names no checkpoint"):
        check_restore_compatible({**meta["engine"], "checkpoint_sha256": None}, meta["config"],
                                 with_data(manifest, checkpoint={}))


@pytest.mark.slow
def test_a_v2_snapshot_is_refused_by_the_int8_engine_of_its_checkpoint(tmp_path):
    int8 = export_checkpoint(tmp_path / "int8", precision="int8")
    with pytest.raises(RuntimeInputError, match="taken with a fp32 engine of this checkpoint; "
                                                "this engine is int8"):
        Session(int8).restore(FIXTURE / "partial_cmem.npz")


def test_a_v3_snapshot_records_its_precision_and_restores_into_its_engine(v3_engine):
    session = Session(v3_engine, max_streams=2)
    stream = session.add_stream()
    session.feed({stream: MORE})
    data = session.snapshot(stream)
    restored = session.restore(data)
    for tensor, value in session.stream_state(stream).items():
        np.testing.assert_array_equal(session.stream_state(restored)[tensor], value)
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        engine = json.loads(archive["__meta__"].tobytes())["engine"]
    assert engine["contract_version"] == 3 and engine["precision"] == "fp32"


def state_inputs(graph: onnx.ModelProto) -> set[str]:
    """The graph inputs that are a layer of a per-layer state tensor (`mem_k.0`, ...)."""
    return {value.name for value in graph.graph.input
            if graph_tensor_parts(value.name)[0] in PER_LAYER}


def test_extend_reads_every_layers_state_in_place(v3_engine):
    manifest = load_manifest(v3_engine)
    n_layers = manifest.config["n_layers"]
    graph = onnx.load(str(v3_engine / "extend.onnx"), load_external_data=False)
    inputs = state_inputs(graph)
    assert inputs == {f"{name}.{i}" for name in ("mem_k", "mem_v", "seg_k", "seg_v")
                      for i in range(n_layers)}
    copies = [(node.op_type, list(node.input)) for node in graph.graph.node
              if node.op_type in ("Split", "Concat", "Squeeze") and inputs & set(node.input)]
    assert copies == []
    assert [value.name for value in graph.graph.output] == \
        entry_points(manifest.config)["extend"].output_names
    for entry in ("segment", "extend", "commit"):
        recorded = manifest.data["entry_points"][entry]["nodes"]
        graph = onnx.load(str(v3_engine / f"{entry}.onnx"), load_external_data=False)
        assert recorded == len(graph.graph.node) > 0
    # No Split of state anywhere: each layer's state is its own input.
    for entry in ("segment", "commit"):
        graph = onnx.load(str(v3_engine / f"{entry}.onnx"), load_external_data=False)
        assert not [node for node in graph.graph.node
                    if node.op_type == "Split" and state_inputs(graph) & set(node.input)]


def test_the_streams_of_a_v2_store_continue_in_the_v3_engine_of_its_checkpoint(v3_engine,
                                                                                tmp_path):
    """What moving a `ctrt serve` store to the re-exported engine rests on: each stream's v2
    snapshot restores and its log tail replays to the state of an uninterrupted v3 run."""
    texts = json.loads((FIXTURE / "store_texts.json").read_text())
    shutil.copytree(FIXTURE / "store", tmp_path / "store")
    with sqlite3.connect(tmp_path / "store" / "streams.sqlite3") as db:
        snapshots = dict(db.execute("SELECT stream, data FROM snapshots"))
        tails = {stream: b"".join(tokens for (tokens,) in db.execute(
            "SELECT tokens FROM wal WHERE stream = ? ORDER BY start", (stream,)))
            for stream in texts}
    assert sorted(snapshots) == sorted(texts) and all(tails.values())
    session = Session(v3_engine, max_streams=2)
    for stream, text in texts.items():
        restored = session.restore(snapshots[stream])
        data = np.frombuffer(text.encode(), dtype=np.uint8).astype(np.int32)
        assert session.position(restored) + len(tails[stream]) == len(data)
        assert text.encode().endswith(tails[stream])
        session.feed({restored: np.frombuffer(tails[stream], dtype=np.uint8)})
        uninterrupted = session.add_stream()
        session.feed({uninterrupted: data})
        want = session.last_logits(uninterrupted)
        np.testing.assert_allclose(session.last_logits(restored), want, atol=fp32_bound(want),
                                   rtol=0)
        session.remove_stream(restored)
        session.remove_stream(uninterrupted)
