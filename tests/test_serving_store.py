"""The local stream store (serving/sqlite_store.py): durable across reopening, fencing by
version (a stale writer writes nothing), one process per store, one engine per store."""

import multiprocessing

import pytest
from hypothesis import given, settings
from serving_helpers import STORE_OPERATIONS, replay

from compressive_rt.serving.sqlite_store import SQLiteStore
from compressive_rt.serving.store import StaleVersion, StoreError, UnknownStream

pytestmark = pytest.mark.serving

ENGINE = '{"graphs": {"segment": "aaaa"}}'


@pytest.fixture
def store(tmp_path):
    opened = SQLiteStore(tmp_path / "store", ENGINE)
    yield opened
    opened.close()


def test_a_taken_stream_holds_its_snapshot_and_the_log_after_it(store, tmp_path):
    store.create("s")
    version = store.take("s").version
    store.append("s", version, 0, b"abc")
    store.put_snapshot("s", version, 3, b"SNAPSHOT@3")
    store.append("s", version, 3, b"de")
    store.append("s", version, 5, b"f")
    store.close()
    reopened = SQLiteStore(tmp_path / "store", ENGINE)
    taken = reopened.take("s")
    assert (taken.position, taken.snapshot, taken.snapshot_position, taken.tail) == \
        (6, b"SNAPSHOT@3", 3, b"def")
    assert taken.version == version + 1
    assert reopened.positions() == {"s": 6}
    reopened.close()


def test_a_writer_whose_stream_was_taken_since_writes_nothing(store):
    store.create("s")
    old = store.take("s").version
    store.append("s", old, 0, b"ab")
    new = store.take("s").version  # another server took it
    with pytest.raises(StaleVersion, match="taken by another server .*nothing was written"):
        store.append("s", old, 2, b"LOST")
    with pytest.raises(StaleVersion):
        store.put_snapshot("s", old, 2, b"LOST")
    store.append("s", new, 2, b"cd")
    taken = store.take("s")
    assert (taken.position, taken.snapshot, taken.tail) == (4, None, b"abcd")


def test_a_record_that_does_not_follow_the_stored_position_is_refused(store):
    store.create("s")
    version = store.take("s").version
    store.append("s", version, 0, b"ab")
    with pytest.raises(StoreError, match="a record at position 5 does not follow its stored "
                                         "position 2"):
        store.append("s", version, 5, b"x")
    assert store.take("s").tail == b"ab"


def test_unknown_and_deleted_streams(store):
    with pytest.raises(UnknownStream):
        store.take("nope")
    store.create("s")
    version = store.take("s").version
    store.append("s", version, 0, b"ab")
    store.delete("s")
    assert store.positions() == {}
    with pytest.raises(UnknownStream):
        store.append("s", version, 2, b"c")
    store.create("t")
    with pytest.raises(StoreError, match="stream t exists already"):
        store.create("t")


def _try_open(path, queue):
    try:
        SQLiteStore(path, ENGINE)
        queue.put("opened")
    except StoreError as exc:
        queue.put(str(exc))


def test_a_second_process_cannot_open_a_store_in_use(store):
    queue = multiprocessing.get_context("spawn").Queue()
    process = multiprocessing.get_context("spawn").Process(
        target=_try_open, args=(store.directory, queue))
    process.start()
    process.join(60)
    assert "is in use by another process" in queue.get(timeout=5)


def test_a_store_of_another_engine_is_refused(store):
    store.close()
    with pytest.raises(StoreError, match="holds streams of another engine"):
        SQLiteStore(store.directory, '{"graphs": {"segment": "bbbb"}}')


@settings(max_examples=40)
@given(STORE_OPERATIONS)
def test_the_store_replays_exactly_the_acknowledged_history(tmp_path_factory, operations):
    """Whatever the order of appends, snapshots, takes, stale writes and reopenings, taking the
    stream yields its history: snapshot + log = every acknowledged token, in order."""
    path = tmp_path_factory.mktemp("store")
    store, history, snapshot_at = replay(lambda: SQLiteStore(path, ENGINE), "s", operations)
    taken = store.take("s")
    store.close()
    assert taken.snapshot_position == snapshot_at
    assert (taken.snapshot or b"") + taken.tail == history
