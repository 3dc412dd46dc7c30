"""Runtime loop overhead and capacity independence of decoding, on the `--quick` bench config.

Overhead: N one-token decode steps of one stream (feed with want_logits=False, then
last_logits: the decoding path, greedy); the time outside `backend.run` (validation,
bookkeeping, host copies) as a fraction of the time in those two calls. Capacity: the same
decode step with one active stream in a session of max_streams=32 vs max_streams=1,
interleaved step by step, median per step.

    python -m compressive_rt.benchmarks.loop_overhead [--steps 300] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from compressive_rt.benchmarks.contenders import random_model
from compressive_rt.benchmarks.settings import QUICK
from compressive_rt.ct_reference.config import ModelConfig
from compressive_rt.export.pipeline import export_model
from compressive_rt.runtime.session import Session


def timed_session(engine_dir: Path, max_streams: int, threads: int) -> tuple[Session, list]:
    """A session whose backend.run adds its duration to the returned one-element list."""
    session = Session(engine_dir, backend="onnxruntime-cpu", max_streams=max_streams,
                      threads=threads)
    inside = [0.0]
    run = session.backend.run

    def timed_run(*args, **kwargs):
        started = time.perf_counter()
        run(*args, **kwargs)
        inside[0] += time.perf_counter() - started

    session.backend.run = timed_run
    return session, inside


def decode_overhead(engine_dir: Path, steps: int, threads: int, prompt: np.ndarray) -> dict:
    session, inside = timed_session(engine_dir, 1, threads)
    stream = session.add_stream()
    session.feed({stream: prompt}, want_logits=False)
    token = np.zeros(1, dtype=np.int32)
    for _ in range(session.dims.seg_len):  # warm: every binding of the cycle seen once
        session.feed({stream: token}, want_logits=False)
    inside[0], total = 0.0, 0.0
    for _ in range(steps):
        started = time.perf_counter()
        session.feed({stream: token}, want_logits=False)
        logits = session.last_logits(stream)
        total += time.perf_counter() - started
        token[0] = int(np.argmax(logits))  # the caller's sampling: not the runtime's time
    return {"steps": steps, "total_s": total, "inside_run_s": inside[0],
            "outside_fraction": (total - inside[0]) / total}


def capacity_ratio(engine_dir: Path, steps: int, threads: int, prompt: np.ndarray) -> dict:
    sessions = {size: Session(engine_dir, backend="onnxruntime-cpu", max_streams=size,
                              threads=threads) for size in (1, 32)}
    streams = {size: s.add_stream() for size, s in sessions.items()}
    for size, session in sessions.items():
        session.feed({streams[size]: prompt}, want_logits=False)
    times: dict[int, list[float]] = {1: [], 32: []}
    token = np.zeros(1, dtype=np.int32)
    for _ in range(steps):
        for size, session in sessions.items():  # interleaved: drift hits both alike
            started = time.perf_counter()
            session.feed({streams[size]: token}, want_logits=False)
            times[size].append(time.perf_counter() - started)
    median = {size: float(np.median(t)) for size, t in times.items()}
    return {"step_ms_max_streams_1": median[1] * 1e3, "step_ms_max_streams_32": median[32] * 1e3,
            "ratio_32_over_1": median[32] / median[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    config = ModelConfig(**QUICK.config)
    prompt = np.random.default_rng(0).integers(0, config.vocab_size, 3 * config.seg_len + 5)
    with tempfile.TemporaryDirectory() as tmp:
        engine_dir = Path(tmp) / "engine"
        export_model(random_model(config), engine_dir, verify_segments=2, log=lambda *_: None)
        overhead = decode_overhead(engine_dir, args.steps, args.threads, prompt)
        print(f"decode b1, {overhead['steps']} steps: total {overhead['total_s']:.3f} s, "
              f"inside backend.run {overhead['inside_run_s']:.3f} s, outside "
              f"{100 * overhead['outside_fraction']:.2f}%")
        capacity = capacity_ratio(engine_dir, args.steps // 3, args.threads, prompt)
        print(f"capacity: decode step {capacity['step_ms_max_streams_32']:.3f} ms at "
              f"max_streams=32 vs {capacity['step_ms_max_streams_1']:.3f} ms at 1: ratio "
              f"{capacity['ratio_32_over_1']:.3f}")


if __name__ == "__main__":
    main()
