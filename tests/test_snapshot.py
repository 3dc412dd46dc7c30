"""Snapshots (runtime/snapshot.py): refused before anything changes, engine identity enforced.

Each bad snapshot below was accepted, or failed after changing a stream, before the checks
moved into runtime/snapshot.py (issue 11)."""

import json
import shutil

import numpy as np
import pytest
from support.engines import random_model, tiny_config

from compressive_rt.export.pipeline import export_model
from compressive_rt.runtime.manifest import FORMAT_VERSION, MANIFEST_NAME
from compressive_rt.runtime.session import RuntimeInputError, Session
from compressive_rt.runtime.snapshot import META, SNAPSHOT_FORMAT_VERSION, expected_counts

TOKENS = np.arange(37, dtype=np.int32) % 256  # 37 = 4 * 8 + 5: mem full, cmem 4, seg_len 5


@pytest.fixture
def taken(engine, tmp_path):
    """(engine dir, snapshot path) of a stream after 37 tokens of the tiny conv engine."""
    _, engine_dir = engine("conv")
    session = Session(engine_dir)
    stream = session.add_stream()
    session.feed({stream: TOKENS})
    path = tmp_path / "stream.npz"
    session.snapshot(stream, path)
    return engine_dir, path


def edited(path, tmp_path, meta_changes=None, drop_meta=(), **tensors):
    """A copy of the snapshot at `path` with meta fields and tensors replaced."""
    with np.load(path, allow_pickle=False) as archive:
        data = {name: archive[name] for name in archive.files}
    meta = json.loads(data.pop(META).tobytes())
    meta.update(meta_changes or {})
    for key in drop_meta:
        del meta[key]
    data.update(tensors)
    out = tmp_path / "edited.npz"
    np.savez(out, **{META: np.frombuffer(json.dumps(meta).encode(), np.uint8)}, **data)
    return out


