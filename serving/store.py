"""The durable stream store: what a server needs to keep streams past its own life.

A stream is durable as a snapshot (the runtime's format, runtime/snapshot.py) at some position
plus a write-ahead log of the tokens acknowledged after it. An append is acknowledged only
after `append` returned (its record is on disk); `put_snapshot` replaces the log it covers.

Fencing (for several servers on one store): every stream has a version. A server `take`s a
stream before it serves it, which increments the version and hands the new one to that server;
every write carries the version and is a compare-and-set on it. A server that lost its claim
(another took the stream since) gets StaleVersion and has written nothing.

`SQLiteStore` (serving/sqlite_store.py) is the local implementation. Every method is called
from one thread at a time (serving/store_worker.py's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from compressive_rt.errors import CtrtError


class StoreError(CtrtError):
    """The store cannot be read or written; the message says which store and why."""


class UnknownStream(StoreError):
    """No stream of that id in the store."""


class StaleVersion(StoreError):
    """A write carried a version the stream no longer has: another server took it since."""


@dataclass(frozen=True)
class Claim:
    """A server's hold on a stream it took: the version every write of it carries and, for a
    lease (a store shared with other servers), until when (time.monotonic) it may answer from
    its resident copy without asking the store; None: until another server takes it."""

    version: int
    expires_at: float | None = None


@dataclass(frozen=True)
class StoredStream:
    """A stream as the store holds it, handed to the server that took it."""

    stream_id: str
    version: int  # the taker's version: every write it makes carries it
    position: int  # acknowledged tokens
    snapshot: bytes | None  # the stream at snapshot_position, or None (an empty stream)
    snapshot_position: int
    tail: bytes  # the acknowledged tokens after snapshot_position, in order

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

    def append(self, stream_id: str, version: int, start: int, tokens: bytes) -> None:
        """Log `tokens` acknowledged at position `start` (the stream's position), durably."""

    def put_snapshot(self, stream_id: str, version: int, position: int, snapshot: bytes) -> None:
        """Make `snapshot` (at `position`) the stream's whole durable state, durably: the log
        it covers is dropped. Used for checkpoints, spills and uploaded snapshots."""

    def delete(self, stream_id: str) -> None:
        """Remove the stream and everything stored for it."""

    def close(self) -> None:
        """Release the store (files, locks)."""
