"""Which store a server's `--store` names: a Redis URL (redis://, rediss://, unix://) is the
shared store (redis_store.py), anything else a local directory (sqlite_store.py)."""

from __future__ import annotations

import logging
import os

from compressive_rt.serving.namespaces import EngineNamespace, others_line
from compressive_rt.serving.redis_store import (
    LEASE_S,
    PASSWORD_VARIABLE,
    RedisStore,
    is_redis_url,
)
from compressive_rt.serving.sqlite_store import SQLiteStore
from compressive_rt.serving.store import StreamStore

log = logging.getLogger("compressive_rt.serving")


def open_store(location: str, engine: EngineNamespace | None, max_bytes: int | None = None,
               lease_s: float = LEASE_S, name: str | None = None) -> StreamStore:
    """The store at `location`, in the namespace of `engine` (None: to list and move
    namespaces, `ctrt store`); a Redis store's password: in its URL or $CTRT_REDIS_PASSWORD;
    this server's lease `lease_s` and holder `name`; a local store's database is at most
    `max_bytes` (SQLiteStore's default: None). Redis bounds its own memory (maxmemory). A
    store that holds streams of other engines says so in one line of the log."""
    if is_redis_url(str(location)):
        store = RedisStore(str(location), engine,
                           password=os.environ.get(PASSWORD_VARIABLE) or None,
                           lease_s=lease_s, name=name)
    else:
        store = SQLiteStore(location, engine, max_bytes)
    if engine is not None:
        line = others_line(describe_store(location), engine, store.namespaces())
        if line is not None:
            log.info("%s", line)
    return store


def describe_store(location: str) -> str:
    """`location` for messages (a Redis URL without its password)."""
    if is_redis_url(str(location)):
        from compressive_rt.serving.redis_store import public_address

        return public_address(str(location))
    return str(location)