def states_equal(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_the_snapshot_records_the_engine_identity_and_its_format(taken):
    engine_dir, path = taken
    with np.load(path, allow_pickle=False) as archive:
        meta = json.loads(archive[META].tobytes())
        assert archive[META].dtype == np.uint8 and archive[META].ndim == 1
        assert archive["last_logits"].shape == (256,) and meta["last_logits"] is True
        assert int(archive["seg_len"]) == 5 and archive["seg_len"].dtype == np.int32
    manifest = json.loads((engine_dir / MANIFEST_NAME).read_text())
    assert meta["format_version"] == SNAPSHOT_FORMAT_VERSION and meta["position"] == 37
    assert meta["engine"]["graphs"] == {name: entry["sha256"] for name, entry
                                        in manifest["entry_points"].items()}
    assert meta["engine"]["contract_version"] == manifest["format_version"]


def test_counts_follow_from_the_position():
    config = tiny_config("conv").to_dict()  # L=8, M=16, C=4, c=2
    assert expected_counts(config, 0) == {"mem_len": 0, "cmem_len": 0, "seg_len": 0}
    assert expected_counts(config, 21) == {"mem_len": 16, "cmem_len": 0, "seg_len": 5}
    assert expected_counts(config, 37) == {"mem_len": 16, "cmem_len": 4, "seg_len": 5}
    assert expected_counts(config, 1000) == {"mem_len": 16, "cmem_len": 4, "seg_len": 0}


def test_counts_of_a_live_stream_match_its_position(engine):
    _, engine_dir = engine("conv")
    session = Session(engine_dir)
    stream = session.add_stream()
    config = session.manifest.config
    for chunk in (3, 5, 8, 13, 1, 20):
        session.feed({stream: np.zeros(chunk, dtype=np.int32)})
        state = session.stream_state(stream)
        counts = {name: int(state[name]) for name in ("mem_len", "cmem_len", "seg_len")}
        assert counts == expected_counts(config, session.position(stream))


@pytest.mark.parametrize("change, message", [
    ({"seg_len": np.array(50, np.int32)}, r"seg_len is 50, expected in \[0, L=8\)"),
    ({"seg_len": np.array([5, 5], np.int32)}, r"tensor seg_len has shape \(2,\), expected \(\)"),
    ({"mem_len": np.array(999.7)}, "tensor mem_len has dtype float64, expected int32"),
    ({"mem_len": np.array(12, np.int32)}, r"mem_len is 12, expected a multiple of L=8 in \[0, "
                                          r"M=16\]"),
    ({"cmem_len": np.array(-1, np.int32)}, r"cmem_len is -1, expected in \[0, C=4\]"),
    ({"mem_len": np.array(8, np.int32)}, "position 37 implies cmem_len 4, mem_len 16, "
                                         "seg_len 5; the snapshot holds cmem_len 4, mem_len 8, "
                                         "seg_len 5"),
    ({"mem": np.full((2, 16, 32), np.nan, np.float32)}, "tensor mem holds NaN or infinity"),
    ({"mem_k": np.zeros((2, 20, 32), np.float64)}, "tensor mem_k has dtype float64, expected "
                                                   "float32"),
    ({"usage": np.zeros((2, 16), np.float32)}, "holds an unexpected member 'usage.npy'"),
])
def test_a_bad_tensor_is_refused_and_leaves_the_stream_it_would_replace_untouched(
        taken, tmp_path, change, message):
    engine_dir, path = taken
    session = Session(engine_dir, max_streams=2)
    victim = session.add_stream()
    session.feed({victim: TOKENS[:11]})
    before = session.stream_state(victim)
    bad = edited(path, tmp_path, **change)
    with pytest.raises(RuntimeInputError, match=message):
        session.restore(bad, victim)
    with pytest.raises(RuntimeInputError, match=message):
        session.restore(bad)
    assert states_equal(session.stream_state(victim), before)
    assert session.position(victim) == 11 and session.streams == [victim]


@pytest.mark.parametrize("meta_changes, drop, message", [
    ({}, ("position",), r"position must be an integer in \[0, 2\*\*53\), got None"),
    ({"position": 3.5}, (), r"position must be an integer in \[0, 2\*\*53\), got 3.5"),
    ({"position": -8}, (), r"position must be an integer in \[0, 2\*\*53\), got -8"),
    ({"position": 2**63 - 64}, (), r"in \[0, 2\*\*53\), got 9223372036854775744"),
    ({"position": 2**53}, (), r"in \[0, 2\*\*53\), got 9007199254740992"),
    ({"position": 64 * 10**30}, (), r"in \[0, 2\*\*53\), got 64000000000000000000000000000000"),
    ({"position": 21}, (), "position 21 implies cmem_len 0, mem_len 16, seg_len 5; the "
                          "snapshot holds cmem_len 4"),
    ({"format_version": 0}, (), "has format_version 0; this runtime reads versions 1, 2 and 3: "
                                "take the snapshot again"),
    ({"format_version": 1}, (), "a version 1 snapshot holds its __meta__ record as a unicode "
                                "string"),
    ({"last_logits": "yes"}, (), "last_logits must be true or false, got 'yes'"),
    ({"last_logits": False}, (), r"holds tensors \[.*'last_logits'.*\], expected \[(?!.*last_)"),
    ({}, ("format_version",), "has format_version None"),
    ({"format": "other"}, (), "is not a compressive-rt stream snapshot"),
])
def test_bad_metadata_is_refused_before_a_slot_is_taken(taken, tmp_path, meta_changes, drop,
                                                        message):
    engine_dir, path = taken
    session = Session(engine_dir, max_streams=1)
    bad = edited(path, tmp_path, meta_changes, drop)
    with pytest.raises(RuntimeInputError, match=message):
        session.restore(bad)
    assert session.streams == []
    session.add_stream()  # the only slot is still free


def test_a_record_nested_thousands_deep_is_refused_before_it_is_parsed(taken, tmp_path):
    engine_dir, path = taken
    with np.load(path, allow_pickle=False) as archive:
        data = {name: archive[name] for name in archive.files}
    record = data.pop(META).tobytes()[:-1] + b', "extra": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    bad = tmp_path / "nested.npz"
    np.savez(bad, **{META: np.frombuffer(record, np.uint8)}, **data)
    session = Session(engine_dir, max_streams=1)
    with pytest.raises(RuntimeInputError, match="its __meta__ record is not JSON \\(it nests "
                                                "5001 levels deep, at most 16\\)"):
        session.restore(bad)
    assert session.streams == []


def test_restoring_over_a_stream_replaces_all_of_it_including_its_last_logits(taken):
    engine_dir, path = taken
    session = Session(engine_dir)
    stream = session.add_stream()
    session.feed({stream: np.full(3, 7, np.int32)})
    assert session.restore(path, stream) == stream
    assert session.position(stream) == 37
    fresh = Session(engine_dir)
    alone = fresh.add_stream()
    fresh.feed({alone: TOKENS})  # the same calls as the stream the snapshot was taken of
    np.testing.assert_array_equal(session.last_logits(stream), fresh.last_logits(alone))
    expected = fresh.feed({alone: [9, 10]})[alone]
    np.testing.assert_array_equal(session.feed({stream: [9, 10]})[stream], expected)


def test_a_snapshot_from_other_weights_of_the_same_config_is_refused_naming_both(
        taken, tmp_path):
    engine_dir, path = taken
    other_dir = tmp_path / "other_engine"
    export_model(random_model(tiny_config("conv"), seed=1), other_dir, log=lambda *_: None)
    other = Session(other_dir)
    ours = json.loads((engine_dir / MANIFEST_NAME).read_text())["entry_points"]
    theirs = json.loads((other_dir / MANIFEST_NAME).read_text())["entry_points"]
    with pytest.raises(RuntimeInputError, match="taken with another engine") as refused:
        other.restore(path)
    message = str(refused.value)
    assert f"snapshot engine contract v{FORMAT_VERSION}, checkpoint not recorded, fp32, graphs " \
           f"commit {ours['commit']['sha256'][:12]}" in message
    assert f"this engine contract v{FORMAT_VERSION}, checkpoint not recorded, fp32, graphs " \
           f"commit {theirs['commit']['sha256'][:12]}" in message
    assert other.streams == []


def test_another_contract_version_without_a_checkpoint_is_refused_naming_both(taken,
                                                                              tmp_path):
    engine_dir, path = taken
    with np.load(path, allow_pickle=False) as archive:
        engine = json.loads(archive[META].tobytes())["engine"]
    bad = edited(path, tmp_path, {"engine": {**engine, "contract_version": 99}})
    with pytest.raises(RuntimeInputError, match="taken with another engine .* names no "
                                                "checkpoint: snapshot engine contract v99, .*; "
                                                f"this engine contract v{FORMAT_VERSION}"):
        Session(engine_dir).restore(bad)


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("dir", "is not a file"),
    (b"", "truncated or not a snapshot"),
    (b"\x80\x04K\x01.", "truncated or not a snapshot"),  # a pickle: never loaded
    (b"\x93NUMPY", "truncated or not a snapshot"),
])
def test_missing_directory_pickled_and_garbage_files_are_refused(engine, tmp_path, content,
                                                                 message):
    _, engine_dir = engine("conv")
    path = tmp_path / "s.npz"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(RuntimeInputError, match=message):
        Session(engine_dir).restore(path)


def test_a_single_npy_array_is_not_a_snapshot(engine, tmp_path):
    _, engine_dir = engine("conv")
    path = tmp_path / "s.npy"
    np.save(path, np.zeros(3))
    with pytest.raises(RuntimeInputError, match="a single .npy array, not an .npz archive"):
        Session(engine_dir).restore(path)


def test_a_snapshot_into_a_missing_folder_is_a_clear_error(taken, tmp_path):
    engine_dir, _ = taken
    session = Session(engine_dir)
    stream = session.add_stream()
    with pytest.raises(RuntimeInputError, match="cannot write snapshot .*no_dir/s.npz"):
        session.snapshot(stream, tmp_path / "no_dir" / "s.npz")
    shutil.rmtree(tmp_path)
