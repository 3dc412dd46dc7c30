"""Shared by the serving tests: references computed with the runtime in-process, SSE parsing,
and a real `ctrt serve` subprocess on 127.0.0.1 (always stopped by its fixture)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import strategies as st

from compressive_rt.benchmarks.launchers.server_process import ServerProcess
from compressive_rt.runtime.generate import generate
from compressive_rt.runtime.sampling import Sampling
from compressive_rt.runtime.score import target_bits
from compressive_rt.runtime.session import Session
from compressive_rt.serving.store import StaleVersion
from support.rules import fp32_bound


class Reference:
    """An uninterrupted stream in-process: what a server's stream must score and generate."""

    def __init__(self, engine_dir: Path) -> None:
        self.session = Session(engine_dir)
        self.stream = self.session.add_stream()
        self.fed = False

    def append(self, text: bytes) -> tuple[float, int]:
        """(bits, predicted bytes) of `text` after everything appended so far; feeds it."""
        tokens = np.frombuffer(text, dtype=np.uint8).astype(np.int32)
        bits, predicted = 0.0, 0
        if self.fed:
            bits += target_bits(self.session.last_logits(self.stream)[None].copy(), tokens[:1])
            predicted += 1
        logits = self.session.feed({self.stream: tokens})[self.stream]
        bits += target_bits(logits[:-1], tokens[1:])
        self.fed = True
        return bits, predicted + len(tokens) - 1

    def bits_per_byte(self, text: bytes) -> float | None:
        bits, predicted = self.append(text)
        return bits / predicted if predicted else None


def greedy(engine_dir: Path, prompt: bytes, count: int) -> bytes:
    """Greedy generation in-process (the runtime's own generate)."""
    return generate(Session(engine_dir), prompt, count, Sampling(greedy=True))


def assert_close(got: float | None, expected: float | None) -> None:
    """Equal within the fp32 rule (support.rules) applied to bits; None (nothing predicted)
    only equals None."""
    if expected is None or got is None:
        assert got is expected, (got, expected)
        return
    assert abs(got - expected) <= fp32_bound(expected), (got, expected)


def sse_events(lines) -> list:
    """The JSON payloads of an SSE body's `data:` lines, up to and without `[DONE]` (which must
    come, last)."""
    events, done = [], False
    for line in lines:
        if not line.startswith("data: "):
            assert line == "", line
            continue
        assert not done, "data after [DONE]"
        payload = line[len("data: "):]
        if payload == "[DONE]":
            done = True
        else:
            events.append(json.loads(payload))
    assert done, "no [DONE]"
    return events


# the benchmark's subprocess runner: a free port on 127.0.0.1, /ready, SIGTERM or kill -9
Server = ServerProcess


# A stream store's operations in any order; `replay` runs them and returns what was acknowledged.
STORE_OPERATIONS = st.lists(st.one_of(
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=9)),
    st.tuples(st.just("snapshot"), st.just(b"")),
    st.tuples(st.just("take"), st.just(b"")),
    st.tuples(st.just("stale"), st.binary(min_size=1, max_size=3)),
    st.tuples(st.just("reopen"), st.just(b""))), max_size=30)


def replay(open_store, stream: str, operations: list) -> tuple:
    """Run the operations on a new stream of open_store() (reopened on "reopen"); a stale
    write must be refused. Returns (the open store, every acknowledged byte, the position of
    the last snapshot); the "state" a snapshot holds is the history's bytes."""
    store = open_store()
    store.create(stream)
    version, history, snapshot_at = store.take(stream).version, b"", 0
    for kind, data in operations:
        if kind == "append":
            store.append(stream, version, len(history), data)
            history += data
        elif kind == "snapshot":
            store.put_snapshot(stream, version, len(history), history)
            snapshot_at = len(history)
        elif kind == "take":
            version = store.take(stream).version
        elif kind == "stale":
            with pytest.raises(StaleVersion):
                store.append(stream, version - 1, len(history), data)
        else:
            store.close()
            store = open_store()
    return store, history, snapshot_at
