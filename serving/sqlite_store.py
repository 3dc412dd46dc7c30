"""The local stream store: one SQLite database in WAL mode in a directory.

Why SQLite rather than a folder of files: a checkpoint is several writes that must happen
together (the new snapshot, the log records it covers dropped, the position), and fencing is a
compare-and-set on a stream's version; in SQLite each is one transaction (`UPDATE ... WHERE
version = ?`), atomic and durable by SQLite's own tested recovery rather than by a protocol
of renames and fsyncs of our own. WAL mode lets a commit append to one log file; with
`synchronous=FULL` every commit is fsync'ed before it returns, so a returned `append` survives
kill -9 and power loss. The cost: a snapshot is written twice (to the WAL, then checkpointed
into the database), measured by `ctrt bench --serve`.

Size: the database is bounded (`max_page_count`, from `max_bytes`; by default 90% of what the
store holds plus the disk's free space when it opens), so that it reports "full" (StoreFull)
while the disk still has room for what a DELETE writes (its WAL pages). Freed pages are given
back to the file system: `auto_vacuum=INCREMENTAL` and an incremental vacuum after every write
that frees pages (a delete, a snapshot that replaces a log); a store written before this (no
auto_vacuum) is rewritten once by VACUUM when it is opened.

An exclusive lock on `DIR/lock` keeps a second process off the same store.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import sqlite3
from pathlib import Path

from compressive_rt.serving.store import (
    Receipt,
    StoredStream,
    StoreError,
    StoreFull,
    check_identity,
    exists,
    gap,
    joined_log,
    stale,
    unknown,
)

log = logging.getLogger("compressive_rt.serving")

DATABASE = "streams.sqlite3"
LOCK = "lock"
SCHEMA_VERSION = 2  # 1: the snapshot in the streams row (rewritten by every take and append)
INCREMENTAL = 2  # PRAGMA auto_vacuum's value for INCREMENTAL
DISK_SHARE = 0.9  # the default bound: of (what the store holds + the disk's free space)
WAL_LIMIT_BYTES = 16 << 20  # the WAL file is truncated back to this after a checkpoint
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS streams (
    id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    position INTEGER NOT NULL,
    snapshot_position INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (stream TEXT PRIMARY KEY, data BLOB NOT NULL);
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
# version 1 kept each snapshot in its streams row, which every take and append rewrote whole
MIGRATE_FROM_1 = """
CREATE TABLE IF NOT EXISTS snapshots (stream TEXT PRIMARY KEY, data BLOB NOT NULL);
INSERT INTO snapshots SELECT id, snapshot FROM streams WHERE snapshot IS NOT NULL;
CREATE TABLE streams_2 (
    id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    position INTEGER NOT NULL,
    snapshot_position INTEGER NOT NULL
);
INSERT INTO streams_2 SELECT id, version, position, snapshot_position FROM streams;
DROP TABLE streams;
ALTER TABLE streams_2 RENAME TO streams;
UPDATE meta SET value = '2' WHERE key = 'schema_version'
"""


class SQLiteStore:
    """StreamStore on `directory` (created if missing) for the engine named by `engine_key`
    (a store holds the streams of one engine: its snapshots fit no other), its database at
    most `max_bytes` (None: 90% of what it holds plus the disk's free space)."""

    def __init__(self, directory: str | Path, engine_key: str,
                 max_bytes: int | None = None) -> None:
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
            written_before = self._db.execute("PRAGMA auto_vacuum").fetchone()[0] != INCREMENTAL
            if not self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                # a new database: before WAL mode writes its first page
                self._db.execute(f"PRAGMA auto_vacuum={INCREMENTAL}")
                written_before = False
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
            self._db.executescript(SCHEMA)
            self.max_bytes = self._bound(max_bytes)
            self._check_owner(engine_key)
            if written_before:
                self._reclaim_freed_pages()
        except sqlite3.Error as exc:
            self.close()
            raise StoreError(f"the stream store {self.directory} cannot be used: {exc}") from None
        except StoreError:
            self.close()
            raise

    def _reclaim_freed_pages(self) -> None:
        """A database written without auto_vacuum (by a server before this version) is
        rewritten once with it (VACUUM needs the database's size again, free, for a moment)."""
        log.info("the stream store %s: rewriting it once so that freed space is given back "
                 "(auto_vacuum)", self.directory)
        self._db.execute(f"PRAGMA auto_vacuum={INCREMENTAL}")
        self._db.execute("VACUUM")

    def _bound(self, max_bytes: int | None) -> int:
        """Set the database's page limit; returns its bound in bytes."""
        page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
        if max_bytes is None:
            held = self._db.execute("PRAGMA page_count").fetchone()[0] * page_size
            max_bytes = int(DISK_SHARE * (held + shutil.disk_usage(self.directory).free))
        pages = self._db.execute(f"PRAGMA max_page_count={max(max_bytes // page_size, 1)}")
        return pages.fetchone()[0] * page_size  # never below what the database holds already

    def _vacuum(self) -> None:
        """Give the pages a write freed back to the file system. (The pragma frees one page per
        step; execute() steps once, executescript() to the end.)"""
        try:
            self._db.executescript("PRAGMA incremental_vacuum")
        except sqlite3.Error as exc:
            raise StoreError(f"the stream store {self.directory} cannot be written: {exc}") \
                from None

    def file_bytes(self) -> int:
        """What the store takes on disk: its database and WAL files (read from the file
        system, so any thread may ask)."""
        files = (self.directory / DATABASE, self.directory / f"{DATABASE}-wal")
        return sum(path.stat().st_size for path in files if path.exists())

    def _check_owner(self, engine_key: str) -> None:
        rows = dict(self._db.execute("SELECT key, value FROM meta"))
        if not rows:
            with self._transaction():
                self._db.executemany("INSERT INTO meta VALUES (?, ?)",
                                     [("schema_version", str(SCHEMA_VERSION)),
                                      ("engine", engine_key)])
            return
        if rows.get("schema_version") == "1" and rows.get("engine") == engine_key:
            with self._transaction():  # statement by statement: executescript would commit
                for statement in MIGRATE_FROM_1.split(";"):
                    self._db.execute(statement)
            rows["schema_version"] = str(SCHEMA_VERSION)
        check_identity(f"the stream store {self.directory}", rows.get("schema_version"),
                       str(SCHEMA_VERSION), rows.get("engine"), engine_key,
                       f"give this engine its own --store folder (a re-export or a second "
                       f"`ctrt demo` makes another engine), or delete {self.directory} if the "
                       f"old engine's streams are not wanted any more")

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db, self.directory, self.max_bytes)

    # ---- StreamStore ---------------------------------------------------------------------
    def create(self, stream_id: str) -> None:
        with self._transaction():
            try:
                self._db.execute("INSERT INTO streams VALUES (?, 0, 0, 0)", (stream_id,))
            except sqlite3.IntegrityError:
                raise exists(stream_id) from None

    def positions(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT id, position FROM streams"))

    def take(self, stream_id: str) -> StoredStream:
        with self._transaction():
            row = self._db.execute(
                "UPDATE streams SET version = version + 1 WHERE id = ? "
                "RETURNING version, position, snapshot_position", (stream_id,)).fetchone()
            if row is None:
                raise unknown(stream_id)
            version, position, snapshot_position = row
            stored = self._db.execute("SELECT data FROM snapshots WHERE stream = ?",
                                      (stream_id,)).fetchone()
            snapshot = None if stored is None else stored[0]
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
                self._db.execute("UPDATE streams SET snapshot_position = ? WHERE id = ?",
                                 (start + len(tokens), stream_id))
                self._db.execute("INSERT OR REPLACE INTO snapshots VALUES (?, ?)",
                                 (stream_id, snapshot))
                self._db.execute("DELETE FROM wal WHERE stream = ?", (stream_id,))
            if receipt is not None:
                self._db.execute("INSERT INTO receipts VALUES (?, ?, ?, ?, ?)",
                                 (stream_id, start, receipt.key, receipt.digest, receipt.answer))
                self._db.execute(
                    "DELETE FROM receipts WHERE stream = ? AND start NOT IN (SELECT start "
                    "FROM receipts WHERE stream = ? ORDER BY start DESC LIMIT ?)",
                    (stream_id, stream_id, keep))
        if snapshot is not None:
            self._vacuum()  # the log records the snapshot replaced

    def put_snapshot(self, stream_id: str, version: int, position: int, snapshot: bytes) -> None:
        with self._transaction():
            updated = self._db.execute(
                "UPDATE streams SET snapshot_position = ?, position = ? "
                "WHERE id = ? AND version = ?", (position, position, stream_id, version)).rowcount
            if not updated:
                self._refuse(stream_id, version)
            self._db.execute("INSERT OR REPLACE INTO snapshots VALUES (?, ?)",
                             (stream_id, snapshot))
            self._db.execute("DELETE FROM wal WHERE stream = ?", (stream_id,))
        self._vacuum()

    def delete(self, stream_id: str) -> None:
        with self._transaction():
            if not self._db.execute("DELETE FROM streams WHERE id = ?", (stream_id,)).rowcount:
                raise unknown(stream_id)
            self._db.execute("DELETE FROM wal WHERE stream = ?", (stream_id,))
            self._db.execute("DELETE FROM snapshots WHERE stream = ?", (stream_id,))
            self._db.execute("DELETE FROM receipts WHERE stream = ?", (stream_id,))
        self._vacuum()

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
    """BEGIN IMMEDIATE ... COMMIT (rolled back on any error); sqlite3 errors become StoreError
    (StoreFull when the database reached its bound, `max_bytes`, or the disk is full)."""

    def __init__(self, db: sqlite3.Connection, directory: Path, max_bytes: int) -> None:
        self.db, self.directory, self.max_bytes = db, directory, max_bytes

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
        if isinstance(exc, sqlite3.Error) and exc.sqlite_errorcode == sqlite3.SQLITE_FULL:
            raise StoreFull(f"the stream store {self.directory} is full (its bound is "
                            f"{self.max_bytes} bytes, --store-max-bytes, or its disk is full): "
                            f"nothing was written; delete streams (DELETE /v1/streams/ID) to "
                            f"make room") from None
        if isinstance(exc, sqlite3.Error):
            raise StoreError(f"the stream store {self.directory} cannot be written: {exc}") \
                from None

