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

Namespaces (serving/namespaces.py, tables in sqlite_schema.py): the store keeps each engine's
streams apart; an instance works in the namespace of the engine it was opened for. The size
bound is the store's (one database on one disk), not a namespace's.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import sqlite3
from pathlib import Path

from compressive_rt.serving.namespaces import EngineNamespace, NamespaceUsage
from compressive_rt.serving.sqlite_schema import upgrade
from compressive_rt.serving.store import (
    Receipt,
    StoredStream,
    StoreError,
    StoreFull,
    exists,
    gap,
    joined_log,
    moved,
    stale,
    unknown,
)

log = logging.getLogger("compressive_rt.serving")

DATABASE = "streams.sqlite3"
LOCK = "lock"
INCREMENTAL = 2  # PRAGMA auto_vacuum's value for INCREMENTAL
DISK_SHARE = 0.9  # the default bound: of (what the store holds + the disk's free space)
WAL_LIMIT_BYTES = 16 << 20  # the WAL file is truncated back to this after a checkpoint


class SQLiteStore:
    """StreamStore on `directory` (created if missing), in the namespace of `engine` (None: for
    `namespaces` and `enter` alone, as `ctrt store` opens it), its database at most `max_bytes`
    (None: 90% of what it holds plus the disk's free space)."""

    def __init__(self, directory: str | Path, engine: EngineNamespace | None,
                 max_bytes: int | None = None) -> None:
        self.directory = Path(directory)
        self.namespace: str | None = None
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
                             f"(another ctrt serve?): give each server its own --store, and "
                             f"stop its server before `ctrt store migrate`") from None
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
            with _Transaction(self._db, self.directory, None):  # before the bound: it copies
                copied = upgrade(self._db, self.directory, engine)
            self.max_bytes = self._bound(max_bytes)
            if engine is not None:
                self.enter(engine)
            if written_before:
                self._reclaim_freed_pages()
            elif copied:
                self._vacuum()
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

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db, self.directory, self.max_bytes)

    # ---- namespaces ------------------------------------------------------------------------
    def enter(self, engine: EngineNamespace) -> None:
        """Work in `engine`'s namespace from now on (recorded if new; a record without the
        engine's config and precision gets them)."""
        with self._transaction():
            stored = self._db.execute("SELECT record FROM namespaces WHERE id = ?",
                                      (engine.digest,)).fetchone()
            if stored is None or (EngineNamespace.from_record(stored[0]).precision is None
                                  and engine.precision is not None):
                self._db.execute("INSERT OR REPLACE INTO namespaces VALUES (?, ?)",
                                 (engine.digest, engine.record()))
        self.namespace = engine.digest

    def namespaces(self) -> list[NamespaceUsage]:
        """Every namespace with what it holds, the most streams first."""
        rows = self._db.execute("""
            SELECT n.record,
              (SELECT count(*) FROM streams s WHERE s.namespace = n.id),
              (SELECT coalesce(sum(length(data)), 0) FROM snapshots p WHERE p.namespace = n.id)
              + (SELECT coalesce(sum(length(tokens)), 0) FROM wal w WHERE w.namespace = n.id)
              + (SELECT coalesce(sum(length(answer)), 0) FROM receipts r
                 WHERE r.namespace = n.id),
              (SELECT count(*) FROM moved m WHERE m.namespace = n.id)
            FROM namespaces n""").fetchall()
        usages = [NamespaceUsage(EngineNamespace.from_record(record), *counts)
                  for record, *counts in rows]
        return sorted(usages, key=lambda usage: (-usage.streams, usage.namespace.digest))

    def move(self, stream_id: str, version: int, target: EngineNamespace,
             snapshot: bytes | None) -> None:
        """Move the stream, taken at `version`, to `target`'s namespace with `snapshot` (its
        snapshot, converted for that engine) in one transaction: its log and receipts go
        with it, and it leaves a marker (StreamMoved) here. StaleVersion if another server took
        it since; a stream of that id in the target is refused (nothing moves)."""
        here, there = self.namespace, target.digest
        with self._transaction():
            row = self._db.execute(
                "DELETE FROM streams WHERE namespace = ? AND id = ? AND version = ? "
                "RETURNING position, snapshot_position", (here, stream_id, version)).fetchone()
            if row is None:
                self._refuse(stream_id, version)
            if self._db.execute("SELECT 1 FROM streams WHERE namespace = ? AND id = ?",
                                (there, stream_id)).fetchone():
                raise StoreError(f"stream {stream_id} is in namespace {there} already: it "
                                 f"was not moved")
            self._db.execute("INSERT OR IGNORE INTO namespaces VALUES (?, ?)",
                             (there, target.record()))
            self._db.execute("INSERT INTO streams VALUES (?, ?, ?, ?, ?)",
                             (there, stream_id, version, *row))
            self._db.execute("DELETE FROM snapshots WHERE namespace = ? AND stream = ?",
                             (here, stream_id))
            if snapshot is not None:
                self._db.execute("INSERT INTO snapshots VALUES (?, ?, ?)",
                                 (there, stream_id, snapshot))
            for table in ("wal", "receipts"):
                self._db.execute(f"UPDATE {table} SET namespace = ? "  # noqa: S608 - our names
                                 f"WHERE namespace = ? AND stream = ?", (there, here, stream_id))
            self._db.execute("INSERT OR REPLACE INTO moved VALUES (?, ?, ?)",
                             (here, stream_id, there))
        self._vacuum()

    # ---- StreamStore ---------------------------------------------------------------------
    def create(self, stream_id: str) -> None:
        with self._transaction():
            try:
                self._db.execute("INSERT INTO streams VALUES (?, ?, 0, 0, 0)",
                                 (self.namespace, stream_id))
            except sqlite3.IntegrityError:
                raise exists(stream_id) from None
            self._db.execute("DELETE FROM moved WHERE namespace = ? AND stream = ?",
                             (self.namespace, stream_id))

    def positions(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT id, position FROM streams WHERE namespace = ?",
                                     (self.namespace,)))

    def take(self, stream_id: str) -> StoredStream:
        here = (self.namespace, stream_id)
        with self._transaction():
            row = self._db.execute(
                "UPDATE streams SET version = version + 1 WHERE namespace = ? AND id = ? "
                "RETURNING version, position, snapshot_position", here).fetchone()
            if row is None:
                self._refuse(stream_id, None)
            version, position, snapshot_position = row
            stored = self._db.execute("SELECT data FROM snapshots WHERE namespace = ? AND "
                                      "stream = ?", here).fetchone()
            snapshot = None if stored is None else stored[0]
            records = self._db.execute(
                "SELECT start, tokens FROM wal WHERE namespace = ? AND stream = ? "
                "ORDER BY start", here).fetchall()
            receipts = self._db.execute(
                "SELECT key, digest, answer FROM receipts WHERE namespace = ? AND stream = ? "
                "ORDER BY start", here).fetchall()
        return StoredStream(stream_id, version, position, snapshot, snapshot_position,
                            joined_log(stream_id, snapshot_position, records),
                            tuple(Receipt(*row) for row in receipts))

    def append(self, stream_id: str, version: int, start: int, tokens: bytes,
               receipt: Receipt | None = None, keep: int = 0,
               snapshot: bytes | None = None) -> None:
        here = (self.namespace, stream_id)
        with self._transaction():
            updated = self._db.execute(
                "UPDATE streams SET position = position + ? "
                "WHERE namespace = ? AND id = ? AND version = ? AND position = ?",
                (len(tokens), *here, version, start)).rowcount
            if not updated:
                self._refuse(stream_id, version, start)
            if snapshot is None:
                self._db.execute("INSERT INTO wal VALUES (?, ?, ?, ?)", (*here, start, tokens))
            else:
                self._db.execute("UPDATE streams SET snapshot_position = ? "
                                 "WHERE namespace = ? AND id = ?", (start + len(tokens), *here))
                self._db.execute("INSERT OR REPLACE INTO snapshots VALUES (?, ?, ?)",
                                 (*here, snapshot))
                self._db.execute("DELETE FROM wal WHERE namespace = ? AND stream = ?", here)
            if receipt is not None:
                self._db.execute("INSERT INTO receipts VALUES (?, ?, ?, ?, ?, ?)",
                                 (*here, start, receipt.key, receipt.digest, receipt.answer))
                self._db.execute(
                    "DELETE FROM receipts WHERE namespace = ? AND stream = ? AND start NOT IN "
                    "(SELECT start FROM receipts WHERE namespace = ? AND stream = ? "
                    "ORDER BY start DESC LIMIT ?)", (*here, *here, keep))
        if snapshot is not None:
            self._vacuum()  # the log records the snapshot replaced

    def put_snapshot(self, stream_id: str, version: int, position: int, snapshot: bytes) -> None:
        here = (self.namespace, stream_id)
        with self._transaction():
            updated = self._db.execute(
                "UPDATE streams SET snapshot_position = ?, position = ? "
                "WHERE namespace = ? AND id = ? AND version = ?",
                (position, position, *here, version)).rowcount
            if not updated:
                self._refuse(stream_id, version)
            self._db.execute("INSERT OR REPLACE INTO snapshots VALUES (?, ?, ?)",
                             (*here, snapshot))
            self._db.execute("DELETE FROM wal WHERE namespace = ? AND stream = ?", here)
        self._vacuum()

    def delete(self, stream_id: str) -> None:
        here = (self.namespace, stream_id)
        with self._transaction():
            if not self._db.execute("DELETE FROM streams WHERE namespace = ? AND id = ?",
                                    here).rowcount:
                self._refuse(stream_id, None)
            for table in ("wal", "snapshots", "receipts"):
                self._db.execute(f"DELETE FROM {table} "  # noqa: S608 - our table names
                                 f"WHERE namespace = ? AND stream = ?", here)
        self._vacuum()

    def close(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()
            self._db = None
        if not self._lock.closed:
            self._lock.close()  # releases the flock

    def _refuse(self, stream_id: str, version: int | None, start: int | None = None) -> None:
        """Why a write (or, with `version` None, a take or delete) matched no row; raises."""
        here = (self.namespace, stream_id)
        row = self._db.execute("SELECT version, position FROM streams "
                               "WHERE namespace = ? AND id = ?", here).fetchone()
        if row is None:
            target = self._db.execute("SELECT target FROM moved WHERE namespace = ? AND "
                                      "stream = ?", here).fetchone()
            raise unknown(stream_id) if target is None else moved(stream_id, target[0])
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

