"""Two `ctrt serve` processes on one Redis store (what each Ray replica is: one Session and its
engine thread on the shared store): each serves the other's streams from the store, equal to
an uninterrupted stream, and a holder paused past its claim (SIGSTOP, under the test's control:
support/pause.py) is fenced out: resumed and sent an append, it answers 409 and writes
nothing; sent a read, it answers from the store's current state, never its stale copy. Two
servers taking each other's streams at once hand them over without either waiting out the
store's bound on a silent holder."""

import threading
import time
from contextlib import contextmanager

import httpx
import pytest
import redis
from support.pause import paused
from support.redis_and_ray import RedisServer, stream_record
from support.serving import Reference, Server, assert_close, greedy

from compressive_rt.serving.redis_namespaces import PREFIX

pytestmark = [pytest.mark.serving, pytest.mark.slow]

GIVEN_UP_ANYWAY = "did not give it up within"  # redis_store.py's warning on a silent holder
LEASE_LOST = ("lease has expired; taken from it", "lease expired while it was asked")


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@contextmanager
def two_servers(engine_dir, tmp_path, redis_url, *options):
    """Two started servers on one redis-server; all stopped at the end."""
    # --store given again after the helper's own: the last one counts (its path names the logs)
    started = [Server(engine_dir, tmp_path / name, "--store", redis_url, "--streams", "2",
                      *options) for name in ("a", "b")]
    try:
        yield [server.start() for server in started]
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def servers(engine_dir, tmp_path, redis_server):
    with two_servers(engine_dir, tmp_path, redis_server.url) as started:
        yield started


def append(server, stream, text):
    return httpx.post(f"{server.url}/v1/streams/{stream}/append", json={"text": text},
                      timeout=60)


def test_each_server_serves_the_others_streams_from_the_store(servers, engine_dir):
    a, b = servers
    stream = httpx.post(f"{a.url}/v1/streams").json()["id"]
    reference = Reference(engine_dir)
    for server, text in [(a, "def main():\n"), (b, "    return 0\n"), (a, "# end\n"),
                         (b, "print(main())\n")]:
        answer = append(server, stream, text)
        assert answer.status_code == 200, answer.text
        assert_close(answer.json()["bits_per_byte"], reference.bits_per_byte(text.encode()))
    position = len("def main():\n    return 0\n# end\nprint(main())\n")
    for server in servers:
        assert httpx.get(f"{server.url}/v1/streams/{stream}").json()["position"] == position
        listed = httpx.get(f"{server.url}/v1/streams").json()["data"]
        assert [(s["id"], s["position"]) for s in listed] == [(stream, position)]
    assert httpx.delete(f"{b.url}/v1/streams/{stream}").status_code == 200
    for server in servers:
        gone = httpx.get(f"{server.url}/v1/streams/{stream}")
        assert gone.status_code == 404, gone.text
        assert append(server, stream, "x").status_code == 404


def test_a_stream_another_server_never_created_is_404(servers):
    answer = httpx.get(f"{servers[1].url}/v1/streams/st_nothing")
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "stream_not_found"


def test_a_holder_paused_past_its_claim_answers_409_and_writes_nothing(servers, engine_dir,
                                                                       redis_server):
    a, b = servers
    stream = httpx.post(f"{a.url}/v1/streams").json()["id"]
    reference = Reference(engine_dir)
    assert_close(append(a, stream, "held by a; ").json()["bits_per_byte"],
                 reference.bits_per_byte(b"held by a; "))
    held_by_a = stream_record(redis_server.url, stream)
    assert held_by_a["version"] == "1"
    with paused(a.process):
        taken = append(b, stream, "taken by b; ")  # b asks a, which cannot answer, then takes
        assert taken.status_code == 200, taken.text
        held_by_b = stream_record(redis_server.url, stream)
    # a runs again only now, with b's claim in the store: whatever a heard while paused, the
    # stream is b's, and a's resident copy is stale
    assert (held_by_b["version"], held_by_b["position"]) == ("2", "23")
    assert held_by_b["holder"] != held_by_a["holder"]
    assert_close(taken.json()["bits_per_byte"], reference.bits_per_byte(b"taken by b; "))
    # b took it once a's lease ran out (a, paused, could not renew it)
    assert any(lost in b.log() for lost in LEASE_LOST)
    refused = append(a, stream, "STALE WRITE")
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "stream_taken"
    assert httpx.get(f"{b.url}/v1/streams/{stream}").json()["position"] == \
        len(b"held by a; taken by b; ")
    for server, text in [(b, "b again; "), (a, "a again")]:  # a takes it back from the store
        answer = append(server, stream, text)
        assert answer.status_code == 200, answer.text
        assert_close(answer.json()["bits_per_byte"], reference.bits_per_byte(text.encode()))


