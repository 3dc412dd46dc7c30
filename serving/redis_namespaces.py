"""The shared store's namespaces (serving/namespaces.py) in Redis: the layout, its upgrade from
the layout before namespaces, the listing and the atomic move of a stream (redis_store.py).

Layout (schema 2), under `ctrt:` in the URL's database: `schema`, `namespaces` (a hash:
namespace -> its record), and per namespace N the keys of redis_store.py under `ns:N:`
(`ns:N:ids`, `ns:N:s:{id}`, `ns:N:snap:{id}`, `ns:N:wal:{id}`, `ns:N:rcpt:{id}`). A stream
moved out of N leaves `ns:N:s:{id}` holding only its version and `moved` (the target): the old
engine's servers answer 409 for it. Leases and release requests (`alive:{name}`,
`release:{name}`) are per server, not per namespace.

Schema 1 kept one engine's streams under `ctrt:` itself (`engine`, `ids`, `s:{id}`, ...). The
first server of this version to open such a store renames them, in one script, into the
namespace of the engine named by `engine`; it refuses while a server of the older version holds
a lease there (its keys would vanish under it): stop those first.
"""

from __future__ import annotations

import logging

from compressive_rt.serving.namespaces import EngineNamespace, NamespaceUsage
from compressive_rt.serving.store import StoreError

log = logging.getLogger("compressive_rt.serving")

PREFIX = "ctrt:"
SCHEMA_VERSION = "2"
STREAM_KEYS = ("s", "snap", "wal", "rcpt")

# ARGV = prefix, schema version, the new namespace's digest and record (for a schema 1 store:
# its engine's); returns the schema the store had ('' for a new store) or an error reply
UPGRADE = """
local prefix = ARGV[1]
local schema = redis.call('GET', prefix .. 'schema')
if schema == ARGV[2] then return schema end
if not schema then
  redis.call('SET', prefix .. 'schema', ARGV[2])
  return ''
end
if schema ~= '1' then return redis.error_reply('SCHEMA ' .. schema) end
local live = redis.call('KEYS', prefix .. 'alive:*')
if #live > 0 then return redis.error_reply('LIVE ' .. string.sub(live[1], #prefix + 7)) end
local ns = prefix .. 'ns:' .. ARGV[3] .. ':'
for _, id in ipairs(redis.call('SMEMBERS', prefix .. 'ids')) do
  for _, kind in ipairs({'s', 'snap', 'wal', 'rcpt'}) do
    local key = prefix .. kind .. ':' .. id
    if redis.call('EXISTS', key) == 1 then redis.call('RENAME', key, ns .. kind .. ':' .. id) end
  end
end
if redis.call('EXISTS', prefix .. 'ids') == 1 then
  redis.call('RENAME', prefix .. 'ids', ns .. 'ids')
end
redis.call('HSET', prefix .. 'namespaces', ARGV[3], ARGV[4])
redis.call('DEL', prefix .. 'engine')
redis.call('SET', prefix .. 'schema', ARGV[2])
return schema
"""
# KEYS = namespaces; ARGV = digest, record, replace ('1': a record without precision is
# replaced by one with it)
ENTER = """
local stored = redis.call('HGET', KEYS[1], ARGV[1])
if not stored or ARGV[3] == '1' then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1
"""
# KEYS = s, snap, wal, rcpt, ids of the stream here, then of the stream in the target, then
# namespaces; ARGV = id, the version it was taken at, its converted snapshot ('': none), the
# target's digest and record
MOVE = """
local version = redis.call('HGET', KEYS[1], 'version')
if not version then return redis.error_reply('UNKNOWN') end
local moved = redis.call('HGET', KEYS[1], 'moved')
if moved then return redis.error_reply('GONE ' .. moved) end
if version ~= ARGV[2] then return redis.error_reply('STALE ' .. version) end
if redis.call('EXISTS', KEYS[6]) == 1 then return redis.error_reply('THERE') end
local fields = redis.call('HMGET', KEYS[1], 'position', 'snapshot_position')
redis.call('HSET', KEYS[6], 'version', version, 'position', fields[1],
           'snapshot_position', fields[2])
if ARGV[3] ~= '' then redis.call('SET', KEYS[7], ARGV[3]) end
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('RENAME', KEYS[3], KEYS[8]) end
if redis.call('EXISTS', KEYS[4]) == 1 then redis.call('RENAME', KEYS[4], KEYS[9]) end
redis.call('SADD', KEYS[10], ARGV[1])
redis.call('HSETNX', KEYS[11], ARGV[4], ARGV[5])
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'version', version, 'moved', ARGV[4])
redis.call('SREM', KEYS[5], ARGV[1])
return 1
"""


def namespace_prefix(digest: str) -> str:
    return f"{PREFIX}ns:{digest}:"


