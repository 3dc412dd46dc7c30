"""One request's life on the event loop: the queue slot it holds until the engine starts it,
its deadline, its events, and cancelling it when the client leaves or its time runs out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from starlette.requests import Request

from compressive_rt.serving.engine import Engine
from compressive_rt.serving.errors import ApiError
from compressive_rt.serving.idempotency import HEADER
from compressive_rt.serving.metrics import Metrics
from compressive_rt.serving.settings import ServeSettings
from compressive_rt.serving.tickets import Cancelled, Done, Event, Failed, Started, Ticket

T = TypeVar("T")
VERDICT_WAIT_S = 30.0  # a timed-out request: how long the engine may take to say what it undid


def timed_out(timeout_s: float, applied: bool | None, key: str | None) -> ApiError:
    """The 504 of a request cancelled at its deadline, saying whether it may have been
    applied (and how to retry it safely)."""
    took = f"the request took longer than {timeout_s:g} s (--request-timeout)"
    if applied is False:
        return ApiError(504, f"{took} and was cancelled before it changed anything: it can be "
                             f"sent again as it is", "timeout_error", code="timeout")
    if key is not None:
        retry = f"retry with the same Idempotency-Key {key!r}: if it was applied, the retry " \
                f"gets its answer and applies nothing"
    else:
        retry = "read the stream (GET /v1/streams/{id}) before sending it again, or send " \
                "requests with an Idempotency-Key header, which makes retries safe"
    return ApiError(504, f"{took}; it was cancelled while its write was under way, so it may "
                         f"have been applied: {retry}", "timeout_error",
                    code="timeout_may_have_applied")


class ClientGone(Exception):
    """The client disconnected before its answer; nothing can be sent."""


class RequestQueue:
    """Requests accepted and not yet started by the engine, at most `capacity`; beyond it
    a request is refused at once with 429 and Retry-After. Used on the event loop only."""

    def __init__(self, capacity: int, retry_after_s: int, metrics: Metrics) -> None:
        self.capacity, self.retry_after_s, self.metrics = capacity, retry_after_s, metrics
        self.waiting = 0

    def enter(self) -> None:
        if self.waiting >= self.capacity:
            raise ApiError(429, f"the server's queue is full ({self.capacity} requests wait for "
                                f"the engine, --queue-size): retry after {self.retry_after_s} s",
                           "rate_limit_error", code="queue_full",
                           headers={"Retry-After": str(self.retry_after_s)})
        self.waiting += 1
        self.metrics.queue_depth.set(self.waiting)

    def leave(self) -> None:
        self.waiting -= 1
        self.metrics.queue_depth.set(self.waiting)


class Exchange:
    """Events of one engine request until Done or Failed. `queued` requests take a place in
    the queue until the engine says Started. A timeout (504) or a client that leaves cancels
    the request in the engine."""

    def __init__(self, engine: Engine, settings: ServeSettings, queue: RequestQueue | None,
                 request: Request) -> None:
        self.engine, self.queue, self.request = engine, queue, request
        self.ticket = Ticket(asyncio.get_running_loop())
        self.deadline = self.ticket.accepted + settings.request_timeout_s
        self.timeout_s = settings.request_timeout_s
        self.key = request.headers.get(HEADER.lower())
        self.finished = False
        self.in_queue = False
        if queue is not None:
            queue.enter()
            self.in_queue = True

    def _left_queue(self) -> None:
        if self.in_queue:
            self.in_queue = False
            self.queue.leave()

    async def _next(self) -> Event:
        try:
            event = await self.ticket.next(self.deadline)
        except TimeoutError:
            event = await self._cancelled_at_deadline()
        if isinstance(event, Started):
            self._left_queue()
        elif isinstance(event, (Done, Failed)):
            self._left_queue()
            self.finished = True
            if isinstance(event, Failed):
                raise event.error
        return event

    async def _cancelled_at_deadline(self) -> Event:
        """Cancel the request and wait for the engine's verdict: a Failed with the 504 that
        says whether it may have been applied, or the request's own Done or Failed if it
        ended meanwhile."""
        self.finished = True
        self.engine.cancel(self.ticket)
        deadline = time.perf_counter() + VERDICT_WAIT_S
        while True:
            try:
                event = await self.ticket.next(deadline)
            except TimeoutError:  # the engine does not answer (it failed): assume the worst
                return Failed(timed_out(self.timeout_s, None, self.key))
            if isinstance(event, Cancelled):
                return Failed(timed_out(self.timeout_s, event.applied, self.key))
            if isinstance(event, (Done, Failed)):
                return event

    def close(self) -> None:
        """Let go: if the request has not finished, the engine cancels it."""
        self._left_queue()
        if not self.finished:
            self.finished = True
            self.engine.cancel(self.ticket)

    async def events(self) -> AsyncIterator[Event]:
        """Every event after Started up to Done (inclusive); a Failed raises its error."""
        try:
            while True:
                event = await self._next()
                if not isinstance(event, Started):
                    yield event
                if isinstance(event, Done):
                    return
        finally:
            self.close()

    async def started(self) -> None:
        """Wait until the engine starts the request (its first event; a refusal raises), so
        that a streamed answer's status is known before its first byte."""
        await self._watching(self._next())

    async def collect(self) -> list[Event]:
        """Every event up to Done, while watching for the client leaving."""
        async def gather() -> list[Event]:
            return [event async for event in self.events()]
        return await self._watching(gather())

    async def _watching(self, work: Awaitable[T]) -> T:
        task = asyncio.ensure_future(work)
        watch = asyncio.ensure_future(disconnected(self.request))
        try:
            done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
        if task in done:
            return task.result()
        task.cancel()
        self.close()
        raise ClientGone()


async def disconnected(request: Request) -> None:
    """Returns when the client has disconnected."""
    while (await request.receive())["type"] != "http.disconnect":
        pass

