"""Safe retries (serving/idempotency.py), in-process: an append or a generation sent again with
the same Idempotency-Key and body gets the first answer and applies nothing; the same key with
another body is 422; a stream keeps its latest --idempotency-keys keys; and a 504 says whether
the request may have been applied (its write held at the store, under the test's control) and
names the key to retry with; the same key while the first request runs is 409."""

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from starlette.testclient import TestClient
from support.serving import Reference, assert_close, greedy
from test_serving_api import metric

from compressive_rt.runtime.session import Session
from compressive_rt.runtime.snapshot import most_snapshot_bytes
from compressive_rt.serving.app import create_app
from compressive_rt.serving.engine import Engine, row_specs
from compressive_rt.serving.metrics import Metrics
from compressive_rt.serving.namespaces import engine_namespace
from compressive_rt.serving.server import open_engine
from compressive_rt.serving.settings import ServeSettings
from compressive_rt.serving.sqlite_store import SQLiteStore

TEXT = "a stream appended to once, whatever the retries"


@pytest.fixture
def client(engine_dir, tmp_path):
    app, _ = open_engine(engine_dir, ServeSettings(streams=2, idempotency_keys=2),
                         tmp_path / "store", threads=1)
    with TestClient(app) as running:
        yield running


def new_stream(client):
    return client.post("/v1/streams").json()["id"]


def append(client, stream, text, key=None):
    headers = {} if key is None else {"Idempotency-Key": key}
    return client.post(f"/v1/streams/{stream}/append", json={"text": text}, headers=headers)


def test_an_append_retried_with_its_key_is_answered_again_and_applied_once(client, engine_dir):
    stream = new_stream(client)
    first = append(client, stream, TEXT, key="k-1")
    assert first.status_code == 200, first.text
    again = client.post(f"/v1/streams/{stream}/append", headers={"Idempotency-Key": "k-1"},
                        content=json.dumps({"text": TEXT}, indent=2))  # the same body, spaced
    assert again.json() == first.json()
    assert client.get(f"/v1/streams/{stream}").json()["position"] == len(TEXT)
    reference = Reference(engine_dir)
    assert_close(first.json()["bits_per_byte"], reference.bits_per_byte(TEXT.encode()))
    assert_close(append(client, stream, "next").json()["bits_per_byte"],
                 reference.bits_per_byte(b"next"))


def test_the_same_key_with_another_body_is_422_and_applies_nothing(client):
    stream = new_stream(client)
    append(client, stream, TEXT, key="k-1")
    other = append(client, stream, TEXT + "!", key="k-1")
    assert other.status_code == 422
    assert other.json()["error"] == {
        "message": f"Idempotency-Key 'k-1' was used on stream {stream} by a request with "
                   f"another body: use a new key for a new request",
        "type": "invalid_request_error", "param": "Idempotency-Key",
        "code": "idempotency_key_reused"}
    assert client.get(f"/v1/streams/{stream}").json()["position"] == len(TEXT)


def test_a_generation_retried_with_its_key_gets_its_tokens_again(client, engine_dir):
    stream = new_stream(client)
    request = {"prompt": "def main(", "max_tokens": 10, "temperature": 0}
    headers = {"Idempotency-Key": "g-1"}
    first = client.post(f"/v1/streams/{stream}/generate", json=request, headers=headers).json()
    assert first["choices"][0]["token_ids"] == list(greedy(engine_dir, b"def main(", 10))
    again = client.post(f"/v1/streams/{stream}/generate", json=request, headers=headers).json()
    assert again["choices"] == first["choices"] and again["position"] == first["position"] == 19
    with client.stream("POST", f"/v1/streams/{stream}/generate", headers=headers,
                       json={**request, "stream": True}) as streamed:
        assert streamed.status_code == 422  # the body differs: "stream" is part of it
    assert client.get(f"/v1/streams/{stream}").json()["position"] == 19


def test_a_stream_keeps_its_latest_keys(client):
    stream = new_stream(client)
    for key in ("k-1", "k-2", "k-3"):  # --idempotency-keys 2: k-1 is forgotten
        append(client, stream, key, key=key)
    assert append(client, stream, "k-3", key="k-3").json()["position"] == 9  # answered again
    assert append(client, stream, "k-1", key="k-1").json()["position"] == 12  # a new request


@pytest.mark.parametrize("key", ["", "x" * 256, "a\tb"])
def test_a_malformed_key_is_400(client, key):
    answer = append(client, new_stream(client), TEXT, key=key)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "Idempotency-Key"


