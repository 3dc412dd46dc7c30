"""Property-based tests (hypothesis): random use of a Session equals the eager model stream by
stream, and random damage to snapshots, manifests and graphs ends in the project's error.

Profiles (tests/conftest.py): "ci" (default) keeps these under two minutes on two cores;
HYPOTHESIS_PROFILE=long tries many more cases."""

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, note
from hypothesis import strategies as st
from support.rules import fp32_bound

from compressive_rt.runtime.manifest import MANIFEST_NAME, EngineError
from compressive_rt.runtime.session import RuntimeInputError, Session

MAX_STREAMS = 3
SEG_LEN = 8  # the tiny engines' L (tests/support/engines.py)


def eager(model, tokens: list[int]) -> np.ndarray:
    """Logits [n, V] of the eager model streaming `tokens` from empty memory."""
    with torch.no_grad():
        logits, _ = model.score(torch.tensor([tokens], dtype=torch.int64))
    return logits[0].numpy()


stream_index = st.integers(0, MAX_STREAMS - 1)  # picks a live stream (modulo their number)
operations = st.one_of(
    st.tuples(st.just("add")),
    st.tuples(st.just("remove"), stream_index),
    st.tuples(st.just("reset"), stream_index),
    st.tuples(st.just("feed"), st.lists(
        st.tuples(stream_index, st.integers(0, 3 * SEG_LEN), st.integers(0, 2**16)),
        min_size=1, max_size=MAX_STREAMS)),
    st.tuples(st.just("snapshot"), stream_index),
    st.tuples(st.just("restore"), st.integers(0, 7), st.one_of(st.none(), stream_index)),
)


@pytest.mark.slow
@pytest.mark.parametrize("compress_fn", ["conv", "most_used"])
@given(program=st.lists(operations, min_size=1, max_size=14))
def test_random_stream_operations_equal_the_eager_model_per_stream(engine, compress_fn,
                                                                   program):
    model, engine_dir = engine(compress_fn)
    session = Session(engine_dir, max_streams=MAX_STREAMS)
    history: dict[int, list[int]] = {}  # stream id -> every token whose effect it holds
    snapshots: list[tuple[Path, list[int]]] = []
    with tempfile.TemporaryDirectory() as folder:
        for step, operation in enumerate(program):
            note(f"step {step}: {operation}")
            live = sorted(history)
            kind = operation[0]
            if kind == "add":
                if len(live) == MAX_STREAMS:
                    with pytest.raises(RuntimeInputError, match="stream slots are in use"):
                        session.add_stream()
                else:
                    history[session.add_stream()] = []
            elif kind in ("remove", "reset", "snapshot") and live:
                stream = live[operation[1] % len(live)]
                if kind == "remove":
                    session.remove_stream(stream)
                    del history[stream]
                elif kind == "reset":
                    session.reset_stream(stream)
                    history[stream] = []
                else:
                    path = Path(folder) / f"{len(snapshots)}.npz"
                    session.snapshot(stream, path)
                    snapshots.append((path, list(history[stream])))
            elif kind == "feed" and live:
                rng = np.random.default_rng(operation[1][0][2])
                chunks = {live[index % len(live)]: rng.integers(0, 256, count).tolist()
                          for index, count, _ in operation[1]}
                got = session.feed({s: np.array(t, dtype=np.int32) for s, t in chunks.items()})
                for stream, tokens in chunks.items():
                    before = len(history[stream])
                    history[stream] += tokens
                    if tokens:
                        expected = eager(model, history[stream])[before:]
                        assert np.abs(got[stream] - expected).max() <= fp32_bound(expected)
            elif kind == "restore" and snapshots:
                path, tokens = snapshots[operation[1] % len(snapshots)]
                over = None if operation[2] is None or not live \
                    else live[operation[2] % len(live)]
                if over is None and len(live) == MAX_STREAMS:
                    with pytest.raises(RuntimeInputError, match="stream slots are in use"):
                        session.restore(path)
                else:
                    stream = session.restore(path, over)
                    assert over is None or stream == over
                    history[stream] = list(tokens)
                    with pytest.raises(RuntimeInputError, match="has not been fed"):
                        session.last_logits(stream)
            assert sorted(session.streams) == sorted(history)
            for stream, tokens in history.items():
                assert session.position(stream) == len(tokens)


# Where a byte is damaged: anywhere (a fraction of the length), or in the first or last 512
# bytes, where the zip and .npy headers, the JSON start and the zip directory are.
place = st.one_of(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 511),
                  st.integers(-512, -1))
damage = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0.0, 1.0, exclude_max=True)),
    st.tuples(st.just("flip"), st.lists(st.tuples(place, st.integers(1, 255)),
                                        min_size=1, max_size=4)),
)


def damaged(data: bytes, how: tuple) -> bytes:
    if how[0] == "truncate":
        return data[:int(how[1] * len(data))]
    array = bytearray(data)
    size = len(array)
    # distinct bytes, so the file always changes
    flips = {int(where * size) if isinstance(where, float) else where % size: xor
             for where, xor in how[1]}
    for index, xor in flips.items():
        array[index] ^= xor
    return bytes(array)


@pytest.fixture(scope="module")
def saved_stream(engine, tmp_path_factory):
    """(engine dir, snapshot bytes, its state and position): a stream mid-segment, cmem full."""
    _, engine_dir = engine("most_used")
    session = Session(engine_dir)
    stream = session.add_stream()
    session.feed({stream: np.arange(45, dtype=np.int32)})
    path = tmp_path_factory.mktemp("snapshot") / "stream.npz"
    session.snapshot(stream, path)
    return engine_dir, path.read_bytes(), session.stream_state(stream), 45


@given(how=damage)
def test_a_damaged_snapshot_is_refused_or_restores_the_same_state(saved_stream, how):
    engine_dir, data, state, position = saved_stream
    session = Session(engine_dir)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "stream.npz"
        path.write_bytes(damaged(data, how))
        try:
            stream = session.restore(path)
        except RuntimeInputError:
            assert session.streams == []
            return
    # Accepted: only a change that leaves every value as it was (e.g. in zip padding) may be.
    restored = session.stream_state(stream)
    assert restored.keys() == state.keys()
    for name in state:
        np.testing.assert_array_equal(restored[name], state[name])
    assert session.position(stream) == position


@pytest.fixture(scope="module")
def reference_logits(engine):
    _, engine_dir = engine("most_used")
    session = Session(engine_dir)
    stream = session.add_stream()
    return session.feed({stream: np.arange(20, dtype=np.int32)})[stream]


@given(which=st.sampled_from(["manifest", "segment", "extend", "commit"]), how=damage)
def test_a_damaged_manifest_or_graph_is_refused_before_it_runs(engine, reference_logits,
                                                               which, how):
    _, engine_dir = engine("most_used")
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "engine"
        shutil.copytree(engine_dir, copy)
        manifest = json.loads((copy / MANIFEST_NAME).read_text())
        name = MANIFEST_NAME if which == "manifest" else manifest["entry_points"][which]["file"]
        (copy / name).write_bytes(damaged((copy / name).read_bytes(), how))
        try:
            session = Session(copy)
        except EngineError:
            return
        # Accepted: the graphs passed their hash check, so the damage hit the manifest only
        # where the runtime does not depend on it; the engine must compute exactly as before.
        assert which == "manifest"
        stream = session.add_stream()
        got = session.feed({stream: np.arange(20, dtype=np.int32)})[stream]
        np.testing.assert_array_equal(got, reference_logits)
