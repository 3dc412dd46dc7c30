"""The shared stream store: one Redis server (or a managed one) that every replica reads and
writes, behind the same interface and durability contract as the local store (store.py).

Every write is one Lua script, so Redis runs it atomically: the compare-and-set on a stream's
version (fencing) and on its position, the log record and the position together. A snapshot
and the log it covers are replaced in one script too. Durability is Redis's: an acknowledged
append survives a replica's death as soon as Redis has it, and Redis's own death only with
append-only persistence and `appendfsync always` (Redis then fsyncs its log before it answers:
the reply to a script is the acknowledgement). `open` says in its `durability` which setting
the server runs; a server that is not `always` is logged as a warning, not refused (a managed
Redis may forbid CONFIG, or run replicas that make `everysec` good enough for its owner).

Keys, under `ctrt:ns:N:` in the URL's database for the namespace N of this server's engine
(redis_namespaces.py has the rest of the layout): `ids` (a set of stream ids), and per stream
`s:{id}` (a hash: version, position, snapshot_position, holder; `moved` once the stream moved
to another namespace), `snap:{id}` (the snapshot's bytes), `wal:{id}` (a list of records: the
start position, 8 bytes big-endian, then the tokens) and `rcpt:{id}` (the latest receipts of
writes made with an Idempotency-Key, oldest first, each a JSON [key, digest, answer]).

Leases: every server holds `alive:{name}`, a key that expires `lease_s` after it was last
set, and renews it every third of that on a thread of its own; closing the store deletes it.
A server that does not renew it in time (paused, partitioned from Redis, dead) has lost its
lease, and with it its streams to whoever asks.

Hand-over between replicas: `take` records the taker as the stream's holder. A taker that
finds another holder whose lease has expired takes the stream at once. Otherwise it asks the
holder, over a pub/sub channel of that holder's own, to give the stream up; a live holder
spills it (its snapshot stored) and `release`s it, and the taker goes on at once. A holder that
is gone has no subscriber (the taker goes on at once, or as soon as a dying holder's
connection closes), one whose lease expires while the taker waits (paused) is taken from then,
and one that renews but does not answer within twice the taker's `lease_s` is taken from anyway:
fencing makes its later writes fail rather than overwrite, and the request it hears late is
dropped.
"""

from __future__ import annotations

import json
import logging
import struct
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from compressive_rt.serving import redis_namespaces as layout
from compressive_rt.serving.namespaces import EngineNamespace
from compressive_rt.serving.store import (
    Receipt,
    StoredStream,
    StoreError,
    exists,
    gap,
    joined_log,
    moved,
    server_name,
    stale,
    unknown,
)

log = logging.getLogger("compressive_rt.serving")

START = struct.Struct(">Q")  # a log record's start position
LEASE_S = 2.0  # ServeSettings.lease_s's default
LIVE_HOLDER_WAIT = 2  # leases: how long a take waits for a holder that renews but does not answer
POLL_S = 0.02
LISTEN_S = 0.2  # the listener's wait for a message: how long closing it may take
PASSWORD_VARIABLE = "CTRT_REDIS_PASSWORD"

# KEYS = s:{id}, wal:{id}, rcpt:{id}, snap:{id}; ARGV = version, start, record, count, receipt
# ("": none), receipts kept, the snapshot after the record ("": none; it replaces the log)
# (a stream moved to another namespace: its marker answers GONE)
NOT_HERE = """
local version = redis.call('HGET', KEYS[1], 'version')
if not version then return redis.error_reply('UNKNOWN') end
local moved = redis.call('HGET', KEYS[1], 'moved')
if moved then return redis.error_reply('GONE ' .. moved) end
"""
APPEND = NOT_HERE + """
if version ~= ARGV[1] then return redis.error_reply('STALE ' .. version) end
local position = redis.call('HGET', KEYS[1], 'position')
if position ~= ARGV[2] then return redis.error_reply('GAP ' .. position) end
local after = redis.call('HINCRBY', KEYS[1], 'position', ARGV[4])
if ARGV[7] == '' then
  redis.call('RPUSH', KEYS[2], ARGV[3])
else
  redis.call('SET', KEYS[4], ARGV[7])
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'snapshot_position', after)
end
if ARGV[5] ~= '' then
  redis.call('RPUSH', KEYS[3], ARGV[5])
  redis.call('LTRIM', KEYS[3], -tonumber(ARGV[6]), -1)
end
return 1
"""
# KEYS = s:{id}, snap:{id}, wal:{id}; ARGV = version, position, snapshot
PUT_SNAPSHOT = NOT_HERE + """
if version ~= ARGV[1] then return redis.error_reply('STALE ' .. version) end
redis.call('SET', KEYS[2], ARGV[3])
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[1], 'position', ARGV[2], 'snapshot_position', ARGV[2])
return 1
"""
# KEYS = s:{id}, snap:{id}, wal:{id}, rcpt:{id}; ARGV = the taker's name
TAKE = NOT_HERE + """
version = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], 'holder', ARGV[1])
local fields = redis.call('HMGET', KEYS[1], 'position', 'snapshot_position')
local snapshot = redis.call('GET', KEYS[2])
return {version, fields[1], fields[2], snapshot, redis.call('LRANGE', KEYS[3], 0, -1),
        redis.call('LRANGE', KEYS[4], 0, -1)}
"""
# KEYS = s:{id}; ARGV = the holder's name (a release by a server taken from since is void)
RELEASE = """
if redis.call('HGET', KEYS[1], 'holder') == ARGV[1] then redis.call('HDEL', KEYS[1], 'holder') end
return 1
"""
# KEYS = s:{id}, ids; ARGV = id
CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 and redis.call('HEXISTS', KEYS[1], 'moved') == 0 then
  return redis.error_reply('EXISTS')
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'version', 0, 'position', 0, 'snapshot_position', 0)
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""
# KEYS = s:{id}, snap:{id}, wal:{id}, rcpt:{id}, ids; ARGV = id
DELETE = NOT_HERE + """
redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
redis.call('SREM', KEYS[5], ARGV[1])
return 1
"""


