"""Export checks itself: the graphs, run by the runtime on ONNX Runtime (CPU), against eager."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from compressive_rt.ct_reference.model import CompressiveTransformer
from compressive_rt.export.tolerances import BITS_PER_BYTE_TOLERANCE, RELATIVE_TOLERANCE
from compressive_rt.runtime.backends.base import Backend
from compressive_rt.runtime.score import target_bits
from compressive_rt.runtime.session import Session

# Irregular chunk sizes exercise extend with many token counts and segment boundaries.
EXTEND_CHUNKS = (1, 3, 17, 1, 64, 7, 2, 31)


@dataclass
class Verification:
    segments: int
    streams: int
    logit_scale: float
    segment_max_abs_error: float
    extend_max_abs_error: float
    memory_max_abs_error: float
    counts_equal: bool
    tolerance: float
    bits_per_byte: float  # the eager model's, on the text stream
    bits_per_byte_error: float  # |engine - eager|
    bits_per_byte_tolerance: float | None  # None: no rule beyond the logits' (fp32)

    @property
    def passed(self) -> bool:
        worst = max(self.segment_max_abs_error, self.extend_max_abs_error)
        bits_ok = self.bits_per_byte_tolerance is None or \
            self.bits_per_byte_error <= self.bits_per_byte_tolerance
        return self.counts_equal and worst <= self.tolerance and \
            self.memory_max_abs_error <= self.tolerance and bits_ok

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def verification_tokens(vocab_size: int, length: int, seed: int = 0) -> np.ndarray:
    """Two streams [2, length]: real text (this Python's own `os.py`, bytes) and random ids."""
    text = np.frombuffer(Path(os.__file__).read_bytes(), dtype=np.uint8).astype(np.int64)
    text = np.resize(text % vocab_size, length)
    rand = np.random.default_rng(seed).integers(0, vocab_size, length)
    return np.stack([text, rand])


def eager_logits(model: CompressiveTransformer, tokens: np.ndarray) -> tuple[np.ndarray, object]:
    """Score tokens [B, n] segment by segment with memory -> logits [B, n, V], final memory."""
    logits, memory = model.score(torch.from_numpy(tokens))
    return logits.numpy(), memory


def bits_per_byte(logits: np.ndarray, tokens: np.ndarray) -> float:
    """Mean -log2 p(next token) of logits [n, V] over tokens [n] (n - 1 predictions)."""
    return target_bits(logits[:-1], tokens[1:]) / (len(tokens) - 1)


def verify_engine(model: CompressiveTransformer, engine_dir: Path, segments: int = 20,
                  threads: int | None = None, precision: str = "fp32",
                  make_backend: Callable[[], Backend] | None = None) -> Verification:
    """Score >= `segments` segments of real and random tokens two ways through the runtime
    (whole segments; irregular extend chunks + commit) and compare with the eager model.

    make_backend gives each of the two sessions its backend (default: the Session's "auto")."""
    cfg = model.config
    model.eval()
    length = segments * cfg.seg_len
    tokens = verification_tokens(cfg.vocab_size, length)
    expected, memory = eager_logits(model, tokens)
    scale = float(np.abs(expected).max())

    session = Session(engine_dir, backend=make_backend() if make_backend else "auto",
                      max_streams=2, threads=threads)
    streams = [session.add_stream(), session.add_stream()]
    got = session.feed({s: tokens[i] for i, s in enumerate(streams)})
    segment_err = max(float(np.abs(got[s] - expected[i]).max()) for i, s in enumerate(streams))
    eager_bpb = bits_per_byte(expected[0], tokens[0])
    bpb_err = abs(bits_per_byte(got[streams[0]], tokens[0]) - eager_bpb)
    mem_err, counts_equal = 0.0, True
    for i, s in enumerate(streams):
        state = session.stream_state(s)
        mem_err = max(mem_err, float(np.abs(state["mem"] - memory.mem[:, i].numpy()).max()))
        if cfg.cmem_len:
            mem_err = max(mem_err, float(np.abs(state["cmem"] - memory.cmem[:, i].numpy()).max()))
            counts_equal &= int(state["cmem_len"]) == int(memory.cmem_len[i])
        counts_equal &= int(state["mem_len"]) == int(memory.mem_len[i])

    # Irregular chunks, the two streams offset by one token (different positions in a batch).
    session.close()
    chunked = Session(engine_dir, backend=make_backend() if make_backend else "auto",
                      max_streams=2, threads=threads)
    ids = [chunked.add_stream(), chunked.add_stream()]
    extend_err, done, k = 0.0, [0, 0], 0
    while min(done) < length:
        feed = {}
        for i, s in enumerate(ids):
            size = EXTEND_CHUNKS[(k + i) % len(EXTEND_CHUNKS)]
            feed[s] = tokens[i, done[i]:done[i] + size]
        out = chunked.feed(feed)
        for i, s in enumerate(ids):
            n = len(feed[s])
            if n:
                want = expected[i, done[i]:done[i] + n]
                extend_err = max(extend_err, float(np.abs(out[s] - want).max()))
            done[i] += n
        k += 1
    chunked.close()
    return Verification(segments=segments, streams=2, logit_scale=scale,
                        segment_max_abs_error=segment_err, extend_max_abs_error=extend_err,
                        memory_max_abs_error=mem_err, counts_equal=bool(counts_equal),
                        tolerance=RELATIVE_TOLERANCE[precision] * max(1.0, scale),
                        bits_per_byte=eager_bpb, bits_per_byte_error=bpb_err,
                        bits_per_byte_tolerance=BITS_PER_BYTE_TOLERANCE.get(precision))
