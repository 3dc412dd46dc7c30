"""`ctrt store list` and `ctrt store migrate` (serving/migration.py) on a local store: streams of
an engine move to a re-export of the same checkpoint (same numerics, other graph bytes, so
another identity and namespace), and a contract v2 engine's store (tests/fixtures/contract_v2)
to the v3 engine of its checkpoint, and continue there equal to an uninterrupted stream;
engines of another checkpoint, config or precision are refused with what differs; a rerun
moves nothing twice, and a run cut off midway is finished by the next."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient
from support.engines import copy_engine
from support.serving import Reference, assert_close

from compressive_rt.cli.main import main
from compressive_rt.errors import RuntimeInputError
from compressive_rt.runtime.manifest import load_manifest
from compressive_rt.runtime.session import Session
from compressive_rt.serving import migration
from compressive_rt.serving.namespaces import EngineNamespace, engine_namespace
from compressive_rt.serving.server import open_engine
from compressive_rt.serving.settings import ServeSettings
from compressive_rt.serving.sqlite_store import SQLiteStore

pytestmark = pytest.mark.serving

V2_FIXTURE = Path(__file__).parent / "fixtures" / "contract_v2"
CHECKPOINT = "c0ffee" * 10 + "abcd"  # a checkpoint's SHA-256, as `ctrt export` records it
# (history fed before the snapshot, tokens logged after it), per stream
STREAMS = {"snapshot_and_log": (b"def main():\n    return 0\n", b"# a tail\n"),
           "log_only": (b"", b"print('hello')\n"),
           "empty": (b"", b"")}
CONTINUATION = b"if __name__ == '__main__':\n    main()\n"


@pytest.fixture
def engines(engine_dir, tmp_path):
    """(old engine, its re-export, an engine of another checkpoint)."""
    return (copy_engine(engine_dir, tmp_path / "old", CHECKPOINT),
            copy_engine(engine_dir, tmp_path / "new", CHECKPOINT, "re-exported"),
            copy_engine(engine_dir, tmp_path / "other", "0" * 64))


def fill_store(store_dir, engine) -> None:
    """STREAMS in a local store as the old engine's server leaves them: a snapshot (taken by
    the runtime after its history) and the tokens logged after it."""
    session = Session(engine, max_streams=1)
    store = SQLiteStore(store_dir, engine_namespace(session.manifest))
    for stream_id, (history, tail) in STREAMS.items():
        store.create(stream_id)
        version = store.take(stream_id).version
        if history:
            row = session.add_stream()
            session.feed({row: np.frombuffer(history, dtype=np.uint8).astype(np.int32)})
            store.put_snapshot(stream_id, version, len(history), session.snapshot(row))
            session.remove_stream(row)
        if tail:
            store.append(stream_id, version, len(history), tail)
    store.close()


def ctrt(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_streams_move_to_a_re_export_and_continue_equal_to_an_uninterrupted_run(
        engines, engine_dir, tmp_path, capsys):
    old, new, _ = engines
    fill_store(tmp_path / "store", old)
    code, out, err = ctrt(capsys, "store", "migrate", tmp_path / "store", "--engine", new)
    old_ns = engine_namespace(load_manifest(old))
    new_ns = engine_namespace(load_manifest(new))
    assert (code, out) == (0, f"moved 3 streams from namespace {old_ns.digest} to "
                              f"{new_ns.digest}\n"), err
    assert f"{old_ns.digest} -> {new_ns.digest}: 100%" in err.splitlines()[-1]  # progress
    code, out, _ = ctrt(capsys, "store", "list", tmp_path / "store")
    rows = [line.split()[:4] for line in out.splitlines()[1:]]
    assert rows == [[new_ns.digest, "3", rows[0][2], "0"], [old_ns.digest, "0", "0", "3"]]
    settings = ServeSettings(model_name="tiny", streams=2)
    app, _ = open_engine(new, settings, tmp_path / "store", threads=1)
    with TestClient(app) as client:
        for stream_id, (history, tail) in STREAMS.items():
            reference = Reference(engine_dir)  # the uninterrupted stream
            if history + tail:
                reference.append(history + tail)
            answer = client.post(f"/v1/streams/{stream_id}/append",
                                 json={"text": CONTINUATION.decode()})
            assert answer.status_code == 200, answer.text
            assert answer.json()["position"] == len(history + tail + CONTINUATION)
            assert_close(answer.json()["bits_per_byte"], reference.bits_per_byte(CONTINUATION))


def test_a_rerun_moves_nothing_and_a_run_cut_off_midway_is_finished(engines, tmp_path, capsys,
                                                                    monkeypatch):
    old, new, _ = engines
    fill_store(tmp_path / "store", old)
    real_move = SQLiteStore.move

    def crash_after_the_first(store, stream_id, *args):
        real_move(store, stream_id, *args)
        raise KeyboardInterrupt  # the command is killed after its first stream

    monkeypatch.setattr(SQLiteStore, "move", crash_after_the_first)
    assert ctrt(capsys, "store", "migrate", tmp_path / "store", "--engine", new)[0] == 130
    monkeypatch.setattr(SQLiteStore, "move", real_move)
    code, out, _ = ctrt(capsys, "store", "migrate", tmp_path / "store", "--engine", new)
    assert (code, out.split(" from ")[0]) == (0, "moved 2 streams")
    code, out, _ = ctrt(capsys, "store", "migrate", tmp_path / "store", "--engine", new)
    new_ns = engine_namespace(load_manifest(new))
    assert (code, out) == (0, f"nothing to move: the store holds no streams of another engine "
                              f"than {new_ns.digest}\n")
    store = SQLiteStore(tmp_path / "store", new_ns)
    assert store.positions() == {stream_id: len(history + tail)
                                 for stream_id, (history, tail) in STREAMS.items()}
    assert store.take("snapshot_and_log").tail == STREAMS["snapshot_and_log"][1]
    store.close()


def test_an_engine_of_another_checkpoint_is_refused_with_what_differs(engines, tmp_path,
                                                                      capsys):
    old, _, other = engines
    fill_store(tmp_path / "store", old)
    code, out, err = ctrt(capsys, "store", "migrate", tmp_path / "store", "--engine", other)
    old_ns = engine_namespace(load_manifest(old))
    assert (code, out, len(err.splitlines())) == (2, "", 1)
    assert err.startswith(f"error: namespace {old_ns.digest} was taken with another engine "
                          f"(other weights or graphs; its memory projections do not fit this "
                          f"one) and names another checkpoint: snapshot engine contract v3, "
                          f"checkpoint {CHECKPOINT[:12]}, fp32, graphs ")
    assert f"; this engine contract v3, checkpoint {'0' * 12}, fp32, graphs " in err
    store = SQLiteStore(tmp_path / "store", old_ns)
    assert sorted(store.positions()) == sorted(STREAMS)  # nothing moved
    store.close()


def test_the_rule_asks_the_same_config_and_precision(engines):
    """The restore-compatibility rule, as the migration applies it to a namespace (the
    engines' graphs are not needed: this is the store's record against a manifest)."""
    old, new, _ = engines
    source, manifest = engine_namespace(load_manifest(old)), load_manifest(new)
    migration.check_compatible(source, manifest)
    int8 = replace(manifest, data={**manifest.data, "precision": "int8"})
    with pytest.raises(RuntimeInputError, match=f"namespace {source.digest} was taken with a "
                                                f"fp32 engine of this checkpoint; this engine "
                                                f"is int8"):
        migration.check_compatible(source, int8)
    wider = replace(source, config={**source.config, "d_model": 64})
    with pytest.raises(RuntimeInputError, match="was taken with another model config"):
        migration.check_compatible(wider, manifest)
    unrecorded = EngineNamespace(source.key)  # a namespace from before stores recorded these
    migration.check_compatible(unrecorded, manifest)


def test_the_converted_snapshot_is_the_new_engines(engines, tmp_path):
    """The snapshot written into the new namespace names the new engine (its server restores
    it) and holds the same state."""
    old, new, _ = engines
    fill_store(tmp_path / "store", old)
    session = Session(new, max_streams=1)
    store = SQLiteStore(tmp_path / "store", None)
    source = engine_namespace(load_manifest(old))
    assert migration.migrate(store, source, session).moved == 3
    store.enter(engine_namespace(session.manifest))
    restored = session.restore(store.take("snapshot_and_log").snapshot)
    assert session.positions[restored] == len(STREAMS["snapshot_and_log"][0])
    store.close()


def test_a_store_of_the_v2_engine_moves_to_the_v3_engine_of_its_checkpoint(tmp_path, capsys):
    """tests/fixtures/contract_v2/store: a `ctrt serve` store (SQLite schema 2) of a contract
    v2 engine, killed with streams that have a snapshot and a log tail. Moved by the command to
    the v3 engine re-exported from the same checkpoint, every stream continues there equal to
    an uninterrupted run of the v3 engine."""
    from compressive_rt.ct_reference.checkpoint import checkpoint_sha256, load_model
    from compressive_rt.export.pipeline import export_model

    model, _ = load_model(V2_FIXTURE / "checkpoint")
    engine = tmp_path / "engine_v3"
    export_model(model, engine, log=lambda *_: None,
                 checkpoint={"path": "checkpoint",
                             "sha256": checkpoint_sha256(V2_FIXTURE / "checkpoint")})
    shutil.copytree(V2_FIXTURE / "store", tmp_path / "store")
    texts = json.loads((V2_FIXTURE / "store_texts.json").read_text())
    code, out, err = ctrt(capsys, "store", "migrate", tmp_path / "store", "--engine", engine)
    assert (code, out.split(" from ")[0]) == (0, f"moved {len(texts)} streams"), err
    settings = ServeSettings(model_name="v3", streams=2)
    app, _ = open_engine(engine, settings, tmp_path / "store", threads=1)
    with TestClient(app) as client:
        for stream_id, text in texts.items():
            reference = Reference(engine)
            reference.append(text.encode())
            answer = client.post(f"/v1/streams/{stream_id}/append",
                                 json={"text": CONTINUATION.decode()})
            assert answer.status_code == 200, answer.text
            assert answer.json()["position"] == len(text) + len(CONTINUATION)
            assert_close(answer.json()["bits_per_byte"], reference.bits_per_byte(CONTINUATION))
