"""The shared stream store on a real redis-server (serving/redis_store.py) beyond the contract
every store keeps (test_serving_store_contract.py): durable across kill -9 of Redis
itself with appendfsync always, the hand-over between holders, passwords and TLS."""

import subprocess
import threading
import time

import pytest
import redis
from support.redis_and_ray import RedisServer
from support.rules import need_binary

from compressive_rt.serving.namespaces import EngineNamespace
from compressive_rt.serving.redis_store import RedisStore
from compressive_rt.serving.store import StaleVersion, StoreError

pytestmark = [pytest.mark.serving, pytest.mark.slow]

ENGINE = EngineNamespace('{"graphs": {"segment": "aaaa"}}')
OTHER_ENGINE = EngineNamespace('{"graphs": {"segment": "bbbb"}}')
WAIT_S = 60  # a holder's bounded wait in these tests: far longer than any hand-over takes


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def store(redis_server):
    opened = RedisStore(redis_server.url, ENGINE)
    yield opened
    opened.close()


def test_the_store_says_it_runs_appendfsync_always(store):
    assert store.durability == "appendonly yes, appendfsync always"


def test_an_acknowledged_append_survives_kill_9_of_redis(redis_server, store):
    """appendfsync always: Redis answers a script after its log is fsync'ed."""
    store.create("s")
    version = store.take("s").version
    store.append("s", version, 0, b"abc")
    store.put_snapshot("s", version, 3, b"SNAPSHOT@3")
    store.append("s", version, 3, b"de")
    redis_server.kill()
    redis_server.start()
    reopened = RedisStore(redis_server.url, ENGINE)
    taken = reopened.take("s")
    reopened.close()
    assert (taken.position, taken.snapshot, taken.snapshot_position, taken.tail) == \
        (5, b"SNAPSHOT@3", 3, b"de")
    assert taken.version == version + 1


def test_a_store_of_the_layout_before_namespaces_is_upgraded_once_no_old_server_is_live(
        redis_server):
    """Schema 1 kept one engine's streams under ctrt: itself: the first server of this version
    renames them into that engine's namespace, but not while a server of the older version
    holds a lease there (its keys would vanish under it)."""
    client = redis.Redis.from_url(redis_server.url)
    client.set("ctrt:engine", ENGINE.key)
    client.set("ctrt:schema", "1")
    client.sadd("ctrt:ids", "s")
    client.hset("ctrt:s:s", mapping={"version": 2, "position": 5, "snapshot_position": 3})
    client.set("ctrt:snap:s", b"SNAPSHOT@3")
    client.rpush("ctrt:wal:s", (3).to_bytes(8, "big") + b"de")
    client.set("ctrt:alive:old-server", b"1")
    with pytest.raises(StoreError, match="has the layout of an older ctrt .* and its server "
                                         "old-server is live: stop the servers of the older "
                                         "version"):
        RedisStore(redis_server.url, OTHER_ENGINE)
    client.delete("ctrt:alive:old-server")
    other = RedisStore(redis_server.url, OTHER_ENGINE)  # a re-export: an empty namespace
    assert other.positions() == {}
    [held] = [usage for usage in other.namespaces() if usage.namespace.digest == ENGINE.digest]
    assert (held.streams, held.bytes) == (1, len(b"SNAPSHOT@3") + 8 + len(b"de"))
    other.close()
    store = RedisStore(redis_server.url, ENGINE)
    taken = store.take("s")
    store.close()
    assert (taken.version, taken.position, taken.snapshot, taken.tail) == \
        (3, 5, b"SNAPSHOT@3", b"de")
    assert sorted(key.decode() for key in client.keys("ctrt:*") if b":alive:" not in key) == \
        sorted(["ctrt:schema", "ctrt:namespaces", f"ctrt:ns:{ENGINE.digest}:ids",
                f"ctrt:ns:{ENGINE.digest}:s:s", f"ctrt:ns:{ENGINE.digest}:snap:s",
                f"ctrt:ns:{ENGINE.digest}:wal:s"])
    client.close()


def test_an_unreachable_store_is_a_clear_error(redis_server):
    redis_server.stop()
    with pytest.raises(StoreError, match=f"the Redis store redis://127.0.0.1:"
                                         f"{redis_server.port}/0 cannot be used"):
        RedisStore(redis_server.url, ENGINE)


def test_a_password_is_required_and_never_shown(tmp_path):
    server = RedisServer(tmp_path / "redis", password="s3cret").start()
    try:
        without = server.url.replace(":s3cret@", "")
        with pytest.raises(StoreError, match="refused the password") as refused:
            RedisStore(without, ENGINE)
        with pytest.raises(StoreError, match="refused the password") as wrong:
            RedisStore(without, ENGINE, password="wrong")
        assert "s3cret" not in str(refused.value) + str(wrong.value)
        for store in (RedisStore(server.url, ENGINE), RedisStore(without, ENGINE, "s3cret")):
            store.create(f"s{id(store)}")
            store.close()
    finally:
        server.stop()


