"""The stream store's contract (serving/store.py), one suite for both stores: the local one
(SQLite, sqlite_store.py) and the shared one on a real redis-server (redis_store.py; without
redis-server it skips with the reason, under CI=true it fails). Durable across reopening,
fencing by version (a stale writer writes nothing), records that follow the position, unknown
and deleted streams, a namespace per engine and streams moved between them, and any order of
operations replays exactly the acknowledged history."""

import itertools

import pytest
from hypothesis import given, settings
from support.redis_and_ray import RedisServer
from support.serving import STORE_OPERATIONS, replay

from compressive_rt.serving.namespaces import EngineNamespace
from compressive_rt.serving.redis_store import RedisStore
from compressive_rt.serving.sqlite_store import SQLiteStore
from compressive_rt.serving.store import (
    Receipt,
    StaleVersion,
    StoreError,
    StreamMoved,
    UnknownStream,
)

ENGINE = EngineNamespace('{"graphs": {"segment": "aaaa"}}')
OTHER_ENGINE = EngineNamespace('{"graphs": {"segment": "bbbb"}}')
NAMES = itertools.count()


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def new_store(request, tmp_path_factory):
    """new_store() -> open(engine=ENGINE): opens (and reopens) one fresh store of the kind;
    every store opened is closed at the end."""
    opened = []
    server = None
    if request.param == "redis":
        server = RedisServer(tmp_path_factory.mktemp("redis")).start()

    def new():
        place = server.url if server else tmp_path_factory.mktemp("store")
        kind = RedisStore if server else SQLiteStore

        def open_store(engine=ENGINE):
            opened.append(kind(place, engine))
            return opened[-1]
        return open_store

    yield new
    for store in opened:
        store.close()
    if server is not None:
        server.stop()


@pytest.fixture
def open_store(new_store):
    return new_store()


@pytest.fixture
def stream():
    """A stream id no other test uses (the Redis server is shared by the module)."""
    return f"s{next(NAMES)}"


def test_a_taken_stream_holds_its_snapshot_and_the_log_after_it(open_store, stream):
    store = open_store()
    store.create(stream)
    version = store.take(stream).version
    store.append(stream, version, 0, b"abc")
    store.put_snapshot(stream, version, 3, b"SNAPSHOT@3")
    store.append(stream, version, 3, b"de")
    store.append(stream, version, 5, b"f")
    store.close()
    reopened = open_store()
    taken = reopened.take(stream)
    assert (taken.position, taken.snapshot, taken.snapshot_position, taken.tail) == \
        (6, b"SNAPSHOT@3", 3, b"def")
    assert taken.version == version + 1
    assert reopened.positions()[stream] == 6


def test_a_writer_whose_stream_was_taken_since_writes_nothing(open_store, stream):
    store = open_store()
    store.create(stream)
    old = store.take(stream).version
    store.append(stream, old, 0, b"ab")
    new = store.take(stream).version  # another server took it
    with pytest.raises(StaleVersion, match=f"stream {stream} was taken by another server "
                                           f"\\(version {new}, this server holds {old}\\): "
                                           f"nothing was written"):
        store.append(stream, old, 2, b"LOST")
    with pytest.raises(StaleVersion):
        store.put_snapshot(stream, old, 2, b"LOST")
    store.append(stream, new, 2, b"cd")
    taken = store.take(stream)
    assert (taken.position, taken.snapshot, taken.tail) == (4, None, b"abcd")


def test_a_record_that_does_not_follow_the_stored_position_is_refused(open_store, stream):
    store = open_store()
    store.create(stream)
    version = store.take(stream).version
    store.append(stream, version, 0, b"ab")
    with pytest.raises(StoreError, match="a record at position 5 does not follow its stored "
                                         "position 2"):
        store.append(stream, version, 5, b"x")
    assert store.take(stream).tail == b"ab"


def test_unknown_and_deleted_streams(open_store, stream):
    store = open_store()
    with pytest.raises(UnknownStream, match=f"no stream {stream}x in the store"):
        store.take(f"{stream}x")
    store.create(stream)
    version = store.take(stream).version
    store.append(stream, version, 0, b"ab")
    store.delete(stream)
    assert stream not in store.positions()
    with pytest.raises(UnknownStream):
        store.append(stream, version, 2, b"c")
    with pytest.raises(UnknownStream):
        store.delete(stream)
    store.create(f"{stream}t")
    with pytest.raises(StoreError, match=f"stream {stream}t exists already"):
        store.create(f"{stream}t")


def test_receipts_are_kept_with_their_writes_the_latest_few_past_checkpoints(open_store,
                                                                             stream):
    store = open_store()
    store.create(stream)
    version = store.take(stream).version
    receipts = [Receipt(f"k{i}", f"digest{i}", f'{{"position": {i + 1}}}') for i in range(4)]
    for i, receipt in enumerate(receipts):
        store.append(stream, version, i, b"x", receipt, keep=2)
        if i == 1:
            store.put_snapshot(stream, version, 2, b"SNAPSHOT@2")  # cuts the log, not these
    with pytest.raises(StaleVersion):  # a refused write keeps no receipt either
        store.append(stream, version - 1, 4, b"y", Receipt("lost", "d", "{}"), keep=2)
    store.append(stream, version, 4, b"z")  # no key: no receipt
    store.close()
    reopened = open_store()
    assert reopened.take(stream).receipts == tuple(receipts[2:])
    reopened.delete(stream)
    reopened.create(stream)
    assert reopened.take(stream).receipts == ()


