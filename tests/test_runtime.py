"""Runtime: scoring, generation, streams, snapshots, bad input, allocation, no torch."""

import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from support.engines import each_compress_fn
from support.rules import FP32

from compressive_rt.ct_reference.generate import greedy_generate
from compressive_rt.export.verify import eager_logits
from compressive_rt.runtime.generate import generate
from compressive_rt.runtime.sampling import Sampling
from compressive_rt.runtime.score import score_documents, target_bits, total_bits_per_byte
from compressive_rt.runtime.session import RuntimeInputError, Session

REPO = Path(__file__).resolve().parents[1]


def document(length: int, seed: int) -> bytes:
    """Text-like bytes: a repeating phrase with random edits, so there is structure to learn."""
    rng = np.random.default_rng(seed)
    base = np.frombuffer(b"the compressive transformer keeps old memories. " * 40, np.uint8)
    data = np.resize(base, length).copy()
    edits = rng.integers(0, length, length // 10)
    data[edits] = rng.integers(32, 127, len(edits))
    return data.tobytes()


def eager_bits(model, data: bytes) -> float:
    tokens = np.frombuffer(data, dtype=np.uint8).astype(np.int64)[None]
    logits, _ = eager_logits(model, tokens)
    return target_bits(logits[0, :-1], tokens[0, 1:])


@pytest.mark.slow
@pytest.mark.parametrize("compress_fn", each_compress_fn())
def test_scoring_long_documents_equals_eager_bits_per_byte_and_memory(engine, compress_fn):
    model, engine_dir = engine(compress_fn)
    seg_len = model.config.seg_len
    docs = [(f"doc{i}", document(n, seed=i)) for i, n in
            enumerate([30 * seg_len + 3, 33 * seg_len + 7, 31 * seg_len + 1])]
    session = Session(engine_dir, max_streams=2)  # 3 documents over 2 streams: reuse of rows
    scores = score_documents(session, docs)
    for score, (_, data) in zip(scores, docs):
        expected = eager_bits(model, data) / (len(data) - 1)
        assert abs(score.bits_per_byte - expected) <= 1e-5
    assert session.streams == []  # every stream was removed when its document ended
    expected_total = sum(eager_bits(model, d) for _, d in docs) / sum(len(d) - 1 for _, d in docs)
    assert abs(total_bits_per_byte(scores) - expected_total) <= 1e-5


@pytest.mark.parametrize("compress_fn", ["conv", "most_used", "dilated_conv"])
def test_final_memory_after_a_long_document_at_mixed_positions_equals_eager(engine, compress_fn):
    model, engine_dir = engine(compress_fn)
    seg_len = model.config.seg_len
    data = [document(30 * seg_len + 5, seed=7), document(31 * seg_len + 3, seed=8)]
    tokens = [np.frombuffer(d, np.uint8).astype(np.int32) for d in data]
    session = Session(engine_dir, max_streams=2)
    ids = [session.add_stream(), session.add_stream()]
    session.feed({ids[1]: tokens[1][:5]})  # stream 1 runs five tokens ahead
    done = [0, 5]
    while done[0] < len(tokens[0]) or done[1] < len(tokens[1]):
        feed = {s: tokens[i][done[i]:done[i] + 13] for i, s in enumerate(ids)}
        session.feed(feed)
        done = [done[i] + len(feed[s]) for i, s in enumerate(ids)]
    for i, s in enumerate(ids):
        _, memory = eager_logits(model, tokens[i][None].astype(np.int64))
        state = session.stream_state(s)
        np.testing.assert_allclose(state["mem"], memory.mem[:, 0].numpy(), atol=FP32, rtol=0)
        np.testing.assert_allclose(state["cmem"], memory.cmem[:, 0].numpy(), atol=FP32, rtol=0)
        assert int(state["cmem_len"]) == int(memory.cmem_len[0])


@pytest.mark.parametrize("compress_fn", ["conv", "most_used"])
def test_greedy_generation_matches_eager_greedy_decoding(engine, compress_fn):
    model, engine_dir = engine(compress_fn)
    prompt = document(2 * model.config.seg_len + 3, seed=5)
    expected = greedy_generate(model, torch.tensor([list(prompt)]), 40)[0].tolist()
    session = Session(engine_dir)
    got = generate(session, prompt, 40, Sampling(greedy=True))
    assert list(got) == expected


def test_generation_stops_at_a_stop_string_and_streams_text(engine):
    _, engine_dir = engine("conv")
    session = Session(engine_dir)
    full = generate(session, b"abc", 30, Sampling(greedy=True))
    stop = full[5:7]
    pieces = []
    out = generate(session, b"abc", 30, Sampling(greedy=True), stop=[stop],
                   on_text=pieces.append)
    assert out == full[:full.index(stop) + len(stop)]
    assert "".join(pieces) == out.decode("utf-8", errors="replace")


def test_snapshot_and_restore_mid_document_continue_identically(engine, tmp_path):
    model, engine_dir = engine("most_used")
    tokens = np.frombuffer(document(400, seed=3), np.uint8).astype(np.int32)
    session = Session(engine_dir, max_streams=2)
    stream = session.add_stream()
    session.feed({stream: tokens[:205]})  # mid-segment: 205 = 25 * 8 + 5
    path = tmp_path / "stream.npz"
    session.snapshot(stream, path)
    expected = session.feed({stream: tokens[205:]})[stream]

    fresh = Session(engine_dir, max_streams=2)
    other = fresh.add_stream()
    fresh.feed({other: tokens[:50]})
    restored = fresh.restore(path)
    assert fresh.position(restored) == 205
    got = fresh.feed({restored: tokens[205:]})[restored]
    np.testing.assert_array_equal(got, expected)


def test_truncated_and_foreign_snapshots_are_refused(engine, tmp_path):
    _, engine_dir = engine("conv")
    _, other_dir = engine("mean_pool")
    session = Session(engine_dir)
    stream = session.add_stream()
    session.feed({stream: np.arange(20, dtype=np.int32)})
    path = tmp_path / "s.npz"
    session.snapshot(stream, path)
    truncated = tmp_path / "t.npz"
    truncated.write_bytes(path.read_bytes()[:300])
    with pytest.raises(RuntimeInputError, match="truncated or not a snapshot"):
        Session(engine_dir).restore(truncated)
    with pytest.raises(RuntimeInputError, match="another model config"):
        Session(other_dir).restore(path)


def test_bad_input_is_refused_and_other_streams_keep_working(engine):
    _, engine_dir = engine("conv")
    session = Session(engine_dir, max_streams=2)
    good, victim = session.add_stream(), session.add_stream()
    session.feed({good: np.arange(11, dtype=np.int32), victim: np.arange(3, dtype=np.int32)})
    before = {k: v.copy() for k, v in session.stream_state(good).items()}
    bad_inputs = [
        ({victim: [1, 2, 256]}, "out of range"),
        ({victim: [-1]}, "out of range"),
        ({victim: np.array([0.5, 1.0])}, "must be integers"),
        ({victim: np.zeros((2, 2), dtype=np.int32)}, "1-D"),
        ({good: [1, 2], 99: [1]}, "no stream 99"),
    ]
    for feed, message in bad_inputs:
        with pytest.raises(RuntimeInputError, match=message):
            session.feed(feed)
    after = session.stream_state(good)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])
    assert session.position(good) == 11 and session.position(victim) == 3
    logits = session.feed({good: [5]})[good]
    reference = Session(engine_dir)
    alone = reference.add_stream()
    expected = reference.feed({alone: list(range(11)) + [5]})[alone][-1:]
    np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=0)


