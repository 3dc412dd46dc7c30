"""The serving core: one engine thread owns the Session, the generation scheduler and the
persistent streams. The event loop hands it work through `submit`; it answers through each
request's Ticket; store operations run on the store thread and their answers come back to it
(loop.py). It never waits on the event loop or a disk.

Its parts, one job each: the loop and its inbox (loop.py), the one admission controller over
the slot pool (runtime/admission.py, shared with the scheduler), completions
(completions.py), generations on the scheduler (generations.py), appends and log replays
(appends.py), persistent streams' requests and durability (streams.py), which of them hold a
slot (residency.py), and how streams are held in the store, a strategy passed in
(ownership.py).

Each loop turn: take what the inbox holds, admit waiting work in arrival order (a slot for
each that needs one, spilling the least recently used idle stream when every slot is taken;
once one cannot have a slot, later work needing one waits too), then, if anything runs, one
generation step and one chunk of every running append; if nothing can run, wait for the
inbox.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from compressive_rt.runtime.admission import SlotAdmission
from compressive_rt.runtime.backends.base import NUMPY_DTYPES
from compressive_rt.runtime.buffers import FILL_INPUT
from compressive_rt.runtime.scheduler import Scheduler
from compressive_rt.runtime.session import Session
from compressive_rt.serving import stream_requests
from compressive_rt.serving.appends import Appends
from compressive_rt.serving.completions import Completions
from compressive_rt.serving.errors import ApiError, server_error
from compressive_rt.serving.generations import Generations
from compressive_rt.serving.jobs import CompletionRequest, GenerationParams, Job
from compressive_rt.serving.loop import EngineLoop
from compressive_rt.serving.metrics import Metrics
from compressive_rt.serving.ownership import Ownership, ownership_of
from compressive_rt.serving.residency import Residency
from compressive_rt.serving.settings import ServeSettings
from compressive_rt.serving.store import StreamStore
from compressive_rt.serving.streams import PersistentStreams
from compressive_rt.serving.tickets import Cancelled, Failed, Ticket

log = logging.getLogger("compressive_rt.serving")


def row_specs(session: Session) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """(shape, dtype) of one stream's row of every state tensor (what a snapshot holds)."""
    buffers = session.buffers
    return {name: (buffers.row_shape(name), np.dtype(NUMPY_DTYPES[buffers.specs[name].dtype]))
            for name in (*buffers.row_state, FILL_INPUT)}


def state_bytes(session: Session) -> int:
    """Bytes of one stream's state: constant in its history."""
    return sum(math.prod(shape) * dtype.itemsize for shape, dtype in row_specs(session).values())