def is_redis_url(store: str) -> bool:
    return store.startswith(("redis://", "rediss://", "unix://"))


def public_address(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or parts.path
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "") + \
        (parts.path if parts.hostname and parts.path not in ("", "/") else "")


class RedisStore(layout.RedisNamespaces):
    """StreamStore on the Redis server at `url` (redis://[:PASSWORD@]HOST:PORT[/DB],
    rediss:// for TLS, with redis-py's query options such as ssl_ca_certs) in the namespace of
    `engine` (None: for `namespaces` and `enter` alone, as `ctrt store` opens it).
    `password` (or $CTRT_REDIS_PASSWORD) is used when the URL has none.
    This server's lease lasts `lease_s`, renewed every third of it while the store is open;
    `name` is this server's as a stream's holder (default: the host name and a random suffix).
    """

    shared = True  # other servers use this store at the same time

    def __init__(self, url: str, engine: EngineNamespace | None, password: str | None = None,
                 lease_s: float = LEASE_S, name: str | None = None) -> None:
        try:
            import redis
        except ImportError:
            raise StoreError("a Redis store needs the redis client: pip install "
                             "'compressive-rt[ray]'") from None

        self.url, self.address = url, public_address(url)
        self.lease_s = lease_s
        # this server, as holder (a Ray replica: its replica id, what X-Ctrt-Replica says)
        self.name = name or server_name()
        self._errors = (redis.RedisError, OSError)
        self._refusal = redis.ResponseError  # a script's error reply
        self._release_listener: Callable[[str], None] | None = None
        self._listening = None
        self.namespace: str | None = None
        try:
            options = {"password": password} if password and "@" not in url else {}
            self._client = redis.Redis.from_url(url, socket_timeout=60,
                                                socket_connect_timeout=10, **options)
            self._scripts = {name: self._client.register_script(source) for name, source in
                             [("append", APPEND), ("put_snapshot", PUT_SNAPSHOT),
                              ("take", TAKE), ("release", RELEASE), ("create", CREATE),
                              ("delete", DELETE), ("upgrade", layout.UPGRADE),
                              ("enter", layout.ENTER), ("move", layout.MOVE)]}
            self._upgrade(engine)
            if engine is not None:
                self.enter(engine)
        except redis.AuthenticationError as exc:
            raise StoreError(f"the Redis store {self.address} refused the password ({exc}): "
                             f"give it in the URL (redis://:PASSWORD@HOST:PORT) or "
                             f"${PASSWORD_VARIABLE}") from None
        except (ValueError, *self._errors) as exc:
            raise StoreError(f"the Redis store {self.address} cannot be used: {exc}") from None
        self.durability = self._durability()
        self._closing = threading.Event()
        self.reachable = True  # the last renewal of the lease succeeded (/ready says it)
        try:
            self._renew()
        except self._errors as exc:
            raise StoreError(f"the Redis store {self.address} cannot be used: {exc}") from None
        self._renewing = threading.Thread(target=self._keep_lease, name="ctrt-lease",
                                          daemon=True)
        self._renewing.start()

    def _renew(self) -> None:
        self._client.set(self._server_key("alive", self.name), b"1",
                         px=max(1, int(self.lease_s * 1000)))

    def _keep_lease(self) -> None:
        """Renew this server's lease until the store closes; a failed renewal is retried (the
        lease may lapse meanwhile: the streams are then anyone's, and fencing guards them)."""
        while not self._closing.wait(self.lease_s / 3):
            try:
                self._renew()
            except self._errors as exc:
                if self.reachable:
                    log.warning("the Redis store %s: this server's lease was not renewed "
                                "(%s); not ready until it is", self.address, exc)
                self.reachable = False
            else:
                if not self.reachable:
                    log.info("the Redis store %s: reached again", self.address)
                self.reachable = True

    def _durability(self) -> str:
        """What survives Redis's own death, from its configuration (if it shows it)."""
        try:
            config = {**self._client.config_get("appendonly"),
                      **self._client.config_get("appendfsync")}
        except self._errors:
            log.info("the Redis store %s does not show its persistence settings (CONFIG): "
                     "make sure it runs appendonly yes with appendfsync always", self.address)
            return "unknown (CONFIG GET refused)"
        setting = f"appendonly {config.get('appendonly')}, appendfsync " \
                  f"{config.get('appendfsync')}"
        if config.get("appendonly") != "yes" or config.get("appendfsync") != "always":
            log.warning("the Redis store %s runs %s: an acknowledged append survives a "
                        "replica's death but not Redis's own (appendonly yes, appendfsync "
                        "always makes it durable)", self.address, setting)
        return setting

    def _call(self, script: str, keys: list[str], args: list, stream_id: str,
              version: int | None = None, start: int | None = None):
        """Run a script; its error replies become the store's errors."""
        try:
            return self._scripts[script](keys, args)
        except self._refusal as exc:
            kind, _, detail = str(exc).partition(" ")
            if kind == "UNKNOWN":
                raise unknown(stream_id) from None
            if kind == "STALE":
                raise stale(stream_id, detail, version) from None
            if kind == "GAP":
                raise gap(stream_id, start, detail) from None
            if kind == "EXISTS":
                raise exists(stream_id) from None
            if kind == "GONE":
                raise moved(stream_id, detail) from None
            if kind == "THERE":
                raise StoreError(f"stream {stream_id} is in the target namespace already: it "
                                 f"was not moved") from None
            raise StoreError(f"the Redis store {self.address} failed: {exc}") from None
        except self._errors as exc:
            raise StoreError(f"the Redis store {self.address} cannot be reached: {exc}") \
                from None

    # ---- StreamStore ---------------------------------------------------------------------
    def create(self, stream_id: str) -> None:
        self._call("create", [self._key("s", stream_id), self._key("ids")], [stream_id],
                   stream_id)

    def positions(self) -> dict[str, int]:
        try:
            ids = sorted(member.decode() for member in self._client.smembers(self._key("ids")))
            pipe = self._client.pipeline(transaction=False)
            for stream_id in ids:
                pipe.hget(self._key("s", stream_id), "position")
            found = pipe.execute()
        except self._errors as exc:
            raise StoreError(f"the Redis store {self.address} cannot be reached: {exc}") \
                from None
        return {stream_id: int(position) for stream_id, position in zip(ids, found)
                if position is not None}

    def position(self, stream_id: str) -> int:
        try:
            position, target = self._client.hmget(self._key("s", stream_id), "position",
                                                  "moved")
        except self._errors as exc:
            raise StoreError(f"the Redis store {self.address} cannot be reached: {exc}") \
                from None
        self._check_here(stream_id, position, target)
        return int(position)

    @staticmethod
    def _check_here(stream_id: str, position: bytes | None, target: bytes | None) -> None:
        """UnknownStream or StreamMoved unless the stream's record here has a position."""
        if target is not None:
            raise moved(stream_id, target.decode())
        if position is None:
            raise unknown(stream_id)

    def standing(self, stream_id: str) -> tuple[int, int, str | None]:
        """The stream's version (a fenced read compares its claim), its acknowledged position
        and its holder's name (None: nobody holds it); UnknownStream if there is none."""
        try:
            version, position, holder, target = self._client.hmget(
                self._key("s", stream_id), "version", "position", "holder", "moved")
        except self._errors as exc:
            raise StoreError(f"the Redis store {self.address} cannot be reached: {exc}") \
                from None
        self._check_here(stream_id, position, target)
        return int(version), int(position), None if holder is None else holder.decode()

    def take(self, stream_id: str, ask_holder: bool = True) -> StoredStream:
        """Take the stream; with `ask_holder`, first `ask_holder` (a server that waits for
        holders off its store thread asks before, and takes with False)."""
        if ask_holder:
            self.ask_holder(stream_id)
        version, position, snapshot_position, snapshot, records, receipts = self._call(
            "take", self._stream_keys(stream_id), [self.name], stream_id)
        tail = joined_log(stream_id, int(snapshot_position),
                          ((START.unpack_from(record)[0], record[START.size:])
                           for record in records))
        return StoredStream(stream_id, int(version), int(position), snapshot,
                            int(snapshot_position), tail,
                            tuple(Receipt(*json.loads(receipt)) for receipt in receipts))

    def ask_holder(self, stream_id: str) -> None:
        """If another server holds the stream, ask it to give it up, and wait (bounded) for it
        to do so; a holder that is gone or does not answer is taken from anyway. Safe to call
        from any thread (the client's connection pool), beside the store thread's calls."""
        key = self._key("s", stream_id)
        try:
            holder = self._client.hget(key, "holder")
            if holder is None or holder.decode() == self.name:
                return
            channel, lease = (self._server_key(name, holder.decode())
                              for name in ("release", "alive"))
            if not self._client.exists(lease):
                log.info("stream %s: its holder %s's lease has expired; taken from it",
                         stream_id, holder.decode())
                return
            if not self._client.publish(channel, stream_id):
                return  # nobody listens there: the holder is gone
            # a paused holder's lease runs out before this: it was renewed before the ask
            deadline = time.monotonic() + LIVE_HOLDER_WAIT * self.lease_s
            while self._client.hget(key, "holder") == holder:
                if not self._client.pubsub_numsub(channel)[0][1]:
                    return  # its connection closed while we waited: it died
                if not self._client.exists(lease):
                    log.info("stream %s: its holder %s's lease expired while it was asked; "
                             "taken from it", stream_id, holder.decode())
                    return
                if time.monotonic() > deadline:
                    log.warning("stream %s: its holder %s did not give it up within %g s; "
                                "taken from it (its later writes are refused)", stream_id,
                                holder.decode(), LIVE_HOLDER_WAIT * self.lease_s)
                    return
                time.sleep(POLL_S)
        except self._errors as exc:
            raise StoreError(f"the Redis store {self.address} cannot be reached: {exc}") \
                from None

    def append(self, stream_id: str, version: int, start: int, tokens: bytes,
               receipt: Receipt | None = None, keep: int = 0,
               snapshot: bytes | None = None) -> None:
        kept = "" if receipt is None else json.dumps(
            [receipt.key, receipt.digest, receipt.answer])
        state, snap, wal, receipts = self._stream_keys(stream_id)
        self._call("append", [state, wal, receipts, snap],
                   [version, start, START.pack(start) + tokens, len(tokens), kept, keep,
                    snapshot or b""], stream_id, version, start)

    def put_snapshot(self, stream_id: str, version: int, position: int, snapshot: bytes) -> None:
        self._call("put_snapshot", self._stream_keys(stream_id)[:3],
                   [version, position, snapshot], stream_id, version)

    def release(self, stream_id: str) -> None:
        """This server no longer holds the stream (a no-op if another took it since)."""
        self._call("release", [self._key("s", stream_id)], [self.name], stream_id)

    def on_release(self, listener: Callable[[str], None]) -> None:
        """Call `listener(stream_id)` (on a thread of the store's) when another server asks
        for a stream this one holds."""
        self._release_listener = listener
        if self._listening is not None:
            return
        try:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(**{self._server_key("release", self.name): self._released})
            self._listening = pubsub.run_in_thread(
                sleep_time=LISTEN_S, daemon=True, exception_handler=self._listener_failed)
        except self._errors as exc:
            raise StoreError(f"the Redis store {self.address} cannot be reached: {exc}") \
                from None

    def _released(self, message: dict) -> None:
        """A request to give a stream up. One that comes late (this server was paused, and
        the taker has taken the stream since) is dropped: fencing refuses this server's next
        write to it, and that refusal (409) is what its client must see."""
        stream_id = message["data"].decode()
        try:
            holder = self._client.hget(self._key("s", stream_id), "holder")
        except self._errors as exc:
            log.warning("stream %s: a release request could not be checked (%s)", stream_id, exc)
            return
        if holder is not None and holder.decode() == self.name and self._release_listener:
            self._release_listener(stream_id)

    def _listener_failed(self, error: BaseException, pubsub: object, thread: object) -> None:
        """The connection broke: redis-py reconnects and subscribes again on the next read;
        meanwhile other servers take this one's streams after their wait."""
        if self._listening is not None:
            log.warning("the Redis store %s: release requests are not heard (%s); "
                        "reconnecting", self.address, error)
            time.sleep(LISTEN_S)

    def delete(self, stream_id: str) -> None:
        self._call("delete", [*self._stream_keys(stream_id), self._key("ids")], [stream_id],
                   stream_id)

    def close(self) -> None:
        """Stop listening and renewing; the lease is given back (its streams are anyone's)."""
        self._closing.set()
        self._renewing.join()
        try:
            self._client.delete(self._server_key("alive", self.name))
        except self._errors as exc:
            log.warning("the Redis store %s: this server's lease was not given back (%s); "
                        "it expires in %g s", self.address, exc, self.lease_s)
        listening, self._listening = self._listening, None
        if listening is not None:
            listening.stop()  # its thread closes the subscription when it ends
            listening.join()
        self._client.close()

