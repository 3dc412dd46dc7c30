"""The durable stream store: what a server needs to keep streams past its own life.

A stream is durable as a snapshot (the runtime's format, runtime/snapshot.py) at some position
plus a write-ahead log of the tokens acknowledged after it. An append is acknowledged only
after `append` returned (its record is on disk); `put_snapshot` replaces the log it covers.

Fencing (for several servers on one store): every stream has a version. A server `take`s a
stream before it serves it, which increments the version and hands the new one to that server;
every write carries the version and is a compare-and-set on it. A server that lost its claim
(another took the stream since) gets StaleVersion and has written nothing.

Namespaces (serving/namespaces.py): a store keeps each engine's streams apart; an open store
works in the namespace of its server's engine, and every method below reads and writes only
there. A stream moved to another namespace (`ctrt store migrate`) is StreamMoved here.

`SQLiteStore` (serving/sqlite_store.py) is the local implementation, `RedisStore`
(serving/redis_store.py) the shared one. Every method is called from one thread at a time
(serving/store_worker.py's).
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from compressive_rt.errors import CtrtError


def server_name() -> str:
    """A server's name when it is given none: its host name and a random suffix. The one name
    of a server, as a stream's holder, in its metrics' `replica` label and in its access log
    (a Ray replica's is its replica id, what X-Ctrt-Replica says)."""
    return f"{socket.gethostname()}-{secrets.token_hex(6)}"


class StoreError(CtrtError):
    """The store cannot be read or written; the message says which store and why."""


class StoreFull(StoreError):
    """The store reached its bound: nothing was written; deleting streams makes room."""


class UnknownStream(StoreError):
    """No stream of that id in the store."""


class StaleVersion(StoreError):
    """A write carried a version the stream no longer has: another server took it since."""


class StreamMoved(StaleVersion):
    """The stream was moved to another engine's namespace (`ctrt store migrate`): a server of
    that engine serves it now; this one writes nothing (409, like any server taken from)."""


# ---- the contract's refusals, worded once for every store ----------------------------------
def unknown(stream_id: str) -> UnknownStream:
    return UnknownStream(f"no stream {stream_id} in the store")


def stale(stream_id: str, stored_version: object, version: int | None) -> StaleVersion:
    return StaleVersion(f"stream {stream_id} was taken by another server (version "
                        f"{stored_version}, this server holds {version}): nothing was written")


def moved(stream_id: str, target: str) -> StreamMoved:
    return StreamMoved(f"stream {stream_id} was moved to another engine's namespace {target} "
                       f"(ctrt store migrate): send it to a server of that engine; nothing "
                       f"was written")


def gap(stream_id: str, start: int | None, stored_position: object) -> StoreError:
    return StoreError(f"stream {stream_id}: a record at position {start} does not follow its "
                      f"stored position {stored_position}")


def exists(stream_id: str) -> StoreError:
    return StoreError(f"stream {stream_id} exists already")


def joined_log(stream_id: str, snapshot_position: int,
               records: Iterable[tuple[int, bytes]]) -> bytes:
    """The tokens of a stream's log records (start, tokens), checked to follow each other
    from the snapshot's position on."""
    expected, tail = snapshot_position, bytearray()
    for start, tokens in records:
        if start != expected:
            raise StoreError(f"stream {stream_id}: its log has a record at {start} where "
                             f"{expected} was due: the store is inconsistent")
        tail += tokens
        expected += len(tokens)
    return bytes(tail)


@dataclass(frozen=True)
class Claim:
    """A server's hold on a stream it took: the version every write of it carries and, for a
    lease (a store shared with other servers), until when (time.monotonic) it may answer from
    its resident copy without asking the store; None: until another server takes it."""

    version: int
    expires_at: float | None = None


@dataclass(frozen=True)
class Receipt:
    """What a write made with an Idempotency-Key leaves: the key, its request body's digest and
    the answer it got (JSON text), kept with the write in one transaction, in a table of their
    own (the log is cut at every checkpoint); a store keeps a stream's latest few."""

    key: str
    digest: str
    answer: str


@dataclass(frozen=True)
class StoredStream:
    """A stream as the store holds it, handed to the server that took it."""

    stream_id: str
    version: int  # the taker's version: every write it makes carries it
    position: int  # acknowledged tokens
    snapshot: bytes | None  # the stream at snapshot_position, or None (an empty stream)
    snapshot_position: int
    tail: bytes  # the acknowledged tokens after snapshot_position, in order
    receipts: tuple[Receipt, ...] = ()  # the stream's kept receipts, oldest first

    def __post_init__(self) -> None:
        if self.snapshot_position + len(self.tail) != self.position:
            raise StoreError(
                f"stream {self.stream_id}: snapshot at {self.snapshot_position} + "
                f"{len(self.tail)} logged tokens != position {self.position}: the store is "
                f"inconsistent")


class StreamStore(Protocol):
    """The store interface; tokens are bytes (the served engines are byte-level)."""

    def create(self, stream_id: str) -> None:
        """A new empty stream (version 0, position 0)."""

    def positions(self) -> dict[str, int]:
        """Every stream's id and acknowledged position."""

    def take(self, stream_id: str) -> StoredStream:
        """Claim the stream: increments its version and returns it with its durable state."""

    def append(self, stream_id: str, version: int, start: int, tokens: bytes,
               receipt: Receipt | None = None, keep: int = 0,
               snapshot: bytes | None = None) -> None:
        """Log `tokens` acknowledged at position `start` (the stream's position), durably; with
        `receipt`, keep it in the same transaction, and only the stream's latest `keep`; with
        `snapshot` (the stream after these tokens), make it the stream's snapshot in the same
        transaction instead of logging them (the log it covers is dropped)."""

    def put_snapshot(self, stream_id: str, version: int, position: int, snapshot: bytes) -> None:
        """Make `snapshot` (at `position`) the stream's whole durable state, durably: the log
        it covers is dropped. Used for checkpoints, spills and uploaded snapshots."""

    def delete(self, stream_id: str) -> None:
        """Remove the stream and everything stored for it (its receipts too)."""

    def close(self) -> None:
        """Release the store (files, locks)."""
