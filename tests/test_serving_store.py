"""The local stream store (serving/sqlite_store.py) beyond the contract every store keeps
(test_serving_store_contract.py): one process per store."""

import logging
import sqlite3
import subprocess
import sys

import pytest

from compressive_rt.serving.namespaces import EngineNamespace
from compressive_rt.serving.sqlite_store import DATABASE, SQLiteStore
from compressive_rt.serving.store import StoreError
from compressive_rt.serving.stores import open_store

pytestmark = pytest.mark.serving

ENGINE = EngineNamespace('{"graphs": {"segment": "aaaa"}}', {"d_model": 8}, "fp32")
RE_EXPORT = EngineNamespace('{"graphs": {"segment": "bbbb"}}', {"d_model": 8}, "fp32")
SCHEMA_2 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE streams (id TEXT PRIMARY KEY, version INTEGER NOT NULL, position INTEGER NOT NULL,
                      snapshot_position INTEGER NOT NULL);
CREATE TABLE snapshots (stream TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE wal (stream TEXT NOT NULL, start INTEGER NOT NULL, tokens BLOB NOT NULL,
                  PRIMARY KEY (stream, start)) WITHOUT ROWID;
CREATE TABLE receipts (stream TEXT NOT NULL, start INTEGER NOT NULL, key TEXT NOT NULL,
                       digest TEXT NOT NULL, answer TEXT NOT NULL,
                       PRIMARY KEY (stream, start)) WITHOUT ROWID;
"""  # what the server wrote before namespaces: one engine's streams


@pytest.fixture
def store(tmp_path):
    opened = SQLiteStore(tmp_path / "store", ENGINE)
    yield opened
    opened.close()


OPEN = "import sys; from compressive_rt.serving.sqlite_store import SQLiteStore; " \
       "SQLiteStore(sys.argv[1], None)"


def test_a_second_process_cannot_open_a_store_in_use(store):
    """(A subprocess of its own: multiprocessing's spawn re-imports pytest's entry script.)"""
    opened = subprocess.run([sys.executable, "-c", OPEN, str(store.directory)],
                            capture_output=True, text=True, timeout=60)
    assert opened.returncode != 0
    assert f"the stream store {store.directory} is in use by another process" in opened.stderr


def write_schema_2(directory, engine_key: str) -> None:
    """A store as a server before namespaces left it: two streams of one engine."""
    directory.mkdir()
    old = sqlite3.connect(directory / DATABASE, isolation_level=None)
    old.execute("PRAGMA journal_mode=WAL")
    old.executescript(SCHEMA_2)
    old.executemany("INSERT INTO meta VALUES (?, ?)", [("schema_version", "2"),
                                                       ("engine", engine_key)])
    old.executemany("INSERT INTO streams VALUES (?, ?, ?, ?)", [("a", 3, 5, 3), ("b", 1, 2, 0)])
    old.execute("INSERT INTO snapshots VALUES ('a', ?)", (b"SNAPSHOT@3",))
    old.executemany("INSERT INTO wal VALUES (?, ?, ?)", [("a", 3, b"de"), ("b", 0, b"xy")])
    old.execute("INSERT INTO receipts VALUES ('a', 3, 'k', 'd', '{}')")
    old.close()


def test_a_schema_2_store_opened_by_a_re_export_keeps_its_streams_in_their_namespace(
        tmp_path, caplog):
    """Opening upgrades the store (schema 3): its streams go, unchanged, into the namespace of
    the engine it held; a re-exported engine starts with an empty namespace and its server logs
    one line naming the other namespace and the command that moves its streams."""
    write_schema_2(tmp_path / "store", ENGINE.key)
    with caplog.at_level(logging.INFO, logger="compressive_rt.serving"):
        store = open_store(str(tmp_path / "store"), RE_EXPORT)
    assert store.positions() == {}
    [line] = [record.getMessage() for record in caplog.records
              if "also holds streams of other engines" in record.getMessage()]
    assert line == (f"the store {tmp_path / 'store'} opens namespace {RE_EXPORT.digest} for "
                    f"this engine; it also holds streams of other engines: {ENGINE.digest} (2 "
                    f"streams, {EngineNamespace(ENGINE.key).summary()}); `ctrt store migrate "
                    f"{tmp_path / 'store'} --engine ENGINE_DIR --from NAMESPACE` moves them to "
                    f"this engine if it is a re-export of the same checkpoint")
    [held] = [usage for usage in store.namespaces() if usage.namespace.digest == ENGINE.digest]
    assert (held.streams, held.bytes, held.namespace.precision) == \
        (2, len(b"SNAPSHOT@3dexy{}"), None)  # its config and precision were never stored
    store.close()
    reopened = SQLiteStore(tmp_path / "store", ENGINE)
    assert reopened.positions() == {"a": 5, "b": 2}
    a = reopened.take("a")
    assert (a.version, a.snapshot, a.snapshot_position, a.tail, a.receipts[0].key) == \
        (4, b"SNAPSHOT@3", 3, b"de", "k")
    assert reopened.take("b").tail == b"xy"
    [held] = [usage for usage in reopened.namespaces()
              if usage.namespace.digest == ENGINE.digest]
    assert held.namespace == ENGINE  # its own engine recorded what it is
    reopened.close()


def test_a_store_of_a_newer_schema_is_refused(tmp_path):
    write_schema_2(tmp_path / "store", ENGINE.key)
    newer = sqlite3.connect(tmp_path / "store" / DATABASE, isolation_level=None)
    newer.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    newer.close()
    with pytest.raises(StoreError, match="has schema version 4; this server reads 3"):
        SQLiteStore(tmp_path / "store", ENGINE)