def test_reset_and_remove_leave_other_streams_untouched(engine):
    _, engine_dir = engine("conv")
    session = Session(engine_dir, max_streams=3)
    a, b = session.add_stream(), session.add_stream()
    session.feed({a: np.arange(30, dtype=np.int32), b: np.arange(30, dtype=np.int32)})
    before = session.stream_state(a)
    session.reset_stream(b)
    assert int(session.stream_state(b)["mem_len"]) == 0 and session.position(b) == 0
    session.remove_stream(b)
    with pytest.raises(RuntimeInputError, match="no stream"):
        session.feed({b: [1]})
    c = session.add_stream()
    assert int(session.stream_state(c)["mem_len"]) == 0
    after = session.stream_state(a)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])
    with pytest.raises(RuntimeInputError, match="in use"):
        session.add_stream(), session.add_stream()


def test_steady_state_decoding_allocates_no_arrays(engine):
    model, engine_dir = engine("most_used", d_model=128)
    session = Session(engine_dir)
    stream = session.add_stream()
    token = np.zeros(1, dtype=np.int32)
    session.feed({stream: np.arange(100, dtype=np.int32)}, want_logits=False)
    for _ in range(2 * model.config.seg_len):  # warm: every token count and binding seen
        session.feed({stream: token}, want_logits=False)
    def buffer_ids(memory):  # every layer of every state buffer of both banks
        return [id(layer) for side in memory for layers in side.values() for layer in layers]

    state_ids = buffer_ids(session.buffers.memory)
    smallest_state = sum(layer.nbytes for layer in session.buffers.memory[0]["mem"])  # [N,S,M,d]
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    tracemalloc.reset_peak()
    start, _ = tracemalloc.get_traced_memory()
    for _ in range(3 * model.config.seg_len):  # crosses three commits
        session.feed({stream: token}, want_logits=False)
    _, peak = tracemalloc.get_traced_memory()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    # numpy traces array data in its own tracemalloc domain: no array is kept across steps.
    # Within a step only small Python objects (dicts of bindings) come and go: the peak stays
    # below the size of one state tensor (its layers together).
    arrays = [tracemalloc.DomainFilter(True, np.lib.tracemalloc_domain)]
    kept = sum(stat.size_diff for stat in after.filter_traces(arrays).compare_to(
        before.filter_traces(arrays), "filename"))
    assert kept == 0
    assert peak - start < 12 * 1024 < smallest_state
    assert state_ids == buffer_ids(session.buffers.memory)


def test_the_runtime_never_imports_torch(engine, tmp_path):
    _, engine_dir = engine("conv")
    doc = tmp_path / "doc.txt"
    doc.write_bytes(document(300, seed=1))
    script = f"""
import sys, importlib.abc
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is not allowed in the runtime")
sys.meta_path.insert(0, NoTorch())
sys.argv = ["ctrt", "score", {str(engine_dir)!r}, {str(doc)!r}, "--json"]
from compressive_rt.cli.main import main
code = main()
sys.argv = ["ctrt", "generate", {str(engine_dir)!r}, "--prompt", "abc", "--greedy",
            "--max-new-tokens", "12"]
code = code or main()
assert "torch" not in sys.modules
sys.exit(code)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert '"bits_per_byte"' in result.stdout