def take_from_paused(a, b, stream, text):
    """With `a` paused, `b` appends `text` to the stream (taking it from `a` after the store's
    bounded wait); `a` resumes holding a stale resident copy."""
    with paused(a.process):
        taken = append(b, stream, text)
    assert taken.status_code == 200, taken.text
    return taken.json()["position"]


def test_a_holder_paused_while_its_stream_was_taken_never_reads_its_stale_copy(
        servers, engine_dir, redis_server):
    a, b = servers
    stream = httpx.post(f"{a.url}/v1/streams").json()["id"]
    history = b""
    for round_, read in enumerate(["describe", "generate", "snapshot"]):
        mine = f"a{round_}; ".encode()
        assert append(a, stream, mine.decode()).status_code == 200  # a holds it (again)
        history += mine
        held = httpx.get(f"{a.url}/v1/streams/{stream}").json()
        assert (held["position"], held["resident"]) == (len(history), True)
        theirs = f"taken by b {round_}; ".encode()
        history += theirs
        assert take_from_paused(a, b, stream, theirs.decode()) == len(history)
        if read == "describe":
            described = httpx.get(f"{a.url}/v1/streams/{stream}")
            assert described.status_code == 200, described.text
            assert (described.json()["position"], described.json()["resident"]) == \
                (len(history), False)
            assert described.json()["holder"] == stream_record(redis_server.url,
                                                               stream)["holder"]
        elif read == "generate":
            answer = httpx.post(f"{a.url}/v1/streams/{stream}/generate",
                                json={"max_tokens": 4, "temperature": 0}, timeout=60)
            assert answer.status_code == 200, answer.text
            tokens = answer.json()["choices"][0]["token_ids"]
            assert tokens == list(greedy(engine_dir, history, 4))
            history += bytes(tokens)
            assert answer.json()["position"] == len(history)
        else:
            snapshot = httpx.get(f"{a.url}/v1/streams/{stream}/snapshot", timeout=60)
            assert snapshot.status_code == 200, snapshot.text
            assert snapshot.headers["X-Stream-Position"] == str(len(history))
    assert stream_record(redis_server.url, stream)["position"] == str(len(history))
    assert httpx.get(f"{b.url}/v1/streams/{stream}").json()["position"] == len(history)


def test_crossed_hand_overs_wait_for_neither_holders_bound(servers, engine_dir):
    a, b = servers
    streams = {}
    for server in servers:  # each server holds one stream (resident: its slots are free)
        streams[server] = httpx.post(f"{server.url}/v1/streams").json()["id"]
        assert append(server, streams[server], "mine; ").status_code == 200
    answers = {}

    def take(server, stream):
        answers[server] = append(server, stream, "crossed; ")

    # a takes b's stream while b takes a's: each take asks the other holder to give it up
    crossing = [threading.Thread(target=take, args=(a, streams[b])),
                threading.Thread(target=take, args=(b, streams[a]))]
    for thread in crossing:
        thread.start()
    for thread in crossing:
        thread.join(timeout=120)
    reference = Reference(engine_dir)
    reference.append(b"mine; ")
    expected = reference.bits_per_byte(b"crossed; ")
    for server in servers:
        assert answers[server].status_code == 200, answers[server].text
        assert answers[server].json()["position"] == len("mine; crossed; ")
        assert_close(answers[server].json()["bits_per_byte"], expected)
    # neither take was stuck behind the other's: each holder gave its stream up when asked
    assert [server.log().count(GIVEN_UP_ANYWAY) for server in servers] == [0, 0]


def holder_name(redis_url, stream):
    return stream_record(redis_url, stream)["holder"]


def eventually(check, failure: str) -> None:
    """Wait until `check()` holds (Redis expiring a key, a server seeing Redis go or come)."""
    deadline = time.monotonic() + 60  # bounds a broken test only
    while not check():
        assert time.monotonic() < deadline, failure
        time.sleep(0.05)


