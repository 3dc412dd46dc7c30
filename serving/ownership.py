"""Stream ownership: how a server holds the streams of its store, a strategy handed to the
serving core (engine.py) rather than a subclass of it.

- `LocalOwnership`: a store of this server's own (SQLite). The server knows every stream and
  its position; a stream it took stays its own until it spills it.
- `SharedOwnership`: a store that other servers use at the same time (Redis; a Ray Serve
  replica, or several `ctrt serve` processes). The store, not this server, knows every stream
  and its position; a stream is live in at most one server: taking it fences out the previous
  holder (its writes get 409 and write nothing), and a holder asked for a stream gives it up,
  spilling it as soon as no request of it runs, so the taker resumes from a fresh snapshot
  rather than a long log. Every spill releases the stream in the store.

Fenced reads: on a shared store a resident copy answers a read (a stream's description, its
snapshot, a generation's first token) only once `check` (one read of the stream's version in
the store) shows its claim is still the stream's: a holder paused while another took its
stream never answers from its stale copy; it drops the copy and answers from the store (a
description) or takes the stream again (a snapshot, a generation). `current(claim)` leaves
room for leases (a claim that expires unless renewed); neither strategy expires claims today.

Taking a stream another server holds waits (bounded) for that holder to give it up. The wait
(`ask_holder`) runs off the store thread, one waiter per stream being taken, so a take never
holds up this server's own releases, acknowledgements or other streams; the take itself then
runs on the store thread, after every operation submitted before it (a load after a spill
sees the spill).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from compressive_rt.serving.store import Claim, StoredStream, StreamStore, UnknownStream
from compressive_rt.serving.store_worker import Operation

log = logging.getLogger("compressive_rt.serving")

Release = Callable[[StreamStore], None]  # a store operation run after a spill
Wait = Callable[[], None]  # a blocking wait run off the store thread


class Ownership(Protocol):
    knows_every_stream: bool  # the server's own table is the truth (else: ask the store)

    def claim(self, stored: StoredStream) -> Claim:
        """The hold a successful take gives this server."""

    def current(self, claim: Claim) -> bool:
        """May the resident copy held with `claim` answer a read now (without the store)?"""

    def check(self, stream_id: str) -> Operation | None:
        """The store read a resident copy's read waits for (None: none is needed): it
        returns the stream's (version, position, holder)."""

    def taking(self, stream_id: str) -> tuple[Wait | None, Operation]:
        """How to take the stream: a wait for its holder (off the store thread), then the
        take on the store thread."""

    def release(self, stream_id: str) -> Release | None:
        """What to tell the store once the stream is spilled (None: nothing)."""

    def listen(self, asked: Callable[[str], None]) -> None:
        """Call `asked(stream_id)` (from any thread) when another server asks for a stream."""

    def reachable(self) -> bool:
        """Can the store be reached (as last seen, without asking it now)?"""


class LocalOwnership:
    """A store of this server's own; see the module doc."""

    knows_every_stream = True

    def claim(self, stored: StoredStream) -> Claim:
        return Claim(stored.version)

    def current(self, claim: Claim) -> bool:
        return True

    def check(self, stream_id: str) -> Operation | None:
        return None

    def taking(self, stream_id: str) -> tuple[Wait | None, Operation]:
        return None, lambda store: store.take(stream_id)

    def release(self, stream_id: str) -> Release | None:
        return None

    def listen(self, asked: Callable[[str], None]) -> None:
        """Nobody else uses the store: nobody asks."""

    def reachable(self) -> bool:
        return True  # a local store's failures are its writes' own errors


class SharedStreamStore(StreamStore, Protocol):
    """What a store shared by several servers adds (redis_store.py has it)."""

    shared: bool

    def position(self, stream_id: str) -> int:
        """The stream's acknowledged position; UnknownStream if there is none."""

    def standing(self, stream_id: str) -> tuple[int, int, str | None]:
        """The stream's version, acknowledged position and holder; UnknownStream if none."""

    def ask_holder(self, stream_id: str) -> None:
        """Ask the stream's holder (if another server) to give it up; wait (bounded)."""

    def take(self, stream_id: str, ask_holder: bool = True) -> StoredStream:
        """StreamStore's take; `ask_holder=False` when `ask_holder` ran already."""

    def release(self, stream_id: str) -> None:
        """This server no longer holds the stream (if it was the last to take it)."""

    def on_release(self, listener: Any) -> None:
        """Call `listener(stream_id)` when another server asks for a stream held here."""

    reachable: bool  # its last lease renewal succeeded


class SharedOwnership:
    """A store other servers use too; see the module doc. `lease_s` (None: no lease) bounds how
    long a claim lets the resident copy answer reads without the store."""

    knows_every_stream = False

    def __init__(self, store: SharedStreamStore, lease_s: float | None = None) -> None:
        self.store, self.lease_s = store, lease_s

    def claim(self, stored: StoredStream) -> Claim:
        expires = None if self.lease_s is None else time.monotonic() + self.lease_s
        return Claim(stored.version, expires)

    def current(self, claim: Claim) -> bool:
        return claim.expires_at is None or time.monotonic() < claim.expires_at

    def check(self, stream_id: str) -> Operation | None:
        return lambda store: store.standing(stream_id)

    def taking(self, stream_id: str) -> tuple[Wait | None, Operation]:
        return (lambda: self.store.ask_holder(stream_id),
                lambda store: store.take(stream_id, ask_holder=False))

    def release(self, stream_id: str) -> Release | None:
        return lambda store: store.release(stream_id)

    def listen(self, asked: Callable[[str], None]) -> None:
        self.store.on_release(asked)

    def reachable(self) -> bool:
        return self.store.reachable


def ownership_of(store: StreamStore) -> Ownership:
    """The strategy a store calls for: shared if other servers use it too."""
    return SharedOwnership(store) if getattr(store, "shared", False) else LocalOwnership()


def released(_: Any, error: BaseException | None) -> None:
    """The answer to a release: a failure only delays the next taker (its bounded wait)."""
    if error is not None and not isinstance(error, UnknownStream):
        log.warning("a stream's release failed (%s): its next taker waits for it", error)
