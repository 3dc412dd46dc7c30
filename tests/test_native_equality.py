"""The native runtime (native/, through its C API) computes what the Python runtime computes:
same ONNX Runtime library, graphs, session options and threads give the same logits and state.

At one thread every logit and state tensor is bitwise equal; at two within the fp32 rule of
export/tolerances.py (support.rules.fp32_bound). Bits per byte agree to 1e-6, greedy and
seeded sampled tokens are identical, and a tampered engine directory is refused by both.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.engines import COMPRESS_FNS
from support.native import native_library, native_tool
from support.rules import fp32_bound

from compressive_rt.benchmarks.launchers.native import NativeEngine, NativeSession
from compressive_rt.benchmarks.launchers.native import sample as native_sample
from compressive_rt.errors import EngineError, RuntimeInputError
from compressive_rt.runtime.generate import generate
from compressive_rt.runtime.sampling import BatchSampler, Sampling
from compressive_rt.runtime.score import score_documents, total_bits_per_byte
from compressive_rt.runtime.session import Session

pytestmark = [pytest.mark.native, pytest.mark.slow]

CHUNKS = (1, 3, 17, 64, 2, 5, 8, 11, 1, 30)  # irregular: inside, across and at segment ends


def sessions(engine_dir, threads: int, max_streams: int = 2):
    python = Session(engine_dir, backend="onnxruntime-cpu", max_streams=max_streams,
                     threads=threads)
    native = NativeSession(engine_dir, max_streams=max_streams, threads=threads,
                           library=native_library())
    return python, native


def worst_differences(python: Session, native: NativeSession, streams, feeds: int,
                      rng: np.random.Generator) -> tuple[float, float, float]:
    """Feed both runtimes the same irregular chunks; (max |logit diff|, max |logit|, max
    |state diff|) over every logit and every state tensor after each feed."""
    worst_logit = worst_state = 0.0
    scale = 1.0
    for step in range(feeds):
        chunk = {s: rng.integers(0, 256, CHUNKS[(step + 3 * i) % len(CHUNKS)])
                 for i, s in enumerate(streams)}
        expected, got = python.feed(chunk), native.feed(chunk)
        for s in streams:
            worst_logit = max(worst_logit, float(np.abs(expected[s] - got[s]).max()))
            scale = max(scale, float(np.abs(expected[s]).max()))
            want_state, got_state = python.stream_state(s), native.stream_state(s)
            assert set(got_state) == set(want_state)
            for name, value in want_state.items():
                assert got_state[name].dtype == value.dtype and got_state[name].shape == \
                    value.shape, name
                diff = np.abs(got_state[name].astype(np.float64) - value).max()
                worst_state = max(worst_state, float(diff))
            assert native.position(s) == python.position(s)
    return worst_logit, scale, worst_state


@pytest.mark.parametrize("compress_fn", COMPRESS_FNS)
def test_one_thread_gives_bitwise_equal_logits_and_state(engine, compress_fn):
    _, engine_dir = engine(compress_fn)
    python, native = sessions(engine_dir, threads=1)
    streams = [python.add_stream(), python.add_stream()]
    assert [native.add_stream(), native.add_stream()] == streams
    logit, _, state = worst_differences(python, native, streams, 30,
                                        np.random.default_rng(0))
    segments = python.position(streams[0]) // python.dims.seg_len
    assert segments >= 20
    assert (logit, state) == (0.0, 0.0), f"largest differences: logits {logit}, state {state}"


def test_sessions_sharing_one_engine_give_bitwise_equal_logits_and_state(engine):
    """Two sessions over one NativeEngine (one set of weights and prepacked weights, one set of
    ONNX Runtime sessions) compute what the Python runtime computes, each on its own streams."""
    _, engine_dir = engine("most_used")
    shared = NativeEngine(engine_dir, threads=1, library=native_library())
    for seed in (5, 6):
        python = Session(engine_dir, backend="onnxruntime-cpu", max_streams=2, threads=1)
        native = NativeSession(shared, max_streams=2)
        streams = [python.add_stream(), python.add_stream()]
        assert [native.add_stream(), native.add_stream()] == streams
        logit, _, state = worst_differences(python, native, streams, 12,
                                            np.random.default_rng(seed))
        assert (logit, state) == (0.0, 0.0), f"largest differences: {logit}, state {state}"
    shared.close()


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_a_reduced_precision_engine_gives_bitwise_equal_logits_and_state(engine, precision):
    """int8: int8 MatMul weights; fp16: fp16 weights, which both runtimes open with graph
    optimisation on."""
    python, native = sessions(engine("conv", precision)[1], threads=1)
    streams = [python.add_stream(), python.add_stream()]
    native.add_stream(), native.add_stream()
    logit, _, state = worst_differences(python, native, streams, 25,
                                        np.random.default_rng(3))
    assert (logit, state) == (0.0, 0.0), f"largest differences: logits {logit}, state {state}"


# A process's native engines share one ONNX Runtime thread pool whose size the first engine
# fixes (ctrt.h): this process's engines run at one thread, so the two-thread comparison runs in
# a process of its own and prints (max |logit diff|, max |logit|, max |state diff|, positions).
TWO_THREADS = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from test_native_equality import sessions, worst_differences
python, native = sessions(sys.argv[2], threads=2)
streams = [python.add_stream(), python.add_stream()]
native.add_stream(), native.add_stream()
differences = worst_differences(python, native, streams, 30, np.random.default_rng(1))
print(json.dumps([*differences, python.position(streams[1]) // python.dims.seg_len]))
"""