def next_message(subscription) -> str:
    """The next message on the subscription (its confirmation skipped; None is what
    redis-py's get_message gives for that)."""
    deadline = time.monotonic() + 60  # bounds a broken test only
    while time.monotonic() < deadline:
        message = subscription.get_message(timeout=1)
        if message is not None:
            return message["data"].decode()
    raise AssertionError("no message within 60 s")


def test_a_take_waiting_for_a_paused_holder_holds_up_nothing_else(engine_dir, tmp_path,
                                                                 redis_server):
    # a lease long enough that the take below waits for the paused holder to answer
    with two_servers(engine_dir, tmp_path, redis_server.url, "--lease", "30") as (a, b):
        held_by_a = httpx.post(f"{a.url}/v1/streams").json()["id"]
        held_by_b = httpx.post(f"{b.url}/v1/streams").json()["id"]
        for server, stream in [(a, held_by_a), (b, held_by_b)]:
            assert append(server, stream, "mine; ").status_code == 200
        client = redis.Redis.from_url(redis_server.url)
        asks = client.pubsub(ignore_subscribe_messages=True)
        asks.subscribe(f"{PREFIX}release:{holder_name(redis_server.url, held_by_a)}")
        taken, answers = threading.Event(), {}

        def take():
            answers["taken"] = append(b, held_by_a, "taken; ")
            taken.set()

        taking = threading.Thread(target=take)
        try:
            with paused(a.process):
                taking.start()
                assert next_message(asks) == held_by_a  # b asked a for it: b's take waits
                # b waits for a (paused, its lease still valid): b's other streams go on
                meanwhile = append(b, held_by_b, "meanwhile; ")
                assert meanwhile.status_code == 200, meanwhile.text
                assert meanwhile.json()["position"] == len("mine; meanwhile; ")
                assert not taken.is_set()
            # a, resumed, hears the request and gives the stream up: the take goes on
            taking.join(120)
        finally:
            asks.close()
            client.close()
        assert answers["taken"].status_code == 200, answers["taken"].text
        reference = Reference(engine_dir)
        reference.append(b"mine; ")
        assert_close(answers["taken"].json()["bits_per_byte"],
                     reference.bits_per_byte(b"taken; "))
        assert b.log().count(GIVEN_UP_ANYWAY) == 0


def test_a_holder_paused_past_its_lease_loses_its_stream_to_the_next_taker_at_once(
        servers, engine_dir, redis_server):
    a, b = servers
    stream = httpx.post(f"{a.url}/v1/streams").json()["id"]
    assert append(a, stream, "held by a; ").status_code == 200
    lease = f"{PREFIX}alive:{holder_name(redis_server.url, stream)}"
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.exists(lease)
        with paused(a.process):
            eventually(lambda: not client.exists(lease), "a's lease did not expire")
            taken = append(b, stream, "taken by b; ")  # at once: a's lease is over
            assert taken.status_code == 200, taken.text
            assert LEASE_LOST[0] in b.log()
        assert b.log().count(GIVEN_UP_ANYWAY) == 0  # b did not wait for a's answer
        eventually(lambda: client.exists(lease), "a, resumed, did not renew its lease")
    finally:
        client.close()
    described = httpx.get(f"{a.url}/v1/streams/{stream}").json()
    assert (described["position"], described["resident"]) == (len("held by a; taken by b; "),
                                                              False)


def test_ready_is_503_while_the_store_cannot_be_reached(servers, redis_server):
    a, b = servers
    stream = httpx.post(f"{a.url}/v1/streams").json()["id"]
    assert append(a, stream, "before; ").status_code == 200
    assert httpx.get(f"{a.url}/ready").json() == {"status": "ready"}
    redis_server.kill()
    try:
        eventually(lambda: httpx.get(f"{a.url}/ready").status_code == 503,
                   "/ready stayed 200 with Redis down")
        assert httpx.get(f"{a.url}/ready").json() == {
            "status": "not ready", "reason": "the store cannot be reached"}
    finally:
        redis_server.start()
    for server in servers:
        eventually(lambda server=server: httpx.get(f"{server.url}/ready").status_code == 200,
                   "/ready did not come back with Redis")
    answer = append(b, stream, "after")
    assert answer.status_code == 200, answer.text
    assert answer.json()["position"] == len("before; after")
