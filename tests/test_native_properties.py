"""Differential property test: random add/remove/reset/feed/snapshot/restore sequences run on the
Python Session and on the native one (through its C API); after every operation both hold the
same streams, positions, last logits and, bitwise, every state tensor of every stream."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.native import native_library

from compressive_rt.benchmarks.launchers.native import NativeSession
from compressive_rt.errors import RuntimeInputError
from compressive_rt.runtime.session import Session

pytestmark = [pytest.mark.native, pytest.mark.slow]

MAX_STREAMS = 3

operation = st.one_of(
    st.tuples(st.just("add")),
    st.tuples(st.just("remove"), st.integers(0, MAX_STREAMS - 1)),
    st.tuples(st.just("reset"), st.integers(0, MAX_STREAMS - 1)),
    st.tuples(st.just("feed"), st.lists(st.integers(0, 19), min_size=MAX_STREAMS,
                                        max_size=MAX_STREAMS), st.integers(0, 2**32 - 1)),
    st.tuples(st.just("snapshot"), st.integers(0, MAX_STREAMS - 1), st.booleans()),
)


def assert_same(python: Session, native: NativeSession) -> None:
    assert native.streams == python.streams
    for stream in python.streams:
        assert native.position(stream) == python.position(stream)
        want, got = python.stream_state(stream), native.stream_state(stream)
        assert set(got) == set(want)
        for name, value in want.items():
            np.testing.assert_array_equal(got[name], value, err_msg=f"{name} of {stream}")
        try:
            logits = python.last_logits(stream)
        except RuntimeInputError:
            continue  # not fed, or restored from a version-1 snapshot (no logits in it)
        np.testing.assert_array_equal(native.last_logits(stream), logits)


def run(python: Session, native: NativeSession, op: tuple, tmp_path) -> None:
    kind, streams = op[0], python.streams
    if kind == "add":
        if len(streams) < MAX_STREAMS:
            assert native.add_stream() == python.add_stream()
        return
    if not streams:
        return
    if kind == "feed":
        rng = np.random.default_rng(op[2])
        chunk = {s: rng.integers(0, 256, n) for s, n in zip(streams, op[1], strict=False)}
        expected, got = python.feed(chunk), native.feed(chunk)
        for stream, logits in expected.items():
            np.testing.assert_array_equal(got[stream], logits)
        return
    stream = streams[op[1] % len(streams)]
    if kind == "remove":
        python.remove_stream(stream), native.remove_stream(stream)
    elif kind == "reset":
        python.reset_stream(stream), native.reset_stream(stream)
    else:  # each runtime restores its own snapshot: over the stream, or into a new one
        over = stream if op[2] or len(streams) == MAX_STREAMS else None
        path = tmp_path / "python.npz"
        python.snapshot(stream, path)
        data = native.snapshot_bytes(stream)
        assert native.restore_bytes(data, over) == python.restore(path, over)


@given(st.lists(operation, min_size=1, max_size=14))
def test_random_operation_sequences_keep_both_runtimes_equal(engine, tmp_path_factory, ops):
    _, engine_dir = engine("most_used")
    tmp_path = tmp_path_factory.mktemp("ops")
    python = Session(engine_dir, backend="onnxruntime-cpu", max_streams=MAX_STREAMS, threads=1)
    native = NativeSession(engine_dir, max_streams=MAX_STREAMS, threads=1,
                           library=native_library())
    for op in [("add",), *ops]:
        run(python, native, op, tmp_path)
        assert_same(python, native)
