"""Completions (POST /v1/completions): requests whose choices each run on a fresh stream of the
scheduler, handed over choice by choice as the admission controller grants slots."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import numpy as np

from compressive_rt.serving.errors import ApiError
from compressive_rt.serving.jobs import CompletionRequest, Generation, GenerationParams
from compressive_rt.serving.tickets import Done, Failed, Finished, Started, Ticket

if TYPE_CHECKING:
    from compressive_rt.serving.engine import Engine


class Completions:
    def __init__(self, core: Engine) -> None:
        self.core = core
        self.waiting: deque[CompletionRequest] = deque()  # with choices still to hand over

    def complete(self, ticket: Ticket, prompts: list[np.ndarray],
                 params: GenerationParams) -> None:
        request = CompletionRequest(ticket, prompts, params, self.core.arrival())
        self.core.work[ticket] = request
        self.waiting.append(request)

    def heads(self) -> list[tuple[int, CompletionRequest]]:
        return [(request.arrival, request) for request in self.waiting]

    def admit(self, request: CompletionRequest) -> bool:
        """Hand the request's choices to the scheduler while slots are granted; False once one
        is not (the rest wait)."""
        while request.submitted < len(request.prompts):
            if not self.core.admission.grant():
                return False
            index = request.submitted
            if index == 0:
                self.core.loop.send(request.ticket, Started())
            generation = Generation(request.ticket, index, request.prompts[index])
            request.submitted += 1
            request.generations.append(generation)
            self.core.generations.start(generation, request.params, granted=True)
        self.waiting.remove(request)
        return True

    def choice_finished(self, generation: Generation, finished: Finished) -> None:
        self.core.loop.send(generation.ticket, finished)
        request = self.core.work.get(generation.ticket)
        if request is None:
            return
        request.finished += 1
        if request.finished == len(request.prompts):
            del self.core.work[generation.ticket]
            self.core.loop.send(generation.ticket, Done())

    def choice_failed(self, generation: Generation, error: ApiError | None) -> None:
        """A choice ended without its tokens: the whole request fails with `error`."""
        request = self.core.work.pop(generation.ticket, None)
        if request is None:
            return
        self.cancel(request)
        if error is not None:
            self.core.loop.send(generation.ticket, Failed(error))

    def cancel(self, request: CompletionRequest) -> None:
        """Let go of the request: its choices stop, those not handed over never start."""
        if request in self.waiting:
            self.waiting.remove(request)
        for generation in request.generations:
            self.core.generations.cancel(generation)

    def stop(self, error: ApiError) -> None:
        for request in self.waiting:
            self.core.work.pop(request.ticket, None)
            self.core.loop.send(request.ticket, Failed(error))
        self.waiting.clear()
