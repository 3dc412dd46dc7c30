"""A request's channel between the engine thread and the event loop, and what travels on it.

The engine thread posts events with `loop.call_soon_threadsafe` (it never waits on the loop);
the request's handler awaits them on the loop.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Union

from compressive_rt.serving.errors import ApiError


@dataclass(frozen=True)
class Started:
    """The engine began the request's work: it left the queue."""


@dataclass(frozen=True)
class Token:
    index: int  # the choice (prompt) it belongs to
    token: int


@dataclass(frozen=True)
class Finished:
    """A choice ended; `last_token` (if any) is its last token, not sent as a Token."""

    index: int
    finish_reason: str
    tokens: tuple[int, ...]  # every token the choice generated, the last one included
    last_token: int | None


@dataclass(frozen=True)
class Done:
    """The request is complete (durable, for a stream); `result` holds its answer's fields."""

    result: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Failed:
    error: ApiError


@dataclass(frozen=True)
class Cancelled:
    """The engine let go of a request it was told to cancel: `applied` False when it changed
    nothing, True when its write was under way (it may have been applied), None when the
    engine no longer knew the request (answered meanwhile, or one it does not track)."""

    applied: bool | None


Event = Union[Started, Token, Finished, Done, Failed, Cancelled]


def deliver(batch: list[tuple[Ticket, Event]]) -> None:
    """Hand many tickets' events to their event loop in one call (from any thread)."""
    loops: dict[asyncio.AbstractEventLoop, list[tuple[Ticket, Event]]] = {}
    for ticket, event in batch:
        loops.setdefault(ticket.loop, []).append((ticket, event))
    for loop, events in loops.items():
        try:
            loop.call_soon_threadsafe(_put_all, events)
        except RuntimeError:  # the loop is closed: the server is gone, nobody waits
            pass


def _put_all(events: list[tuple[Ticket, Event]]) -> None:
    for ticket, event in events:
        ticket.events.put_nowait(event)


class Ticket:
    """One request: events from the engine thread, awaited on the loop. `cancelled` is set (on
    the engine thread) once the engine has let go of the request."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.accepted = time.perf_counter()
        self.cancelled = False

    def post(self, event: Event) -> None:
        """From any thread."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop is closed: the server is gone, nobody waits
            pass

    async def next(self, deadline: float) -> Event:
        """The next event, or TimeoutError once `deadline` (time.perf_counter) has passed."""
        return await asyncio.wait_for(self.events.get(), max(deadline - time.perf_counter(), 0))
