"""The engine thread on a store that other servers use at the same time (a Ray Serve replica,
or several `ctrt serve` processes on one Redis store).

What changes against a store of its own (engine.py): the store, not this server, knows every
stream and its position. A stream this server has not seen may have been created by another
one (its first request takes it from the store, which answers 404 if it does not exist); the
position of a stream not resident here is read from the store. A stream is live in at most
one server: taking it fences out the previous holder (its writes get 409 and write nothing),
and a holder asked for a stream gives it up, spilling it as soon as no request of it runs, so
the taker resumes from a fresh snapshot rather than a long log. Every spill releases the
stream in the store, so a later taker need not ask.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from compressive_rt.serving.engine import Engine, log, store_failure
from compressive_rt.serving.jobs import StreamEntry
from compressive_rt.serving.metrics import Metrics
from compressive_rt.serving.settings import ServeSettings
from compressive_rt.serving.store import StreamStore, UnknownStream
from compressive_rt.serving.tickets import Done, Failed, Ticket

UNKNOWN = -1  # the position of a stream until this server takes it


class SharedStreamStore(StreamStore, Protocol):
    """What a store shared by several servers adds (redis_store.py has it)."""

    shared: bool

    def position(self, stream_id: str) -> int:
        """The stream's acknowledged position; UnknownStream if there is none."""

    def release(self, stream_id: str) -> None:
        """This server no longer holds the stream (if it was the last to take it)."""

    def on_release(self, listener: Any) -> None:
        """Call `listener(stream_id)` when another server asks for a stream held here."""


class SharedStoreEngine(Engine):
    """Engine on a SharedStreamStore; see the module doc."""

    def __init__(self, session: Any, store: SharedStreamStore, settings: ServeSettings,
                 metrics: Metrics) -> None:
        super().__init__(session, store, settings, metrics)
        self._asked: set[StreamEntry] = set()  # streams another server asked for
        # told (on the engine thread) of every stream given up: a router stops routing it here
        self.on_give_up: Callable[[str], None] | None = None
        store.on_release(self.give_up)

    # ---- what the store knows -----------------------------------------------------------
    def _entry(self, stream_id: str) -> StreamEntry:
        entry = self.streams.get(stream_id)
        if entry is None:  # perhaps created by another server: taking it will tell
            entry = self.streams[stream_id] = StreamEntry(stream_id, UNKNOWN, UNKNOWN)
        return entry

    def describe_stream(self, ticket: Ticket, stream_id: str) -> None:
        entry = self._entry(stream_id)
        if entry.slot is not None and not entry.loading:
            self._send(ticket, Done(self.stream_info(stream_id, True, entry.position)))
            return

        def known(position: Any, error: BaseException | None) -> None:
            if isinstance(error, UnknownStream):
                self._post(lambda: self._forget_unknown(entry))
            ticket.post(Failed(store_failure(error)) if error else
                        Done(self.stream_info(stream_id, False, position)))

        self._store(lambda store: store.position(stream_id), known)

    def _forget_unknown(self, entry: StreamEntry) -> None:
        if entry.slot is None and not entry.jobs and entry.current is None:
            self.streams.pop(entry.stream_id, None)

    def list_streams(self, ticket: Ticket) -> None:
        resident = {entry.stream_id: entry.position for entry in self._resident
                    if not entry.loading}

        def listed(positions: Any, error: BaseException | None) -> None:
            if error is not None:
                ticket.post(Failed(store_failure(error)))
                return
            ticket.post(Done({"object": "list", "data": [
                self.stream_info(stream_id, stream_id in resident,
                                 resident.get(stream_id, position))
                for stream_id, position in positions.items()]}))

        self._store(lambda store: store.positions(), listed)

    # ---- giving streams up --------------------------------------------------------------
    def give_up(self, stream_id: str) -> None:
        """Spill the stream as soon as no request of it runs (from any thread): what a
        replica's router does when it routes the stream elsewhere from now on."""
        self._post(lambda: self._asked_for(stream_id))

    def _asked_for(self, stream_id: str) -> None:
        if self.on_give_up is not None:
            self.on_give_up(stream_id)
        entry = self.streams.get(stream_id)
        if entry is None or entry.slot is None:  # not held here (any more): say so
            self._store(lambda store: store.release(stream_id), self._released)
            return
        self._asked.add(entry)

    def _admit(self) -> None:
        for entry in list(self._asked):
            if entry.slot is None:
                self._asked.discard(entry)
            elif entry.current is None and not entry.loading:
                self._asked.discard(entry)
                self._spill(entry)  # its queued requests take it back from the store
        super()._admit()

    def _spill(self, entry: StreamEntry) -> None:
        stream_id = entry.stream_id
        super()._spill(entry)
        self._store(lambda store: store.release(stream_id), self._released)

    @staticmethod
    def _released(_: Any, error: BaseException | None) -> None:
        if error is not None and not isinstance(error, UnknownStream):
            log.warning("a stream's release failed (%s): its next taker waits for it", error)