def test_an_append_with_a_snapshot_replaces_the_log_in_one_write(open_store, stream):
    store = open_store()
    store.create(stream)
    version = store.take(stream).version
    store.append(stream, version, 0, b"abc")
    store.append(stream, version, 3, b"defg", Receipt("k", "d", "{}"), keep=4,
                 snapshot=b"SNAPSHOT@7")
    store.append(stream, version, 7, b"h")
    taken = store.take(stream)
    assert (taken.position, taken.snapshot, taken.snapshot_position, taken.tail) == \
        (8, b"SNAPSHOT@7", 7, b"h")
    assert taken.receipts == (Receipt("k", "d", "{}"),)
    with pytest.raises(StaleVersion):  # fenced like any write: nothing of it lands
        store.append(stream, version, 8, b"i", snapshot=b"LOST")
    assert store.take(stream).snapshot == b"SNAPSHOT@7"


def test_another_engine_opens_a_namespace_of_its_own(open_store, stream):
    """A re-exported engine starts with no streams rather than being refused; neither engine
    sees, nor may take, the other's streams."""
    first = open_store()
    first.create(stream)
    version = first.take(stream).version
    first.append(stream, version, 0, b"first engine")
    first.close()
    other = open_store(OTHER_ENGINE)
    assert stream not in other.positions()
    with pytest.raises(UnknownStream):
        other.take(stream)
    other.create(stream)  # the same id in another namespace is another stream
    other.append(stream, other.take(stream).version, 0, b"other")
    usage = {found.namespace.digest: found for found in other.namespaces()}
    assert usage[OTHER_ENGINE.digest].namespace == OTHER_ENGINE
    assert usage[ENGINE.digest].streams >= 1
    other.close()
    again = open_store()
    assert again.take(stream).tail == b"first engine"


def test_a_stream_moves_to_another_namespace_whole_and_leaves_a_409_behind(open_store, stream):
    """`move` (ctrt store migrate's step): the log and receipts go with the stream, the
    snapshot is the converted one; the old namespace refuses its old holder and any taker with
    StreamMoved (a 409), and a second move finds nothing to move."""
    source = open_store()
    source.create(stream)
    holder = source.take(stream).version  # a server of the old engine holds it
    source.append(stream, holder, 0, b"abc")
    source.put_snapshot(stream, holder, 3, b"OLD SNAPSHOT@3")
    source.append(stream, holder, 3, b"de", Receipt("k", "d", '{"position": 5}'), keep=2)
    mover = source.take(stream).version  # the migration fences the holder out
    source.move(stream, mover, OTHER_ENGINE, b"NEW SNAPSHOT@3")
    for refused in (lambda: source.append(stream, holder, 5, b"LOST"),
                    lambda: source.take(stream), lambda: source.delete(stream)):
        with pytest.raises(StreamMoved, match=f"stream {stream} was moved to another engine's "
                                              f"namespace {OTHER_ENGINE.digest}"):
            refused()
    with pytest.raises(StreamMoved):  # a rerun: already moved
        source.move(stream, mover, OTHER_ENGINE, b"NEW SNAPSHOT@3")
    assert stream not in source.positions()
    source.close()
    target = open_store(OTHER_ENGINE)
    taken = target.take(stream)
    assert (taken.position, taken.snapshot, taken.snapshot_position, taken.tail) == \
        (5, b"NEW SNAPSHOT@3", 3, b"de")
    assert taken.receipts == (Receipt("k", "d", '{"position": 5}'),)
    assert taken.version > mover
    assert target.positions()[stream] == 5


def test_a_move_by_a_mover_taken_from_since_moves_nothing(open_store, stream):
    store = open_store()
    store.create(stream)
    mover = store.take(stream).version
    retaken = store.take(stream).version  # the old engine's server took it back
    store.append(stream, retaken, 0, b"acknowledged")
    with pytest.raises(StaleVersion):
        store.move(stream, mover, OTHER_ENGINE, None)
    assert store.take(stream).tail == b"acknowledged"
    store.close()
    assert stream not in open_store(OTHER_ENGINE).positions()


@settings(max_examples=30, deadline=None)
@given(STORE_OPERATIONS)
def test_the_store_replays_exactly_the_acknowledged_history(new_store, operations):
    """Whatever the order of appends, snapshots, takes, stale writes and reopenings, taking the
    stream yields its history: snapshot + log = every acknowledged token, in order."""
    stream = f"s{next(NAMES)}"
    store, history, snapshot_at = replay(new_store(), stream, operations)
    taken = store.take(stream)
    assert store.positions()[stream] == len(history)
    assert taken.snapshot_position == snapshot_at
    assert (taken.snapshot or b"") + taken.tail == history