def stream_keys(digest: str, stream_id: str) -> list[str]:
    """The keys of a stream in a namespace: s, snap, wal, rcpt."""
    return [f"{namespace_prefix(digest)}{kind}:{stream_id}" for kind in STREAM_KEYS]


def usages(client) -> list[NamespaceUsage]:
    """Every namespace with what it holds (one pass over its streams' keys), the most streams
    first."""
    found = []
    for digest, record in client.hgetall(f"{PREFIX}namespaces").items():
        digest = digest.decode()
        prefix = namespace_prefix(digest)
        ids = [member.decode() for member in client.smembers(f"{prefix}ids")]
        pipe = client.pipeline(transaction=False)
        for stream_id in ids:
            pipe.strlen(f"{prefix}snap:{stream_id}")
            pipe.lrange(f"{prefix}wal:{stream_id}", 0, -1)
            pipe.lrange(f"{prefix}rcpt:{stream_id}", 0, -1)
        held = pipe.execute()
        stored = sum(item if isinstance(item, int) else sum(map(len, item)) for item in held)
        moved = sum(1 for _ in client.scan_iter(match=f"{prefix}s:*", count=1000)) - len(ids)
        found.append(NamespaceUsage(EngineNamespace.from_record(record.decode()), len(ids),
                                    stored, moved))
    return sorted(found, key=lambda usage: (-usage.streams, usage.namespace.digest))


class RedisNamespaces:
    """RedisStore's namespaces: its keys, the layout's upgrade, entering, listing, moving."""

    namespace: str | None

    def _key(self, name: str, stream_id: str | None = None) -> str:
        """A key of this server's namespace."""
        return namespace_prefix(self.namespace) + name + \
            ("" if stream_id is None else ":" + stream_id)

    @staticmethod
    def _server_key(name: str, server: str) -> str:
        """A server's own key or channel (its lease, its release requests)."""
        return f"{PREFIX}{name}:{server}"

    def _stream_keys(self, stream_id: str) -> list[str]:
        return stream_keys(self.namespace, stream_id)

    def _upgrade(self, opener: EngineNamespace | None) -> None:
        """Give a new store the layout of namespaces, or move a schema 1 store's streams into
        the namespace of the engine it held (recorded with `opener`'s config and precision
        when `opener` is that engine; the module doc says when it refuses)."""
        legacy = self._client.get(f"{PREFIX}engine")
        held = EngineNamespace(legacy.decode() if legacy else "")
        if opener is not None and opener.key == held.key:
            held = opener
        try:
            before = self._scripts["upgrade"](
                [], [PREFIX, SCHEMA_VERSION, held.digest, held.record()]).decode()
        except self._refusal as exc:
            kind, _, detail = str(exc).partition(" ")
            if kind == "LIVE":
                raise StoreError(
                    f"the Redis store {self.address} has the layout of an older ctrt (one "
                    f"engine's streams, no namespaces) and its server {detail} is live: stop "
                    f"the servers of the older version, then start this one (it moves their "
                    f"streams into their engine's namespace)") from None
            raise StoreError(f"the Redis store {self.address} has schema version {detail}; "
                             f"this server reads {SCHEMA_VERSION} (and upgrades 1)") \
                from None
        if before == "1":
            log.info("the Redis store %s: its streams moved into namespace %s (%s)",
                     self.address, held.digest, held.summary())

    # ---- namespaces ------------------------------------------------------------------------
    def enter(self, engine: EngineNamespace) -> None:
        """Work in `engine`'s namespace from now on (recorded if new; a record without the
        engine's config and precision gets them)."""
        try:
            stored = self._client.hget(f"{PREFIX}namespaces", engine.digest)
            replace = stored is not None and engine.precision is not None and \
                EngineNamespace.from_record(stored.decode()).precision is None
            self._scripts["enter"]([f"{PREFIX}namespaces"],
                                   [engine.digest, engine.record(), "1" if replace else "0"])
        except self._errors as exc:
            raise StoreError(f"the Redis store {self.address} cannot be reached: {exc}") \
                from None
        self.namespace = engine.digest

    def namespaces(self) -> list[NamespaceUsage]:
        """Every namespace with what it holds, the most streams first."""
        try:
            return usages(self._client)
        except self._errors as exc:
            raise StoreError(f"the Redis store {self.address} cannot be reached: {exc}") \
                from None

    def move(self, stream_id: str, version: int, target: EngineNamespace,
             snapshot: bytes | None) -> None:
        """As SQLiteStore.move, in one script."""
        self._call("move", [*self._stream_keys(stream_id), self._key("ids"),
                            *stream_keys(target.digest, stream_id),
                            f"{namespace_prefix(target.digest)}ids",
                            f"{PREFIX}namespaces"],
                   [stream_id, version, snapshot or b"", target.digest, target.record()],
                   stream_id, version)

