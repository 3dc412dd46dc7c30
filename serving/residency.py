"""Which persistent streams hold a slot: loading a stream from the store into a granted slot
(restore its snapshot, replay its log), spilling an idle one (its snapshot stored unless the
store's is current) when the admission controller needs its slot or another server asks for
it, and releasing a slot without writing when a request fails."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from compressive_rt.errors import RuntimeInputError
from compressive_rt.serving.errors import store_failure
from compressive_rt.serving.jobs import AppendRun, StreamEntry
from compressive_rt.serving.ownership import Ownership, released
from compressive_rt.serving.store import StoredStream, StoreError, UnknownStream
from compressive_rt.serving.streams import PersistentStreams
from compressive_rt.serving.tickets import Failed

if TYPE_CHECKING:
    from compressive_rt.serving.engine import Engine

log = logging.getLogger("compressive_rt.serving")


class Residency:
    def __init__(self, core: Engine, ownership: Ownership) -> None:
        self.core, self.ownership = core, ownership
        self.resident: set[StreamEntry] = set()  # streams holding a slot
        self.asked: set[StreamEntry] = set()  # streams another server asked for
        # told (on the engine thread) of every stream given up: a router stops routing it here
        self.on_give_up: Callable[[str], None] | None = None
        ownership.listen(self.give_up)

    @property
    def streams(self) -> PersistentStreams:
        return self.core.streams

    def reclaim(self) -> bool:
        """Free a slot by spilling the least recently used idle stream; False if none is."""
        idle = [entry for entry in self.resident if entry.idle]
        if not idle:
            return False
        self._spill(min(idle, key=lambda entry: entry.last_used))
        return True

    def release(self, entry: StreamEntry) -> None:
        """Free the stream's slot without writing anything."""
        if entry.slot is not None:
            self.core.session.remove_stream(entry.slot)
        entry.slot = entry.claim = None
        self.resident.discard(entry)
        self.streams.count()

    def _spill(self, entry: StreamEntry) -> None:
        """Write an idle resident stream to the store (if the store's copy is behind) and free
        its slot. The store thread's order keeps a reload behind the write."""
        self.core.metrics.spills.inc()
        try:
            data = self.core.session.snapshot(entry.slot) \
                if entry.snapshot_position != entry.position else None
        except Exception:  # noqa: BLE001 - the store still holds every acknowledged token
            log.exception("stream %s: its snapshot failed; it reloads from its log",
                          entry.stream_id)
            data = None
        if data is not None:
            self.streams.store_snapshot(entry, data, entry.position)
        self.release(entry)
        release = self.ownership.release(entry.stream_id)
        if release is not None:
            self.core.loop.store(release, released)

    def spill_all(self) -> None:
        for entry in list(self.resident):
            self._spill(entry)

    def load(self, entry: StreamEntry) -> None:
        """Take the stream from the store into a granted slot (restore its snapshot, replay
        its log); its head job starts when that is done (one with an Idempotency-Key is told
        so only then, once its key is checked against the stream's receipts)."""
        if entry.jobs[0].key is None:
            self.streams.started(entry.jobs[0])
        entry.loading = True
        entry.slot = self.core.admission.take()
        self.resident.add(entry)
        self.streams.count()
        self.core.metrics.loads.inc()
        wait, take = self.ownership.taking(entry.stream_id)
        self.core.loop.store(take, lambda stored, error: self._taken(entry, stored, error),
                             wait)

    def _taken(self, entry: StreamEntry, stored: StoredStream | None,
               error: BaseException | None) -> None:
        if error is None and not self.core.stopping:
            entry.claim = self.ownership.claim(stored)
            entry.receipts = {receipt.key: receipt for receipt in stored.receipts}
            entry.position, entry.snapshot_position = stored.position, stored.snapshot_position
            try:
                if stored.snapshot is not None:
                    self.core.session.restore(stored.snapshot, entry.slot)
            except RuntimeInputError as exc:
                error = StoreError(f"the stored snapshot of stream {entry.stream_id} cannot be "
                                   f"restored: {exc}")
            else:
                if stored.tail:
                    log.info("stream %s: replaying %d logged tokens after its snapshot at %d",
                             entry.stream_id, len(stored.tail), stored.snapshot_position)
                    self.core.metrics.replayed_tokens.inc(len(stored.tail))
                    tokens = np.frombuffer(stored.tail, dtype=np.uint8).astype(np.int32)
                    self.core.appends.add(AppendRun(entry, tokens, None))
                else:
                    entry.loading = False
                return
        self.streams.abandon(entry, None, None)
        if isinstance(error, UnknownStream):
            self.streams.forget(entry)
        elif error is not None and entry.jobs:  # the job that asked for the load fails
            job = entry.jobs.popleft()
            self.core.work.pop(job.ticket, None)
            self.core.loop.send(job.ticket, Failed(store_failure(error)))

    def lost(self, stream_id: str) -> None:
        """Another server took the stream (a fenced read or write found out): a replica's
        router stops routing it here (the resident copy is dropped by the caller)."""
        if self.on_give_up is not None:
            self.on_give_up(stream_id)

    def give_up(self, stream_id: str) -> None:
        """Spill the stream as soon as no request of it runs (from any thread): another server
        asked for it, or a replica's router routes it elsewhere from now on."""
        self.core.loop.post(lambda: self._asked_for(stream_id))

    def _asked_for(self, stream_id: str) -> None:
        self.lost(stream_id)
        entry = self.streams.entries.get(stream_id)
        if entry is None or entry.slot is None:  # not held here (any more): say so
            release = self.ownership.release(stream_id)
            if release is not None:
                self.core.loop.store(release, released)
            return
        self.asked.add(entry)

    def give_up_asked(self) -> None:
        """Spill the streams asked for whose requests are done (queued ones re-take them)."""
        for entry in list(self.asked):
            if entry.slot is None:
                self.asked.discard(entry)
            elif entry.current is None and not entry.loading:
                self.asked.discard(entry)
                self._spill(entry)
