"""Generations on the scheduler: completion choices and generations on persistent streams.
One scheduler step per loop turn; each token goes to its request as it comes, and a finished
generation goes to its owner (the completion, or the stream, which makes it durable)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import numpy as np

from compressive_rt.runtime.scheduler import TokenEvent
from compressive_rt.runtime.session import EngineCallError
from compressive_rt.serving.errors import ApiError, server_error
from compressive_rt.serving.jobs import Generation, GenerationParams, StreamEntry
from compressive_rt.serving.tickets import Finished, Token

if TYPE_CHECKING:
    from compressive_rt.serving.engine import Engine

log = logging.getLogger("compressive_rt.serving")

FAILED_STEPS = 3  # generation steps failing in a row before their requests fail


class Generations:
    def __init__(self, core: Engine) -> None:
        self.core = core
        self.running: dict[int, Generation] = {}  # scheduler request id -> generation
        # a cancelled generation on a stream whose last sampled token is still to be fed:
        # the stream's slot is freed after that step
        self.releasing: dict[int, StreamEntry] = {}
        self._failures = 0  # steps failed in a row

    def active(self) -> bool:
        scheduler = self.core.scheduler
        return bool(scheduler.waiting or scheduler.running)

    def start(self, generation: Generation, params: GenerationParams, slot: int | None = None,
              granted: bool = False) -> None:
        """Submit to the scheduler: on a fresh stream (slot None; `granted`: its slot was
        granted already) or continuing the resident stream in `slot`."""
        def on_token(event: TokenEvent) -> None:
            self._on_token(generation, event)

        generation.request_id = self.core.scheduler.submit(
            generation.prompt, params.max_tokens, params.sampling, params.stop, on_token, slot,
            granted=granted)
        self.running[generation.request_id] = generation

    def on(self, entry: StreamEntry) -> list[Generation]:
        return [generation for generation in self.running.values() if generation.entry is entry]

    def cancel(self, generation: Generation) -> None:
        if self.running.pop(generation.request_id, None) is not None:
            self.core.scheduler.cancel(generation.request_id)

    def cancel_on(self, entry: StreamEntry) -> bool:
        """Stop the stream's generation; True when its last sampled token is still to be fed
        (the stream's slot must wait for that step)."""
        held = False
        for generation in self.on(entry):
            self.cancel(generation)
            if self.core.scheduler.result(generation.request_id).finish_reason is None:
                self.releasing[generation.request_id] = entry
                entry.releasing = held = True
        return held

    def _on_token(self, generation: Generation, event: TokenEvent) -> None:
        if generation.request_id not in self.running:  # dropped (cancelled) meanwhile
            return
        self.core.metrics.generated_tokens.inc()
        if not event.finished:
            self.core.loop.send(generation.ticket, Token(generation.index, event.token))
            return
        result = self.core.scheduler.result(generation.request_id)
        del self.running[generation.request_id]
        finished = Finished(generation.index, result.finish_reason, result.tokens, event.token)
        if generation.entry is None:
            self.core.completions.choice_finished(generation, finished)
            return
        fed = generation.prompt.astype(np.uint8).tobytes() + bytes(result.tokens)
        self.core.streams.log(generation.entry, generation.job, fed, [finished],
                              {"token_ids": list(result.tokens),
                               "finish_reason": result.finish_reason})

    def step(self) -> None:
        """One scheduler step. A failed engine call loses no token (the scheduler's failure
        semantics), so the step is retried on the next turn; after FAILED_STEPS failures in a
        row every generation fails (500) rather than waiting for its timeout."""
        started = time.perf_counter()
        try:
            self.core.scheduler.step()
            self._failures = 0
        except EngineCallError as exc:
            self._failures += 1
            log.error("a generation step failed (%d in a row): %s", self._failures, exc)
            if self._failures >= FAILED_STEPS:
                self.fail_all(server_error(f"engine calls keep failing: {exc}"))
        except Exception as exc:  # noqa: BLE001 - the scheduler refused its own state: a bug
            log.exception("a generation step failed")
            self.fail_all(server_error(f"a generation step failed: {exc}"))
        self.core.metrics.engine_step.labels("generate").observe(time.perf_counter() - started)
        for completion in self.core.scheduler.take_finished():
            entry = self.releasing.pop(completion.request_id, None)
            if entry is not None:  # a cancelled request's last token is in its stream now
                entry.releasing = False
                self.core.residency.release(entry)

    def fail_all(self, error: ApiError) -> None:
        self._failures = 0
        generations = list(self.running.values())
        self.core.scheduler.close()  # ends them all now: no kept stream waits for a feed
        for generation in generations:
            self.drop(generation, error)

    def drop(self, generation: Generation, error: ApiError | None) -> None:
        """End a running generation; a persistent stream falls back to its durable state."""
        self.cancel(generation)
        if generation.entry is not None:
            self.core.streams.abandon(generation.entry, generation.job, error)
        else:
            self.core.completions.choice_failed(generation, error)