class HeldStore(SQLiteStore):
    """The local store whose log writes wait, while `hold` is set, until `release` is: a
    write under way for as long as the test says."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.hold, self.held, self.release = threading.Event(), threading.Event(), \
            threading.Event()

    def append(self, *args, **kwargs) -> None:
        if self.hold.is_set():
            self.held.set()
            assert self.release.wait(60)
        super().append(*args, **kwargs)


@pytest.fixture
def held_server(engine_dir, tmp_path):
    """held_server(request_timeout_s) -> (a TestClient, its HeldStore)."""
    started = []

    def start(request_timeout_s):
        settings = ServeSettings(streams=2, request_timeout_s=request_timeout_s)
        session = Session(engine_dir, max_streams=settings.streams, threads=1)
        store = HeldStore(tmp_path / "store", engine_namespace(session.manifest))
        metrics = Metrics("retries")
        app = create_app(Engine(session, store, settings, metrics), settings, metrics,
                         most_snapshot_bytes(session.manifest, row_specs(session)))
        client = TestClient(app)
        client.__enter__()
        started.append((client, store))
        return client, store

    yield start
    for client, store in started:
        store.release.set()
        client.__exit__(None, None, None)


@pytest.fixture
def held(held_server):
    return held_server(2)


def test_a_504_while_the_write_is_under_way_says_it_may_have_applied_and_names_the_key(held):
    client, store = held
    stream = new_stream(client)
    store.hold.set()
    timed_out = append(client, stream, TEXT, key="k-504")
    assert timed_out.status_code == 504 and store.held.is_set()
    error = timed_out.json()["error"]
    assert error["code"] == "timeout_may_have_applied"
    assert "may have been applied: retry with the same Idempotency-Key 'k-504'" in \
        error["message"]
    store.hold.clear()
    store.release.set()  # the write goes through, acknowledged to nobody
    # a request queued on the stream runs once that write is durable (until then, the retry
    # would be 409: the key is still in use)
    assert client.get(f"/v1/streams/{stream}/snapshot").headers["x-stream-position"] == \
        str(len(TEXT))
    retried = append(client, stream, TEXT, key="k-504")
    assert retried.status_code == 200 and retried.json()["position"] == len(TEXT)
    assert client.get(f"/v1/streams/{stream}").json()["position"] == len(TEXT)


def test_a_504_before_the_write_says_nothing_was_applied(held):
    """One slot's worth of work queued behind a write held at the store: the queued append
    times out before it starts."""
    client, store = held
    stream = new_stream(client)
    store.hold.set()
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(append, client, stream, "first", "k-first")
        assert store.held.wait(60)
        queued = append(client, stream, "queued")
        store.hold.clear()
        store.release.set()
        assert first.result(timeout=60).status_code == 504
    assert queued.status_code == 504
    assert queued.json()["error"]["code"] == "timeout"
    assert "was cancelled before it changed anything" in queued.json()["error"]["message"]
    # queued on the stream, it runs once the first write is durable: "queued" never landed
    assert client.get(f"/v1/streams/{stream}/snapshot").headers["x-stream-position"] == \
        str(len("first"))


def test_the_same_key_while_the_first_request_runs_is_409(held):
    client, store = held
    stream = new_stream(client)
    store.hold.set()
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(append, client, stream, TEXT, "busy")
        assert store.held.wait(60)  # the first one's write is under way
        busy = append(client, stream, TEXT, key="busy")
        store.hold.clear()
        store.release.set()
        first.result(timeout=60)
    assert busy.status_code == 409
    assert busy.json()["error"]["code"] == "idempotency_key_in_use"
    assert f"Idempotency-Key 'busy' is still running on stream {stream}" in \
        busy.json()["error"]["message"]
    client.get(f"/v1/streams/{stream}/snapshot")  # runs once the first write is durable
    assert append(client, stream, TEXT, key="busy").json()["position"] == len(TEXT)


def test_jobs_that_finish_on_the_spot_let_the_next_one_start(held_server):
    """Two snapshot downloads queued behind an append whose write is held: once it is durable,
    the first download finishes on the spot and the second starts without another event."""
    client, store = held_server(60)
    stream = new_stream(client)
    store.hold.set()
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(append, client, stream, TEXT)
        assert store.held.wait(60)
        downloads = [pool.submit(client.get, f"/v1/streams/{stream}/snapshot")
                     for _ in range(2)]
        while metric(client, "ctrt_queue_depth") < 2:  # both queued behind the append
            assert not first.done()
        store.hold.clear()
        store.release.set()
        assert first.result(timeout=60).status_code == 200
        for download in downloads:
            answer = download.result(timeout=60)
            assert answer.status_code == 200
            assert answer.headers["x-stream-position"] == str(len(TEXT))