class Engine:
    """Owns `session` on its own thread; see the module doc. `ownership` defaults to what the
    store calls for (ownership.py)."""

    def __init__(self, session: Session, store: StreamStore, settings: ServeSettings,
                 metrics: Metrics, ownership: Ownership | None = None) -> None:
        self.session, self.settings, self.metrics = session, settings, metrics
        self.state_bytes = state_bytes(session)
        self.ownership = ownership = ownership or ownership_of(store)
        positions = store.positions() if ownership.knows_every_stream else {}
        self.loop = EngineLoop(store, waiters=settings.streams)
        self.work: dict[Ticket, CompletionRequest | Job] = {}  # every request not yet answered
        self._arrivals = itertools.count()
        self.streams = PersistentStreams(self, ownership, positions)
        self.residency = Residency(self, ownership)
        self.admission = SlotAdmission(session, reclaim=self.residency.reclaim)
        self.scheduler = Scheduler(session, self.admission)
        self.completions = Completions(self)
        self.generations = Generations(self)
        self.appends = Appends(self)
        self.stopping = False
        self.ready = False
        self.failed = False  # the engine thread died of a bug: every request gets a 503
        self._thread = threading.Thread(target=self._run, name="ctrt-engine", daemon=True)

    def arrival(self) -> int:
        """The next request's place in arrival order."""
        return next(self._arrivals)

    # ---- the event loop's side ---------------------------------------------------------
    def start(self) -> None:
        self._thread.start()
        self.ready = True

    def submit(self, ticket: Ticket, method: Callable[..., None], *args: Any) -> None:
        """Run `method(ticket, *args)` on the engine thread; an ApiError it raises becomes the
        ticket's Failed event (as does everything once the engine thread has failed)."""
        if self.failed:
            ticket.post(Failed(server_error("the engine failed; see the server log", 503)))
            return
        self.loop.post(lambda: self._guarded(ticket, method, *args))

    def cancel(self, ticket: Ticket) -> None:
        """The client left or its time ran out: let go of the request (from any thread)."""
        self.loop.post(lambda: self._cancel(ticket))

    def give_up(self, stream_id: str) -> None:
        """Spill the stream once no request of it runs (from any thread; residency.py)."""
        self.residency.give_up(stream_id)

    def stop(self) -> None:
        """Cancel what is left, wait for pending writes, spill every resident stream to the
        store, and end the thread (blocking: call it off the event loop)."""
        self.ready = False
        self.loop.post(self._begin_stop)
        self._thread.join()
        self.loop.close()

    # ---- requests (the methods `submit` runs on the engine thread) -----------------------
    def complete(self, ticket: Ticket, prompts: list[np.ndarray],
                 params: GenerationParams) -> None:
        self.completions.complete(ticket, prompts, params)

    def create_stream(self, ticket: Ticket) -> None:
        stream_requests.create(self.streams, ticket)

    def describe_stream(self, ticket: Ticket, stream_id: str) -> None:
        stream_requests.describe(self.streams, ticket, stream_id)

    def list_streams(self, ticket: Ticket) -> None:
        stream_requests.list_streams(self.streams, ticket)

    def stream_job(self, ticket: Ticket, stream_id: str, job: Job) -> None:
        """Queue a request on a persistent stream (behind the stream's earlier ones)."""
        self.streams.queue(ticket, stream_id, job)

    # ---- the loop ------------------------------------------------------------------------
    def _guarded(self, ticket: Ticket, method: Callable[..., None], *args: Any) -> None:
        if self.stopping:
            self.loop.send(ticket, Failed(server_error("the server is shutting down", 503)))
            return
        try:
            method(ticket, *args)
        except ApiError as exc:
            self.loop.send(ticket, Failed(exc))

    def _running(self) -> bool:
        return self.generations.active() or self.appends.active()

    def _run(self) -> None:
        try:
            while not (self.stopping and self._quiet()):
                self.loop.drain(block=False)
                if not self.stopping:
                    self._admit()
                if not self._running():
                    # nothing can run until a request or a store answer comes: wait for it
                    self.loop.flush()
                    self.loop.drain(block=True)
                    continue
                if self.generations.active():
                    self.generations.step()
                if self.appends.active():
                    self.appends.step()
                self.loop.flush()
            self.loop.flush()
            self.residency.spill_all()
        except Exception:  # a bug: answer everyone rather than hang them
            log.exception("the engine thread failed")
            self.ready, self.failed = False, True
            self.loop.drain(block=False)  # requests that came meanwhile are answered below too
            for ticket in list(self.work):
                ticket.post(Failed(server_error("the engine failed; see the server log")))

    def _quiet(self) -> bool:
        """Nothing runs and no store answer is due (shutdown waits for this)."""
        return not (self._running() or self.generations.releasing or self.loop.store_calls)

    def _admit(self) -> None:
        """Start waiting work in arrival order: completions' choices and streams' next jobs.
        Once one cannot have a slot, later work needing a slot waits too."""
        self.residency.give_up_asked()
        heads: list[tuple[int, Any]] = [*self.streams.heads(), *self.completions.heads()]
        slots_blocked = False
        for _, item in sorted(heads, key=lambda head: head[0]):
            if isinstance(item, CompletionRequest):
                if not slots_blocked and not self.completions.admit(item):
                    slots_blocked = True
            elif not self.streams.admit(item, slots_blocked):
                slots_blocked = True

    def _cancel(self, ticket: Ticket) -> None:
        """Let go of the request and tell its handler whether it may have changed anything."""
        ticket.cancelled = True
        work = self.work.pop(ticket, None)
        applied = None
        if isinstance(work, CompletionRequest):
            self.completions.cancel(work)
            applied = False
        elif work is not None:
            applied = self.streams.cancel(work)
        self.loop.send(ticket, Cancelled(applied))

    def _begin_stop(self) -> None:
        """Shutdown: everything not yet durable is cancelled (uvicorn's grace period for
        in-flight requests is over); the loop then waits for pending writes and spills."""
        self.stopping = True
        error = server_error("the server is shutting down", 503)
        self.completions.stop(error)
        for generation in list(self.generations.running.values()):
            self.generations.drop(generation, error)
        self.appends.stop(error)
        self.streams.stop(error)
