"""The local store's tables (sqlite_store.py) and the upgrades of stores written before them.

Schema 3: every stream row is keyed by (namespace, stream) (serving/namespaces.py), so one
store holds the streams of several engines; `namespaces` keeps each namespace's record and
`moved` the streams `ctrt store migrate` moved out of a namespace (a marker: the old engine's
server answers 409 for them, not 404). Schema 2 held one engine's streams, named in `meta`;
opening it moves them, in one transaction, into that engine's namespace. Schema 1 kept each
snapshot in its streams row.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from compressive_rt.serving.namespaces import EngineNamespace
from compressive_rt.serving.store import StoreError

log = logging.getLogger("compressive_rt.serving")

SCHEMA_VERSION = 3
SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE namespaces (id TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE streams (
    namespace TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    position INTEGER NOT NULL,
    snapshot_position INTEGER NOT NULL,
    PRIMARY KEY (namespace, id)
) WITHOUT ROWID;
CREATE TABLE snapshots (
    namespace TEXT NOT NULL,
    stream TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (namespace, stream)
);
CREATE TABLE wal (
    namespace TEXT NOT NULL,
    stream TEXT NOT NULL,
    start INTEGER NOT NULL,
    tokens BLOB NOT NULL,
    PRIMARY KEY (namespace, stream, start)
) WITHOUT ROWID;
CREATE TABLE receipts (
    namespace TEXT NOT NULL,
    stream TEXT NOT NULL,
    start INTEGER NOT NULL,
    key TEXT NOT NULL,
    digest TEXT NOT NULL,
    answer TEXT NOT NULL,
    PRIMARY KEY (namespace, stream, start)
) WITHOUT ROWID;
CREATE TABLE moved (
    namespace TEXT NOT NULL,
    stream TEXT NOT NULL,
    target TEXT NOT NULL,
    PRIMARY KEY (namespace, stream)
) WITHOUT ROWID
"""
# version 1 kept each snapshot in its streams row, which every take and append rewrote whole
FROM_1 = """
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
ALTER TABLE streams_2 RENAME TO streams
"""
# version 2's tables (one engine's streams) become version 3's, in the namespace :ns
FROM_2 = """
ALTER TABLE meta RENAME TO meta_2;
ALTER TABLE streams RENAME TO streams_2;
ALTER TABLE snapshots RENAME TO snapshots_2;
ALTER TABLE wal RENAME TO wal_2;
ALTER TABLE receipts RENAME TO receipts_2;
""" + SCHEMA + """;
INSERT INTO namespaces VALUES (:ns, :record);
INSERT INTO streams SELECT :ns, id, version, position, snapshot_position FROM streams_2;
INSERT INTO snapshots SELECT :ns, stream, data FROM snapshots_2;
INSERT INTO wal SELECT :ns, stream, start, tokens FROM wal_2;
INSERT INTO receipts SELECT :ns, stream, start, key, digest, answer FROM receipts_2;
DROP TABLE meta_2;
DROP TABLE streams_2;
DROP TABLE snapshots_2;
DROP TABLE wal_2;
DROP TABLE receipts_2
"""
V2_RECEIPTS = """
CREATE TABLE IF NOT EXISTS receipts (
    stream TEXT NOT NULL,
    start INTEGER NOT NULL,
    key TEXT NOT NULL,
    digest TEXT NOT NULL,
    answer TEXT NOT NULL,
    PRIMARY KEY (stream, start)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS wal (
    stream TEXT NOT NULL,
    start INTEGER NOT NULL,
    tokens BLOB NOT NULL,
    PRIMARY KEY (stream, start)
) WITHOUT ROWID
"""


def statements(script: str) -> list[str]:
    return [statement for statement in script.split(";") if statement.strip()]


def upgrade(db: sqlite3.Connection, directory: Path, opener: EngineNamespace | None) -> bool:
    """Bring the database to SCHEMA_VERSION in one transaction (a new one gets the tables): a
    schema 1 or 2 store's streams go into the namespace of the engine it held (recorded with
    `opener`'s config and precision when `opener` is that engine). Call inside BEGIN; returns
    whether old tables were copied (their pages are free now)."""
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master "
                                              "WHERE type = 'table'")}
    if not tables:
        for statement in statements(SCHEMA):
            db.execute(statement)
        db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        return False
    meta = dict(db.execute("SELECT key, value FROM meta")) if "meta" in tables else {}
    version = meta.get("schema_version")
    if version == str(SCHEMA_VERSION):
        return False
    if version not in ("1", "2") or "engine" not in meta:
        raise StoreError(f"the stream store {directory} has schema version {version}; this "
                         f"server reads {SCHEMA_VERSION} (and upgrades 1 and 2)")
    if version == "1":
        for statement in statements(FROM_1):
            db.execute(statement)
    for statement in statements(V2_RECEIPTS):  # tables a version 2 store made on first use
        db.execute(statement)
    held = EngineNamespace(meta["engine"])
    if opener is not None and opener.key == held.key:
        held = opener
    log.info("the stream store %s: schema %s -> %d, its streams into namespace %s (%s)",
             directory, version, SCHEMA_VERSION, held.digest, held.summary())
    names = {"ns": held.digest, "record": held.record()}
    for statement in statements(FROM_2):
        db.execute(statement, names)
    db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    return True
