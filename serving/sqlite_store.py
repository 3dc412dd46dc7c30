"""The local stream store: one SQLite database in WAL mode in a directory.

Why SQLite rather than a folder of files: a checkpoint is several writes that must happen
together (the new snapshot, the log records it covers dropped, the position), and fencing is a
compare-and-set on a stream's version; in SQLite each is one transaction (`UPDATE ... WHERE
version = ?`), atomic and durable by SQLite's own tested recovery rather than by a protocol
of renames and fsyncs of our own. WAL mode lets a commit append to one log file; with
`synchronous=FULL` every commit is fsync'ed before it returns, so a returned `append` survives
kill -9 and power loss. The cost: a snapshot is written twice (to the WAL, then checkpointed
into the database), measured by `ctrt bench --serve`.

An exclusive lock on `DIR/lock` keeps a second process off the same store.
"""

from __future__ import annotations

import fcntl
import sqlite3
from pathlib import Path

from compressive_rt.serving.store import (
    Receipt,
    StoredStream,
    StoreError,
    check_identity,
    exists,
    gap,
    joined_log,
    stale,
    unknown,
)

DATABASE = "streams.sqlite3"
LOCK = "lock"
SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS streams (
    id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    position INTEGER NOT NULL,
    snapshot BLOB,
    snapshot_position INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS wal (
    stream TEXT NOT NULL,
    start INTEGER NOT NULL,
    tokens BLOB NOT NULL,
    PRIMARY KEY (stream, start)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS receipts (
    stream TEXT NOT NULL,
    start INTEGER NOT NULL,
    key TEXT NOT NULL,
    digest TEXT NOT NULL,
    answer TEXT NOT NULL,
    PRIMARY KEY (stream, start)
) WITHOUT ROWID;
"""


class SQLiteStore:
    """StreamStore on `directory` (created if missing) for the engine named by `engine_key`
    (a store holds the streams of one engine: its snapshots fit no other)."""

    def __init__(self, directory: str | Path, engine_key: str) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock = (self.directory / LOCK).open("a")
        except OSError as exc:
            raise StoreError(f"cannot open the stream store {self.directory}: "
                             f"{exc.strerror}") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise StoreError(f"the stream store {self.directory} is in use by another process "
                             f"(another ctrt serve?): give each server its own --store") from None
        try:
            self._db = sqlite3.connect(self.directory / DATABASE, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            self._check_owner(engine_key)
        except sqlite3.Error as exc:
            self.close()
            raise StoreError(f"the stream store {self.directory} cannot be used: {exc}") from None
        except StoreError:
            self.close()
            raise

    def _check_owner(self, engine_key: str) -> None:
        rows = dict(self._db.execute("SELECT key, value FROM meta"))
        if not rows:
            with self._transaction():
                self._db.executemany("INSERT INTO meta VALUES (?, ?)",
                                     [("schema_version", str(SCHEMA_VERSION)),
                                      ("engine", engine_key)])
            return
        check_identity(f"the stream store {self.directory}", rows.get("schema_version"),
                       str(SCHEMA_VERSION), rows.get("engine"), engine_key,
                       "give this engine its own --store")

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db, self.directory)

    # ---- StreamStore ---------------------------------------------------------------------
    def create(self, stream_id: str) -> None:
        with self._transaction():
            try:
                self._db.execute("INSERT INTO streams VALUES (?, 0, 0, NULL, 0)", (stream_id,))
            except sqlite3.IntegrityError:
                raise exists(stream_id) from None

    def positions(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT id, position FROM streams"))

    def take(self, stream_id: str) -> StoredStream:
        with self._transaction():
            row = self._db.execute(
                "UPDATE streams SET version = version + 1 WHERE id = ? "
                "RETURNING version, position, snapshot, snapshot_position",
                (stream_id,)).fetchone()
            if row is None:
                raise unknown(stream_id)
            version, position, snapshot, snapshot_position = row
            records = self._db.execute(
                "SELECT start, tokens FROM wal WHERE stream = ? ORDER BY start",
                (stream_id,)).fetchall()
            receipts = self._db.execute(
                "SELECT key, digest, answer FROM receipts WHERE stream = ? ORDER BY start",
                (stream_id,)).fetchall()
        return StoredStream(stream_id, version, position, snapshot, snapshot_position,
                            joined_log(stream_id, snapshot_position, records),
                            tuple(Receipt(*row) for row in receipts))

    def append(self, stream_id: str, version: int, start: int, tokens: bytes,
               receipt: Receipt | None = None, keep: int = 0,
               snapshot: bytes | None = None) -> None:
        with self._transaction():
            updated = self._db.execute(
                "UPDATE streams SET position = position + ? "
                "WHERE id = ? AND version = ? AND position = ?",
                (len(tokens), stream_id, version, start)).rowcount
            if not updated:
                self._refuse(stream_id, version, start)
            if snapshot is None:
                self._db.execute("INSERT INTO wal VALUES (?, ?, ?)", (stream_id, start, tokens))
            else:
                self._db.execute("UPDATE streams SET snapshot = ?, snapshot_position = ? "
                                 "WHERE id = ?", (snapshot, start + len(tokens), stream_id))
                self._db.execute("DELETE FROM wal WHERE stream = ?", (stream_id,))
            if receipt is not None:
                self._db.execute("INSERT INTO receipts VALUES (?, ?, ?, ?, ?)",
                                 (stream_id, start, receipt.key, receipt.digest, receipt.answer))
                self._db.execute(
                    "DELETE FROM receipts WHERE stream = ? AND start NOT IN (SELECT start "
                    "FROM receipts WHERE stream = ? ORDER BY start DESC LIMIT ?)",
                    (stream_id, stream_id, keep))

    def put_snapshot(self, stream_id: str, version: int, position: int, snapshot: bytes) -> None:
        with self._transaction():
            updated = self._db.execute(
                "UPDATE streams SET snapshot = ?, snapshot_position = ?, position = ? "
                "WHERE id = ? AND version = ?",
                (snapshot, position, position, stream_id, version)).rowcount
            if not updated:
                self._refuse(stream_id, version)
            self._db.execute("DELETE FROM wal WHERE stream = ?", (stream_id,))

    def delete(self, stream_id: str) -> None:
        with self._transaction():
            if not self._db.execute("DELETE FROM streams WHERE id = ?", (stream_id,)).rowcount:
                raise unknown(stream_id)
            self._db.execute("DELETE FROM wal WHERE stream = ?", (stream_id,))
            self._db.execute("DELETE FROM receipts WHERE stream = ?", (stream_id,))

    def close(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()
            self._db = None
        if not self._lock.closed:
            self._lock.close()  # releases the flock

    def _refuse(self, stream_id: str, version: int, start: int | None = None) -> None:
        """Why a conditional write matched no row; raises."""
        row = self._db.execute("SELECT version, position FROM streams WHERE id = ?",
                               (stream_id,)).fetchone()
        if row is None:
            raise unknown(stream_id)
        if row[0] != version:
            raise stale(stream_id, row[0], version)
        raise gap(stream_id, start, row[1])


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (rolled back on any error); sqlite3 errors become StoreError."""

    def __init__(self, db: sqlite3.Connection, directory: Path) -> None:
        self.db, self.directory = db, directory

    def __enter__(self) -> None:
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"the stream store {self.directory} cannot be written: {exc}") \
                from None

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: object) -> None:
        if kind is None:
            try:
                self.db.execute("COMMIT")
                return
            except sqlite3.Error as error:
                exc = error
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise StoreError(f"the stream store {self.directory} cannot be written: {exc}") \
                from None

