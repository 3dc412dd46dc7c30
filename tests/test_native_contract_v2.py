"""Contract v2 data in the native runtime (tests/fixtures/contract_v2, written before contract
v3; the C API's refusal of its format 2 engine is native/tests/test_c_api.cpp's): a v2 snapshot
restores into the v3 engine re-exported from its checkpoint exactly (its arrays are the state,
in logical order), then continues bitwise equal to the Python runtime restoring the same
snapshot, and within the fp32 rule of an uninterrupted run of the v3 engine."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from support.native import native_library
from support.rules import fp32_bound

from compressive_rt.benchmarks.launchers.native import NativeSession
from compressive_rt.errors import RuntimeInputError
from compressive_rt.runtime.session import Session

pytestmark = [pytest.mark.native, pytest.mark.slow]

V2 = Path(__file__).parent / "fixtures" / "contract_v2"
HISTORIES = json.loads((V2 / "histories.json").read_text())
MORE = (3, 5, 8, 1, 13, 2)  # chunks fed after the restore: inside, across and at segment ends


@pytest.fixture(scope="module")
def v3_engine(tmp_path_factory) -> Path:
    """The v3 engine of the fixtures' checkpoint, exported as `ctrt export` exports it."""
    from compressive_rt.ct_reference.checkpoint import checkpoint_sha256, load_model
    from compressive_rt.export.pipeline import export_model

    checkpoint = V2 / "checkpoint"
    model, _ = load_model(checkpoint)
    out = tmp_path_factory.mktemp("v3_of_v2_checkpoint") / "engine"
    export_model(model, out, checkpoint={"path": str(checkpoint.resolve()),
                                         "sha256": checkpoint_sha256(checkpoint)},
                 verify_segments=20, log=lambda *_: None)
    return out


@pytest.mark.parametrize("name", sorted(HISTORIES))
def test_a_v2_snapshot_restores_into_the_v3_engine_and_continues_as_python(v3_engine, name):
    snapshot = V2 / f"{name}.npz"
    with np.load(snapshot, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    python = Session(v3_engine, backend="onnxruntime-cpu", max_streams=2, threads=1)
    native = NativeSession(v3_engine, max_streams=2, threads=1, library=native_library())
    restored = {"python": python.restore(snapshot), "native": native.restore(snapshot)}
    history = HISTORIES[name]
    assert native.position(restored["native"]) == len(history)
    state = native.stream_state(restored["native"])
    assert set(state) == set(arrays) - {"__meta__", "last_logits"}
    for key, value in state.items():  # the v2 arrays, exactly, whatever the buffers' layout
        np.testing.assert_array_equal(value, arrays[key], err_msg=key)
    np.testing.assert_array_equal(native.last_logits(restored["native"]), arrays["last_logits"])

    # an uninterrupted run of the v3 engine, on the native runtime's second row
    uninterrupted = native.add_stream()
    native.feed({uninterrupted: history})
    rng = np.random.default_rng(len(history))
    for count in MORE:
        tokens = rng.integers(0, 256, count)
        expected = python.feed({restored["python"]: tokens})[restored["python"]]
        got = native.feed({restored["native"]: tokens})[restored["native"]]
        np.testing.assert_array_equal(got, expected)
        reference = native.feed({uninterrupted: tokens})[uninterrupted]
        assert np.abs(got - reference).max() <= fp32_bound(reference)
        want_state = python.stream_state(restored["python"])
        for key, value in native.stream_state(restored["native"]).items():
            np.testing.assert_array_equal(value, want_state[key], err_msg=key)


def test_a_v2_snapshot_of_another_checkpoint_config_or_precision_is_refused(v3_engine):
    native = NativeSession(v3_engine, threads=1, library=native_library())
    data = (V2 / "partial_cmem.npz").read_bytes()
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    meta = json.loads(arrays["__meta__"].tobytes().decode())

    def with_identity(config: dict | None = None, **changes) -> bytes:
        record = {**meta, "engine": {**meta["engine"], **changes},
                  "config": config or meta["config"]}
        out = io.BytesIO()
        np.savez(out, **{**arrays, "__meta__": np.frombuffer(json.dumps(record).encode(),
                                                               np.uint8)})
        return out.getvalue()

    with pytest.raises(RuntimeInputError, match="was taken with a int8 engine of this checkpoint; "
                                                "this engine is fp32"):
        native.restore_bytes(with_identity(precision="int8"))
    with pytest.raises(RuntimeInputError, match="names another checkpoint"):
        native.restore_bytes(with_identity(checkpoint_sha256="0" * 64))
    with pytest.raises(RuntimeInputError, match="names no checkpoint"):
        native.restore_bytes(with_identity(checkpoint_sha256=None))
    with pytest.raises(RuntimeInputError, match="another model config than this engine's: "
                                                "snapshot engine contract v2"):
        native.restore_bytes(with_identity(config={**meta["config"], "compress_rate": 4}))
    assert native.streams == []
