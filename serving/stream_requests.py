"""Persistent streams' requests that need no slot: create (within --max-stored-streams),
describe and list. On a shared store a description is a fenced read: the store's version says
whether the resident copy is still the stream's (`still_held`)."""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING, Any

from compressive_rt.serving.errors import StreamLimitReached, store_failure, too_many_streams
from compressive_rt.serving.jobs import StreamEntry
from compressive_rt.serving.store import StreamStore, UnknownStream
from compressive_rt.serving.tickets import Done, Failed, Ticket

if TYPE_CHECKING:
    from compressive_rt.serving.streams import PersistentStreams

log = logging.getLogger("compressive_rt.serving")


def create_within(store: StreamStore, stream_id: str, limit: int) -> None:
    """Create the stream unless the store holds `limit` streams already (a store shared with
    other servers: only it knows them all)."""
    if len(store.positions()) >= limit:
        raise StreamLimitReached(limit)
    store.create(stream_id)


def create(streams: PersistentStreams, ticket: Ticket) -> None:
    """A new stream, within --max-stored-streams (counting creates under way)."""
    stream_id, limit = f"st_{secrets.token_hex(12)}", streams.core.settings.max_stored_streams
    if streams.ownership.knows_every_stream:
        if len(streams.entries) + streams.creating >= limit:
            raise too_many_streams(limit)

        def operation(store: StreamStore) -> None:
            store.create(stream_id)
    else:
        def operation(store: StreamStore) -> None:
            create_within(store, stream_id, limit)
    streams.creating += 1

    def created(_: Any, error: BaseException | None) -> None:
        streams.creating -= 1
        if error is not None:
            streams.send(ticket, Failed(store_failure(error)))
            return
        streams.entries[stream_id] = StreamEntry(stream_id, 0, 0)
        streams.count()
        streams.send(ticket, Done(streams.info(stream_id, False, 0)))

    streams.core.loop.store(operation, created)


def describe(streams: PersistentStreams, ticket: Ticket, stream_id: str) -> None:
    """The stream's position: this server's record on a store of its own; on a shared
    store, the store's (a fenced read: the resident copy counts only if its claim is still
    the stream's), with the name of the server holding it (None: none does)."""
    entry = streams.entry_for(stream_id)
    check = streams.ownership.check(stream_id)
    if check is None:
        streams.send(ticket, Done(streams.info(stream_id, entry.slot is not None,
                                               entry.position)))
        return

    def read(found: Any, error: BaseException | None) -> None:
        if isinstance(error, UnknownStream) and entry.slot is None and not entry.jobs \
                and entry.current is None:
            streams.entries.pop(stream_id, None)
        if error is not None:
            streams.send(ticket, Failed(store_failure(error)))
            return
        version, position, holder = found
        held = still_held(streams, entry, version)
        streams.send(ticket, Done({**streams.info(stream_id, held, position), "holder": holder}))

    streams.core.loop.store(check, read)


def still_held(streams: PersistentStreams, entry: StreamEntry, version: int) -> bool:
    """After a read of the stream's version in the store: is the resident copy the
    current one? A stale one (another server took the stream since) is dropped unless a
    request of it runs (whose write the store refuses); its next job takes it again."""
    if entry.slot is None or entry.loading or entry.claim is None:
        return False
    if entry.claim.version == version:
        return True
    log.info("stream %s: taken by another server (version %d, this server held %d); "
             "its resident copy is dropped", entry.stream_id, version, entry.claim.version)
    if entry.current is None and not entry.releasing:
        streams.core.residency.release(entry)
    streams.core.residency.lost(entry.stream_id)
    return False


def list_streams(streams: PersistentStreams, ticket: Ticket) -> None:
    """Every stream; on a shared store with the store's positions, `resident` being this
    server's view (a description checks it)."""
    if streams.ownership.knows_every_stream:
        streams.send(ticket, Done({"object": "list", "data": [
            streams.info(entry.stream_id, entry.slot is not None, entry.position)
            for entry in streams.entries.values()]}))
        return

    def listed(positions: Any, error: BaseException | None) -> None:
        if error is not None:
            streams.send(ticket, Failed(store_failure(error)))
            return
        resident = {entry.stream_id for entry in streams.core.residency.resident
                    if not entry.loading}
        streams.send(ticket, Done({"object": "list", "data": [
            streams.info(stream_id, stream_id in resident, position)
            for stream_id, position in positions.items()]}))

    streams.core.loop.store(lambda store: store.positions(), listed)
