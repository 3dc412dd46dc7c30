"""The local store's size (serving/sqlite_store.py): bounded below the disk, freed space given
back, stores written without auto_vacuum migrated; while full, reads and DELETE work."""

import os
import sqlite3

import pytest

from compressive_rt.serving.namespaces import EngineNamespace
from compressive_rt.serving.sqlite_store import DATABASE, SQLiteStore
from compressive_rt.serving.store import StoreFull

pytestmark = pytest.mark.serving

ENGINE = EngineNamespace('{"graphs": {"segment": "aaaa"}}')
STATE = 200_000  # bytes of one stream's snapshot
SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE streams (id TEXT PRIMARY KEY, version INTEGER NOT NULL, position INTEGER NOT NULL,
                      snapshot BLOB, snapshot_position INTEGER NOT NULL);
CREATE TABLE wal (stream TEXT NOT NULL, start INTEGER NOT NULL, tokens BLOB NOT NULL,
                  PRIMARY KEY (stream, start)) WITHOUT ROWID;
"""  # what the server wrote before schema version 2


def snapshot_of(index: int) -> bytes:
    return os.urandom(STATE - 8) + index.to_bytes(8, "little")


def fill(store: SQLiteStore, count: int) -> None:
    """`count` streams s0, s1, ..., each with a snapshot of STATE bytes and a short log."""
    for index in range(count):
        store.create(f"s{index}")
        version = store.take(f"s{index}").version
        store.put_snapshot(f"s{index}", version, 64, snapshot_of(index))
        store.append(f"s{index}", version, 64, b"tail")


def closed_size(directory) -> int:
    """The database's size once closed (SQLite folds the WAL in and removes it)."""
    assert not (directory / f"{DATABASE}-wal").exists()
    return (directory / DATABASE).stat().st_size


def test_the_file_follows_the_live_streams_when_most_are_deleted(tmp_path):
    store = SQLiteStore(tmp_path, ENGINE)
    fill(store, 30)
    for index in range(25):
        store.delete(f"s{index}")
    store.close()
    assert closed_size(tmp_path) <= 1.5 * 5 * STATE
    reopened = SQLiteStore(tmp_path, ENGINE)
    assert sorted(reopened.positions()) == [f"s{index}" for index in range(25, 30)]
    assert reopened.take("s27").snapshot[-8:] == (27).to_bytes(8, "little")
    reopened.close()


def test_a_store_of_schema_1_without_auto_vacuum_is_migrated_and_shrinks(tmp_path):
    """What the server wrote before: WAL, no auto_vacuum (deleting freed nothing), each
    snapshot in its stream's row."""
    old = sqlite3.connect(tmp_path / DATABASE, isolation_level=None)
    old.execute("PRAGMA journal_mode=WAL")
    old.executescript(SCHEMA_1)
    old.executemany("INSERT INTO meta VALUES (?, ?)", [("schema_version", "1"),
                                                       ("engine", ENGINE.key)])
    for index in range(20):
        old.execute("INSERT INTO streams VALUES (?, 0, 64, ?, 64)",
                    (f"s{index}", snapshot_of(index)))
    old.execute("DELETE FROM streams WHERE id != 's7'")
    old.close()
    assert closed_size(tmp_path) > 19 * STATE
    old = sqlite3.connect(tmp_path / DATABASE, isolation_level=None)
    old.execute("INSERT INTO wal VALUES ('s7', 64, ?)", (b"ab",))
    old.execute("UPDATE streams SET position = 66 WHERE id = 's7'")
    old.close()
    store = SQLiteStore(tmp_path, ENGINE)
    taken = store.take("s7")
    assert (taken.position, taken.snapshot_position, taken.tail, taken.snapshot[-8:]) == \
        (66, 64, b"ab", (7).to_bytes(8, "little"))
    store.close()
    assert closed_size(tmp_path) <= 1.5 * STATE


def test_taking_and_appending_write_no_snapshot_again(tmp_path):
    """A take (every load) and an append write a few pages, not the stream's state."""
    store = SQLiteStore(tmp_path, ENGINE)
    fill(store, 2)
    store.close()
    store = SQLiteStore(tmp_path, ENGINE)
    wal = tmp_path / f"{DATABASE}-wal"
    version = store.take("s1").version
    store.append("s1", version, 68, b"more")
    assert wal.stat().st_size < STATE / 4
    store.close()


def test_a_full_store_refuses_writes_and_still_reads_and_deletes(tmp_path):
    store = SQLiteStore(tmp_path, ENGINE, max_bytes=10 * STATE)
    with pytest.raises(StoreFull, match=f"the stream store {tmp_path} is full \\(its bound is "
                                        f"{store.max_bytes} bytes, --store-max-bytes"):
        fill(store, 20)
    stored = store.positions()
    assert 5 <= len(stored) <= 10
    full_at = len(stored)
    version = store.take("s1").version
    with pytest.raises(StoreFull):  # a snapshot that would not replace its own size in place
        store.put_snapshot("s1", version, 64, snapshot_of(1) * 2)
    assert store.take("s0").snapshot[-8:] == (0).to_bytes(8, "little")
    for index in range(full_at):
        store.delete(f"s{index}")
    assert store.positions() == {}
    fill(store, full_at - 1)  # the room came back
    store.close()
    assert closed_size(tmp_path) <= 10 * STATE
