"""Tokens fed into resident streams chunk by chunk: clients' appends (scored) and the replay of
a stream's log after it was taken from the store. One chunk of every run per loop turn, in one
feed, each up to its stream's next segment boundary: a long append never stalls decoding and
never holds more than [L, V] logits."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from compressive_rt.errors import RuntimeInputError
from compressive_rt.runtime.score import target_bits
from compressive_rt.serving.errors import ApiError, server_error
from compressive_rt.serving.jobs import AppendRun, StreamEntry

if TYPE_CHECKING:
    from compressive_rt.serving.engine import Engine

log = logging.getLogger("compressive_rt.serving")


class Appends:
    def __init__(self, core: Engine) -> None:
        self.core = core
        self.runs: list[AppendRun] = []

    def active(self) -> bool:
        return bool(self.runs)

    def add(self, run: AppendRun) -> None:
        self.runs.append(run)

    def on(self, entry: StreamEntry) -> bool:
        return any(run.entry is entry for run in self.runs)

    def drop(self, entry: StreamEntry) -> None:
        self.runs = [run for run in self.runs if run.entry is not entry]

    def stop(self, error: ApiError) -> None:
        """Shutdown: clients' appends fail (a replay runs on: it is durable already)."""
        for run in list(self.runs):
            if run.job is not None:
                self.core.streams.abandon(run.entry, run.job, error)

    def step(self) -> None:
        """One chunk of every run, in one feed. Bits of a chunk's first byte come from the
        stream's last logits."""
        session, seg_len = self.core.session, self.core.session.dims.seg_len
        feed, previous = {}, {}
        for run in self.runs:
            slot = run.entry.slot
            count = min(len(run.tokens) - run.done, seg_len - session.position(slot) % seg_len)
            feed[slot] = run.tokens[run.done:run.done + count]
            if run.job is not None:
                try:
                    previous[slot] = session.last_logits(slot)[None].copy()  # [1, V]
                except RuntimeInputError:  # never fed: its first byte has no prediction
                    pass
        scoring = any(run.job is not None for run in self.runs)
        started = time.perf_counter()
        try:
            logits = session.feed(feed, want_logits=scoring)
        except Exception as exc:  # noqa: BLE001 - an engine call failed: fail these appends
            log.exception("an append step failed")
            for run in list(self.runs):
                self.core.streams.abandon(run.entry, run.job or run.entry.current,
                                          server_error(f"an engine call failed: {exc}"))
            return
        self.core.metrics.engine_step.labels("append").observe(time.perf_counter() - started)
        for run in list(self.runs):
            chunk = feed[run.entry.slot]
            if run.job is not None:
                if run.entry.slot in previous:
                    run.bits += target_bits(previous[run.entry.slot], chunk[:1])
                    run.predicted += 1
                run.bits += target_bits(logits[run.entry.slot][:-1], chunk[1:])
                run.predicted += len(chunk) - 1
            run.done += len(chunk)
            if run.done == len(run.tokens):
                self.runs.remove(run)
                self.core.streams.appended(run)
