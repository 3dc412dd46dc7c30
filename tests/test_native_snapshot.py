"""The native runtime writes stream snapshots in version 3 and reads versions 1 to 3
(docs/DESIGN.md): a plain numpy .npz that numpy reads, and archives written by numpy to the spec
restore natively; a contract v2 snapshot restores into the v3 engine of its checkpoint as the
Python runtime restores it; the reader refuses damaged or foreign archives with a message and
changes nothing."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from support.native import native_library

from compressive_rt.benchmarks.launchers.native import NativeSession
from compressive_rt.errors import RuntimeInputError

pytestmark = [pytest.mark.native, pytest.mark.slow]


@pytest.fixture
def fed(engine):
    """A native session with one stream fed 21 tokens: (session, stream, snapshot bytes)."""
    _, engine_dir = engine("most_used")
    session = NativeSession(engine_dir, max_streams=3, threads=1, library=native_library())
    stream = session.add_stream()
    session.feed({stream: np.arange(21) % 256})
    return session, stream, session.snapshot_bytes(stream)


def members(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def npz(arrays: dict[str, np.ndarray], compressed: bool = False) -> bytes:
    """An archive written by numpy itself (np.savez: zip64 local headers)."""
    out = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(out, **arrays)
    return out.getvalue()


def meta_of(arrays: dict[str, np.ndarray]) -> dict:
    return json.loads(arrays["__meta__"].tobytes().decode())


def with_meta(arrays: dict[str, np.ndarray], **changes) -> dict[str, np.ndarray]:
    meta = {**meta_of(arrays), **changes}
    return {**arrays, "__meta__": np.frombuffer(json.dumps(meta).encode(), np.uint8)}


def test_a_native_snapshot_is_a_version_3_npz(fed):
    session, stream, data = fed
    arrays = members(data)
    state = session.stream_state(stream)
    assert set(arrays) == {*state, "__meta__", "last_logits"}
    assert all(info.compress_type == zipfile.ZIP_STORED
               for info in zipfile.ZipFile(io.BytesIO(data)).infolist())
    meta = meta_of(arrays)
    assert (meta["format"], meta["format_version"], meta["position"], meta["last_logits"]) == \
        ("compressive-rt-stream-snapshot", 3, 21, True)
    assert (meta["engine"]["contract_version"], meta["engine"]["precision"]) == (3, "fp32")
    assert set(meta["engine"]["graphs"]) == {"segment", "extend", "commit"}
    for name, value in state.items():
        assert arrays[name].dtype == value.dtype
        np.testing.assert_array_equal(arrays[name], value)
    np.testing.assert_array_equal(arrays["last_logits"], session.last_logits(stream))


def test_an_archive_numpy_writes_to_the_spec_restores_and_continues(fed):
    session, stream, data = fed
    restored = session.restore_bytes(npz(members(data)))
    assert session.position(restored) == 21
    np.testing.assert_array_equal(session.last_logits(restored), session.last_logits(stream))
    more = np.arange(13) * 7 % 256
    np.testing.assert_array_equal(session.feed({restored: more})[restored],
                                  session.feed({stream: more})[stream])


def test_a_snapshot_file_is_written_and_read_back(fed, tmp_path):
    session, stream, _ = fed
    path = tmp_path / "stream.npz"
    session.snapshot(stream, path)
    restored = session.restore(path)
    for name, value in session.stream_state(stream).items():
        np.testing.assert_array_equal(session.stream_state(restored)[name], value)
    with pytest.raises(RuntimeInputError, match="does not exist"):
        session.restore(tmp_path / "missing.npz")


def _damaged(arrays: dict[str, np.ndarray], damage: str) -> tuple[bytes, str]:
    """Archive bytes with one thing wrong, and the phrase the refusal must contain."""
    if damage == "deflated":
        return npz(arrays, compressed=True), "is compressed"
    if damage == "extra member":
        return npz({**arrays, "extra": np.zeros(3, np.float32)}), "holds members"
    if damage == "missing member":
        return npz({k: v for k, v in arrays.items() if k != "seg_k"}), "holds members"
    if damage == "dtype":
        return npz({**arrays, "mem": arrays["mem"].astype(np.float64)}), \
            "tensor mem has dtype <f8, expected <f4"
    if damage == "shape":
        return npz({**arrays, "usage": arrays["usage"][:, :-1]}), "tensor usage has shape"
    if damage == "big record":
        record = json.dumps({**meta_of(arrays), "pad": "x" * (1 << 20)}).encode()
        return npz({**arrays, "__meta__": np.frombuffer(record, np.uint8)}), "more than 1 MiB"
    if damage == "other engine":
        identity = meta_of(arrays)["engine"]
        identity["graphs"]["extend"] = "0" * 64
        return npz(with_meta(arrays, engine=identity)), "was taken with another engine"
    if damage == "config":
        config = {**meta_of(arrays)["config"], "compress_rate": 4}
        return npz(with_meta(arrays, config=config)), "another model config"
    if damage == "position":
        return npz(with_meta(arrays, position=22)), "position 22 implies"
    if damage == "logits flag":
        return npz(with_meta(arrays, last_logits=False)), "says last_logits false"
    if damage == "nan":
        mem = arrays["mem"].copy()
        mem.flat[5] = np.nan
        return npz({**arrays, "mem": mem}), "tensor mem holds NaN or infinity"
    if damage == "truncated":
        data = npz(arrays)
        return data[:len(data) // 2], "truncated or not a snapshot"
    raise AssertionError(damage)


@pytest.mark.parametrize("damage", ["deflated", "extra member", "missing member", "dtype",
                                    "shape", "big record", "other engine", "config", "position",
                                    "logits flag", "nan", "truncated"])
def test_a_damaged_or_foreign_snapshot_is_refused_and_changes_nothing(fed, damage):
    session, stream, data = fed
    before = session.stream_state(stream)
    bad, phrase = _damaged(members(data), damage)
    for over in (None, stream):
        with pytest.raises(RuntimeInputError, match=phrase):
            session.restore_bytes(bad, over)
    assert session.streams == [stream] and session.position(stream) == 21
    for name, value in before.items():
        np.testing.assert_array_equal(session.stream_state(stream)[name], value)


def test_a_snapshot_of_an_engine_with_other_tensors_is_refused(engine, fed):
    session, _, _ = fed
    _, conv_dir = engine("conv")
    other = NativeSession(conv_dir, threads=1, library=native_library())
    stream = other.add_stream()
    other.feed({stream: [1, 2, 3]})
    with pytest.raises(RuntimeInputError, match="expected .*usage"):  # conv has no usage
        session.restore_bytes(other.snapshot_bytes(stream))


def test_a_version_1_record_is_read_and_restores_without_logits(fed):
    """Version 1 held its record as a 0-d numpy unicode array and no last logits."""
    session, stream, data = fed
    arrays = members(data)
    meta = {**meta_of(arrays), "format_version": 1}
    del meta["last_logits"]
    v1 = {name: value for name, value in arrays.items() if name != "last_logits"}
    v1["__meta__"] = np.array(json.dumps(meta))
    restored = session.restore_bytes(npz(v1))
    assert session.position(restored) == 21
    for name, value in session.stream_state(stream).items():
        np.testing.assert_array_equal(session.stream_state(restored)[name], value)
    with pytest.raises(RuntimeInputError, match="has not been fed"):
        session.last_logits(restored)
    v1["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    with pytest.raises(RuntimeInputError, match="a version 1 snapshot holds its __meta__ record as "
                                                "a unicode string"):
        session.restore_bytes(npz(v1))


def test_a_version_beyond_3_is_refused_with_what_to_do(fed):
    session, _, data = fed
    with pytest.raises(RuntimeInputError, match="has format_version 4; this runtime reads versions "
                                                "1, 2 and 3: take the snapshot again"):
        session.restore_bytes(npz(with_meta(members(data), format_version=4)))
