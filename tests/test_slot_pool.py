"""Session v2: the slot pool (calls run only the rows that take part), last logits per stream,
failure semantics of feed, one thread at a time, and the refusal of contract-v1 engines."""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest
from support.engines import RecordingBackend

from compressive_rt.runtime.manifest import EngineError
from compressive_rt.runtime.session import ConcurrentUseError, EngineCallError, Session


def tokens(length: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, length).astype(np.int32)


def alone(engine_dir, data: np.ndarray) -> np.ndarray:
    """Logits of one stream fed on its own in a one-stream session."""
    session = Session(engine_dir)
    stream = session.add_stream()
    return session.feed({stream: data})[stream]


def test_one_active_stream_in_32_slots_runs_batch_1_calls(engine):
    _, engine_dir = engine("conv")
    backend = RecordingBackend(engine_dir)
    session = Session(engine_dir, backend=backend, max_streams=32)
    stream = session.add_stream()
    session.feed({stream: tokens(20, 0)}, want_logits=False)  # L = 8: 2 segments + extend 4
    for token in tokens(6, 1):  # the 4th decode step fills the segment: extend then commit
        session.feed({stream: [token]}, want_logits=False)
    assert backend.calls == [("segment", 1, None), ("segment", 1, None), ("extend", 1, 4),
                             *[("extend", 1, 1)] * 4, ("commit", 1, None), *[("extend", 1, 1)] * 2]


def test_calls_run_only_the_streams_taking_part_and_results_equal_each_stream_alone(engine):
    _, engine_dir = engine("conv")
    backend = RecordingBackend(engine_dir)
    session = Session(engine_dir, backend=backend, max_streams=8)
    a, b, c = session.add_stream(), session.add_stream(), session.add_stream()
    data = {a: tokens(3, 2), b: tokens(11, 3), c: tokens(2, 4)}
    got = session.feed({b: data[b][:8]})  # b sits in row 1: it moves to the front, batch 1
    assert backend.calls == [("segment", 1, None)]
    backend.calls.clear()
    rest = session.feed({a: data[a], b: data[b][8:], c: data[c]})
    # extend of all three by 2 (c's length), then a and b by 1 more
    assert backend.calls == [("extend", 3, 2), ("extend", 2, 1)]
    for stream in (a, c):
        np.testing.assert_allclose(rest[stream], alone(engine_dir, data[stream]), atol=1e-5,
                                   rtol=0)
    both = np.concatenate([got[b], rest[b]])
    np.testing.assert_allclose(both, alone(engine_dir, data[b]), atol=1e-5, rtol=0)
    assert [session.position(s) for s in (a, b, c)] == [3, 11, 2]
    for stream in (c, a):  # one stream decoding alone, whichever row it sits in: batch 1
        backend.calls.clear()
        step = session.feed({stream: [7]})[stream]
        assert backend.calls == [("extend", 1, 1)]
        np.testing.assert_allclose(step, alone(engine_dir, np.append(data[stream], 7))[-1:],
                                   atol=1e-5, rtol=0)


class CopyCountingBackend(RecordingBackend):
    """Counts the rows of state each copy_rows call moves."""

    def __init__(self, engine_dir) -> None:
        super().__init__(engine_dir)
        self.copied: list[int] = []

    def copy_rows(self, dst, dst_row, src, src_row, count):
        self.copied.append(count)
        super().copy_rows(dst, dst_row, src, src_row, count)


def test_a_call_copies_the_fewer_of_its_rows_and_the_rows_that_sat_out(engine):
    """After a segment, one stream of seven copies its one row back (its bank stays current);
    six of seven copy the one idle row into the written bank; all seven copy nothing. Every
    stream's logits equal its single-stream run's."""
    _, engine_dir = engine("conv")
    backend = CopyCountingBackend(engine_dir)
    session = Session(engine_dir, backend=backend, max_streams=8)
    streams = [session.add_stream() for _ in range(7)]  # rows 0..6: no call below moves them
    data = {s: tokens(24, 10 + s) for s in streams}
    fed = dict.fromkeys(streams, 0)
    got = {s: [] for s in streams}
    # one copy per layer of each memory tensor (layer-major buffers) and per count
    memory_buffers = sum(len(layers) for layers in session.buffers.memory[0].values())
    assert memory_buffers == 4 * 2 + 2  # mem, cmem, mem_k, mem_v of N=2 layers; 2 counts
    for members, copied in ((streams[:1], [1] * memory_buffers),
                            (streams[:6], [1] * memory_buffers), (streams, [])):
        backend.copied.clear()
        out = session.feed({s: data[s][fed[s]:fed[s] + 8] for s in members})
        assert backend.copied == copied
        for stream in members:
            got[stream].append(out[stream])
            fed[stream] += 8
    assert list(fed.values()) == [24, 16, 16, 16, 16, 16, 8]
    for stream in streams:
        np.testing.assert_allclose(np.concatenate(got[stream]),
                                   alone(engine_dir, data[stream][:fed[stream]]), atol=1e-5,
                                   rtol=0)


