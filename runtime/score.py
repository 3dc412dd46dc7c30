"""Bits per byte of whole documents, streamed through a Session with memory."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from compressive_rt.runtime.session import Session


def target_bits(logits: np.ndarray, targets: np.ndarray) -> float:
    """Sum over positions of -log2 p(target | prefix) for logits [n, V], targets [n]."""
    peak = logits.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(logits - peak).sum(axis=-1)) + peak[:, 0]
    picked = np.take_along_axis(logits, targets[:, None].astype(np.int64), axis=-1)[:, 0]
    return float((log_norm - picked).sum(dtype=np.float64) / math.log(2))


@dataclass
class DocumentScore:
    name: str
    n_bytes: int
    bits: float  # total bits over the predicted bytes

    @property
    def predicted(self) -> int:
        """Bytes with a prediction: all but the first (there is no start token)."""
        return max(self.n_bytes - 1, 0)

    @property
    def bits_per_byte(self) -> float | None:
        """None (undefined) when no byte is predicted: an empty or one-byte document."""
        return self.bits / self.predicted if self.predicted else None


def score_documents(session: Session, documents: Sequence[tuple[str, bytes]],
                    on_tokens: Callable[[int], None] | None = None) -> list[DocumentScore]:
    """Score each document (any length) with fresh memory; up to session.max_streams at once.

    Each round feeds every open document its next chunk (aligned to segment boundaries, so
    whole segments take the one-call `segment` path); `on_tokens(n)` reports progress.
    Documents under two bytes predict nothing and take no stream. Every stream opened here is
    removed on return, also when a call fails."""
    chunk = session.dims.seg_len
    queue = [(index, data) for index, (_, data) in enumerate(documents) if len(data) >= 2]
    if on_tokens:
        on_tokens(sum(len(data) for _, data in documents if len(data) < 2))
    open_docs: dict[int, tuple[int, np.ndarray, int]] = {}  # stream -> (doc index, tokens, done)
    bits = [0.0] * len(documents)
    try:
        while queue or open_docs:
            while queue and len(open_docs) < session.max_streams:
                index, data = queue.pop(0)
                tokens = np.frombuffer(data, dtype=np.uint8).astype(np.int32)
                open_docs[session.add_stream()] = (index, tokens, 0)
            feed = {s: tokens[done:done + chunk] for s, (_, tokens, done) in open_docs.items()}
            logits = session.feed(feed)
            for stream, (index, tokens, done) in list(open_docs.items()):
                n = len(feed[stream])
                targets = tokens[done + 1:done + n + 1]
                bits[index] += target_bits(logits[stream][:len(targets)], targets)
                if done + n >= len(tokens):
                    session.remove_stream(stream)
                    del open_docs[stream]
                else:
                    open_docs[stream] = (index, tokens, done + n)
                if on_tokens:
                    on_tokens(n)
    finally:
        for stream in open_docs:
            session.remove_stream(stream)
    return [DocumentScore(name, len(data), bits[i]) for i, (name, data) in enumerate(documents)]


def total_bits_per_byte(scores: Sequence[DocumentScore]) -> float | None:
    """Over all predicted bytes; None (undefined) when there are none."""
    predicted = sum(s.predicted for s in scores)
    return sum(s.bits for s in scores) / predicted if predicted else None