@pytest.mark.parametrize("compress_fn", ["conv", "most_used"])
def test_two_threads_agree_within_the_design_tolerance(engine, compress_fn):
    _, engine_dir = engine(compress_fn)
    run = subprocess.run([sys.executable, "-c", TWO_THREADS, str(Path(__file__).parent),
                          str(engine_dir)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    logit, scale, state, segments = json.loads(run.stdout.splitlines()[-1])
    assert segments >= 20
    assert logit <= fp32_bound(scale), f"largest logit difference {logit} (scale {scale})"
    assert state <= fp32_bound(scale), f"largest state difference {state}"


def test_engines_of_another_thread_count_are_refused_in_one_process(engine):
    _, engine_dir = engine("conv")
    NativeEngine(engine_dir, threads=1, library=native_library())
    refusal = "threads 2 differs from this process's ONNX Runtime thread pool of 1, fixed by"
    with pytest.raises(RuntimeInputError, match=refusal):
        NativeEngine(engine_dir, threads=2, library=native_library())


def test_bits_per_byte_of_ctrt_native_score_equal_the_python_runtime(engine, tmp_path):
    _, engine_dir = engine("conv")
    rng = np.random.default_rng(2)
    texts = [b"import os\nprint(os.getcwd())\n" * 9, rng.integers(0, 256, 203).astype(np.uint8)
             .tobytes(), b"x"]
    files = []
    for i, text in enumerate(texts):
        files.append(tmp_path / f"doc{i}.txt")
        files[-1].write_bytes(text)
    python = Session(engine_dir, backend="onnxruntime-cpu", max_streams=2, threads=1)
    scores = score_documents(python, [(str(f), f.read_bytes()) for f in files])
    done = subprocess.run([str(native_tool()), "score", str(engine_dir), *map(str, files),
                           "--streams", "2", "--threads", "1", "--json"],
                          capture_output=True, text=True, check=True)
    native = json.loads(done.stdout)
    assert abs(native["bits_per_byte"] - total_bits_per_byte(scores)) <= 1e-6
    for row, score in zip(native["documents"], scores, strict=True):
        assert row["bytes"] == score.n_bytes
        if score.bits_per_byte is None:
            assert row["bits_per_byte"] is None  # one byte: nothing is predicted
        else:
            assert abs(row["bits_per_byte"] - score.bits_per_byte) <= 1e-6


def test_greedy_generation_gives_identical_tokens(engine):
    _, engine_dir = engine("most_used")
    python, native = sessions(engine_dir, threads=1)
    prompt = b"def main(argv):\n    "
    expected = generate(python, prompt, 40, Sampling(greedy=True))
    stream = native.add_stream()
    assert bytes(native.generate(stream, prompt, 40, greedy=True)) == expected
    done = subprocess.run([str(native_tool()), "generate", str(engine_dir), "--prompt",
                           prompt.decode(), "--max-new-tokens", "40", "--greedy", "--threads",
                           "1", "--json"], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout)["requests"][0]["tokens"] == list(expected)


SETTINGS = [dict(), dict(top_k=5), dict(top_p=0.8, temperature=0.7),
            dict(top_k=20, top_p=0.9, temperature=1.3)]


@pytest.mark.parametrize("settings", SETTINGS)
def test_seeded_sampling_generates_the_same_tokens(engine, settings):
    """Sampling version 2 in both runtimes: `generate` (the Python scheduler) and the native
    generation draw the same tokens for the same seed."""
    _, engine_dir = engine("conv")
    python, native = sessions(engine_dir, threads=1)
    seed, prompt = 2**64 - 12345, b"class Stream:\n"
    expected = generate(python, prompt, 48, Sampling(seed=seed, **settings))
    got = native.generate(native.add_stream(), prompt, 48, seed=seed, **settings)
    assert bytes(got) == expected


@given(logits=st.lists(st.sampled_from([-3.0, -0.5, 0.0, 0.25, 1.0, 2.5, 40.0]) | st.floats(
           -30, 30, width=32), min_size=2, max_size=300),
       seed=st.integers(0, 2**64 - 1), drawn=st.integers(0, 2**40),
       top_k=st.integers(0, 310), top_p=st.sampled_from([1.0, 0.95, 0.5, 0.1]),
       temperature=st.sampled_from([1.0, 0.3, 2.0]))
def test_the_native_sampler_draws_what_the_python_sampler_draws(logits, seed, drawn, top_k,
                                                                 top_p, temperature):
    """One token for the same logits (ties included), settings, seed and counter."""
    array = np.array(logits, dtype=np.float32)
    sampler = BatchSampler(1, array.size)
    sampler.assign(0, Sampling(temperature=temperature, top_k=top_k, top_p=top_p), seed, drawn)
    expected = int(sampler.sample(array[None], np.array([0]))[0])
    assert native_sample(array, drawn, temperature=temperature, top_k=top_k, top_p=top_p,
                         seed=seed, library=native_library()) == expected


@pytest.mark.parametrize("damage", ["manifest", "graph", "weights"])
def test_a_tampered_engine_is_refused_by_both_runtimes(engine, tmp_path, damage):
    _, engine_dir = engine("conv")
    copy = tmp_path / "engine"
    shutil.copytree(engine_dir, copy)
    if damage == "manifest":
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest["entry_points"]["commit"]["sha256"] = "0" * 64
        (copy / "manifest.json").write_text(json.dumps(manifest))
        phrase = "commit.onnx does not match the sha256"
    else:
        path = copy / ("segment.onnx" if damage == "graph" else "weights.bin")
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        phrase = "does not match the sha256"
    with pytest.raises(EngineError, match=phrase):
        Session(copy, backend="onnxruntime-cpu")
    with pytest.raises(EngineError, match=phrase):
        NativeSession(copy, library=native_library())