def test_removing_a_stream_moves_the_last_row_into_the_hole_and_keeps_ids(engine):
    _, engine_dir = engine("most_used")
    session = Session(engine_dir, max_streams=3)
    a, b, c = session.add_stream(), session.add_stream(), session.add_stream()
    data = {s: tokens(13 + 4 * i, 10 + i) for i, s in enumerate((a, b, c))}
    session.feed({s: data[s][:-3] for s in (a, b, c)}, want_logits=False)
    before = {s: session.stream_state(s) for s in (b, c)}
    session.remove_stream(a)
    assert session.streams == [b, c] and sorted(session.slots.rows.values()) == [0, 1]
    for s in (b, c):
        after = session.stream_state(s)
        for name, value in before[s].items():
            np.testing.assert_array_equal(after[name], value)
    last = session.feed({s: data[s][-3:] for s in (b, c)})
    for s in (b, c):
        np.testing.assert_allclose(last[s], alone(engine_dir, data[s])[-3:], atol=1e-5, rtol=0)


def test_last_logits_after_feeding_5_and_1_tokens_without_logits_equal_single_runs(engine):
    _, engine_dir = engine("conv")
    session = Session(engine_dir, max_streams=2)
    five, one = session.add_stream(), session.add_stream()
    data = {five: tokens(5, 20), one: tokens(1, 21)}
    session.feed(data, want_logits=False)
    for stream in (five, one):
        np.testing.assert_allclose(session.last_logits(stream),
                                   alone(engine_dir, data[stream])[-1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("fail_on_call", [1, 2, 4, 5, 6])
def test_a_failed_engine_call_leaves_positions_at_the_tokens_in_memory(engine, fail_on_call):
    _, engine_dir = engine("conv")
    data = [tokens(29, 30), tokens(16, 31)]
    backend = RecordingBackend(engine_dir)
    session = Session(engine_dir, backend=backend, max_streams=2)
    first, second = session.add_stream(), session.add_stream()
    session.feed({second: data[1][:3]})
    # calls of the next feed (L = 8): segment [first] x3, extend [both] by 5, commit
    # [second] (its segment is full), segment [second]
    backend.calls.clear()
    backend.fail_on = {backend.attempts + fail_on_call}
    with pytest.raises(EngineCallError, match="tokens consumed before it: stream 0: ") as error:
        session.feed({first: data[0], second: data[1][3:]})
    assert isinstance(error.value.__cause__, RuntimeError)
    assert "injected failure" in str(error.value.__cause__)
    consumed = error.value.consumed
    assert session.position(first) == consumed[first]
    assert session.position(second) == 3 + consumed[second]
    rest = session.feed({s: data[i][session.position(s):]
                         for i, s in enumerate((first, second))})
    for i, s in enumerate((first, second)):
        got = rest.get(s, np.empty((0, 256), np.float32))  # a stream with nothing left
        np.testing.assert_allclose(got, alone(engine_dir, data[i])[len(data[i]) - len(got):],
                                   atol=1e-5, rtol=0)
        assert session.position(s) == len(data[i])


def test_a_second_thread_is_refused_while_the_session_is_busy(engine):
    _, engine_dir = engine("conv")
    backend = RecordingBackend(engine_dir)
    session = Session(engine_dir, backend=backend, max_streams=2)
    stream = session.add_stream()
    backend.release = threading.Event()
    feeding = threading.Thread(target=session.feed, args=({stream: [1, 2, 3]},))
    feeding.start()
    try:
        assert backend.inside.wait(timeout=30)
        for call in (session.add_stream, lambda: session.feed({stream: [4]}),
                     lambda: session.remove_stream(stream), lambda: session.reset_stream(stream)):
            with pytest.raises(ConcurrentUseError, match="another thread is using this session"):
                call()
    finally:
        backend.release.set()
        feeding.join()
    backend.release = None
    assert session.position(stream) == 3 and session.streams == [stream]
    session.feed({stream: [4]})
    assert session.position(stream) == 4


def test_an_engine_of_contract_v1_is_refused_with_the_fix(engine, tmp_path):
    _, engine_dir = engine("conv")
    old = tmp_path / "old"
    shutil.copytree(engine_dir, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["format_version"] = 1
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EngineError, match=r"format_version 1; this runtime reads version 3 "
                                          r"\(contract v3, state per layer\): re-export the "
                                          r"checkpoint with `ctrt export"):
        Session(old)