def test_tls_with_a_certificate_the_client_checks(tmp_path):
    need_binary("openssl", "openssl")
    certificate, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(certificate)],
                   check=True, capture_output=True, timeout=60)
    server = RedisServer(tmp_path / "redis", tls=(certificate, key)).start()
    try:
        with pytest.raises(StoreError, match="cannot be used"):  # not trusted by default
            RedisStore(server.url, ENGINE)
        store = RedisStore(f"{server.url}?ssl_ca_certs={certificate}", ENGINE)
        store.create("s")
        version = store.take("s").version
        store.append("s", version, 0, b"over tls")
        assert store.take("s").tail == b"over tls"
        store.close()
    finally:
        server.stop()


def test_a_live_holder_is_asked_to_give_the_stream_up(redis_server):
    holder = RedisStore(redis_server.url, ENGINE)
    taker = RedisStore(redis_server.url, ENGINE, lease_s=WAIT_S)
    holder.create("s")
    version = holder.take("s").version
    holder.append("s", version, 0, b"ab")
    asked = []

    def give_up(stream_id):  # what a server does: store its snapshot, then release
        asked.append(stream_id)
        holder.put_snapshot(stream_id, version, 2, b"SNAPSHOT@2")
        holder.release(stream_id)

    holder.on_release(lambda stream_id: threading.Thread(target=give_up,
                                                         args=(stream_id,)).start())
    started = time.monotonic()
    taken = taker.take("s")
    assert time.monotonic() - started < WAIT_S  # it did not wait for the whole bound
    assert asked == ["s"]
    assert (taken.snapshot, taken.snapshot_position, taken.tail) == (b"SNAPSHOT@2", 2, b"")
    with pytest.raises(StaleVersion):
        holder.append("s", version, 2, b"LOST")
    holder.close()
    taker.close()


def test_a_gone_holder_is_taken_from_at_once(redis_server):
    holder = RedisStore(redis_server.url, ENGINE)
    holder.on_release(lambda stream_id: None)
    holder.create("s")
    holder.take("s")
    holder.close()  # its subscription ends as a dead process's connection does
    taker = RedisStore(redis_server.url, ENGINE, lease_s=WAIT_S)
    started = time.monotonic()
    taker.take("s")
    assert time.monotonic() - started < WAIT_S  # not the whole wait
    taker.close()


def test_a_holder_that_dies_while_asked_is_taken_from_when_its_connection_closes(
        redis_server):
    holder = RedisStore(redis_server.url, ENGINE)
    asked = threading.Event()
    holder.on_release(lambda stream_id: asked.set())  # hears the request, dies before it answers
    holder.create("s")
    holder.take("s")
    taker = RedisStore(redis_server.url, ENGINE, lease_s=WAIT_S)
    taken = []
    thread = threading.Thread(target=lambda: taken.append(taker.take("s")))
    started = time.monotonic()
    thread.start()
    assert asked.wait(WAIT_S)  # the taker is waiting for the holder now
    holder.close()
    thread.join(WAIT_S)
    assert taken and time.monotonic() - started < WAIT_S  # not the whole wait
    taker.close()


def test_a_holder_that_does_not_answer_is_taken_from_after_the_wait(redis_server):
    holder = RedisStore(redis_server.url, ENGINE)
    holder.on_release(lambda stream_id: None)  # hears the request, never gives it up
    holder.create("s")
    version = holder.take("s").version
    taker = RedisStore(redis_server.url, ENGINE, lease_s=0.5)
    started = time.monotonic()
    taken = taker.take("s")
    assert time.monotonic() - started >= 0.5
    assert taken.version == version + 1
    with pytest.raises(StaleVersion, match="nothing was written"):
        holder.append("s", version, 0, b"LOST")
    assert taker.take("s").tail == b""
    holder.close()
    taker.close()


def test_a_released_stream_keeps_its_holder_if_taken_since(redis_server, store):
    store.create("s")
    store.take("s")
    other = RedisStore(redis_server.url, ENGINE)
    other.take("s")
    store.release("s")  # a stale release must not clear the new holder
    client = redis.Redis.from_url(redis_server.url)
    assert client.hget(f"ctrt:ns:{ENGINE.digest}:s:s", "holder").decode() == other.name
    client.close()
    other.close()


def test_a_request_heard_after_the_taker_took_the_stream_is_dropped(redis_server):
    """A paused holder hears the request when it resumes; the stream is no longer its own, so
    it does not act on it (its next write is refused instead)."""
    holder = RedisStore(redis_server.url, ENGINE)
    heard, told = [], threading.Event()
    holder.on_release(lambda stream_id: (heard.append(stream_id), told.set()))
    for stream in ("s", "t"):
        holder.create(stream)
        holder.take(stream)
    client = redis.Redis.from_url(redis_server.url)
    # s was taken since, t was not
    client.hset(f"ctrt:ns:{ENGINE.digest}:s:s", "holder", "another-server")
    client.publish(f"ctrt:release:{holder.name}", "s")
    client.publish(f"ctrt:release:{holder.name}", "t")  # heard after s: one listener thread
    assert told.wait(WAIT_S)
    assert heard == ["t"]
    client.close()
    holder.close()
