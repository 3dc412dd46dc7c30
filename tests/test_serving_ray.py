"""`ctrt serve` on Ray Serve (serving/ray_app.py) on a local cluster of three nodes (a head with
Serve's controller, proxy and router; two nodes with one replica each, ONNX Runtime on one
thread), on a real redis-server: 16 streams spread over both nodes, each equal to a
single-process run; a replica killed in the middle of traffic loses nothing acknowledged, its
streams continue on the other replica from the store with the same numbers, and its clients see
503 with Retry-After or a delay, never a wrong answer. Bounded: every request has a time-out,
every loop a count, and the processes of the whole cluster stay under MEMORY_BOUND."""

import json
import os
import random
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from support.redis_and_ray import tree_rss_bytes
from support.rules import need_ray
from support.serving import Reference, assert_close, greedy

pytestmark = [pytest.mark.serving, pytest.mark.ray, pytest.mark.slow]

MEMORY_BOUND = 6 << 30  # measured here: about 2.5 GiB for the whole cluster
STREAMS = 16
TIMEOUT_S = 120
ALPHABET = "abcdefghij klmnopqrstuvwxyz.,;\n(){}=+-*/0123456789"


@pytest.fixture(scope="module")
def served(engine_dir, tmp_path_factory):
    need_ray()
    from support.rules import need_binary

    from compressive_rt.benchmarks.launchers.ray_cluster import RayCluster
    from compressive_rt.serving.ray_app import APP_NAME, RayDeployment
    from compressive_rt.serving.settings import ServeSettings

    need_binary("redis-server", "redis-server")
    with RayCluster(tmp_path_factory.mktemp("ray"), cpus=1) as cluster:
        cluster.deploy(APP_NAME, RayDeployment(
            str(engine_dir), cluster.redis.url, ServeSettings(model_name="tiny", streams=8),
            replicas=2, replicas_per_node=1, threads=1), "/")
        yield cluster
        resident = tree_rss_bytes(os.getpid())
        print(f"the cluster's processes and this one: {resident / 2**30:.2f} GiB resident")
        assert resident < MEMORY_BOUND


def text_of(rng: random.Random) -> str:
    return "".join(rng.choices(ALPHABET, k=rng.randint(5, 60)))


def new_stream(url: str) -> str:
    answer = httpx.post(f"{url}/v1/streams", timeout=TIMEOUT_S)
    assert answer.status_code == 200, answer.text
    return answer.json()["id"]


def both_replicas_answer(url: str) -> None:
    """Until requests reach both replicas: a test that kills or pauses one starts from two
    (Serve replaces a killed replica, which under load takes tens of seconds, and a test
    that paused the only live one would wait on that instead of on the lease)."""
    seen: set[str] = set()
    deadline = time.monotonic() + TIMEOUT_S
    with httpx.Client(base_url=url, timeout=TIMEOUT_S) as client:
        while len(seen) < 2:
            assert time.monotonic() < deadline, f"only {seen} answered in {TIMEOUT_S} s"
            answer = client.get("/v1/models")  # no stream: the router draws any live replica
            if answer.status_code == 200:
                seen.add(answer.headers["x-ctrt-replica"])
            else:
                time.sleep(0.2)


def test_sixteen_streams_over_two_nodes_equal_a_single_process_run(served, engine_dir):
    url = served.url

    def run(index: int) -> dict:
        rng = random.Random(index)
        stream, history, nodes, replicas, checks = new_stream(url), b"", set(), [], []
        with httpx.Client(base_url=url, timeout=TIMEOUT_S) as client:
            for _ in range(3):
                text = text_of(rng).encode()
                answer = client.post(f"/v1/streams/{stream}/append", json={"text": text.decode()})
                assert answer.status_code == 200, answer.text
                checks.append(("append", history, text, answer.json()["bits_per_byte"]))
                history += text
                nodes.add(answer.headers["x-ctrt-node"])
                replicas.append(answer.headers["x-ctrt-replica"])
            answer = client.post(f"/v1/streams/{stream}/generate",
                                 json={"max_tokens": 6, "temperature": 0,
                                       "stream": index % 2 == 0})
            assert answer.status_code == 200, answer.text
            if index % 2 == 0:  # SSE through Serve's proxy and the router
                lines = [line[6:] for line in answer.text.splitlines() if line.startswith("data")]
                assert lines[-1] == "[DONE]"
                tokens = sum((json.loads(line)["choices"][0]["token_ids"]
                              for line in lines[:-2]), [])
            else:
                tokens = answer.json()["choices"][0]["token_ids"]
            checks.append(("generate", history, bytes(tokens), None))
            history += bytes(tokens)
            described = client.get(f"/v1/streams/{stream}").json()
            assert described["position"] == len(history)
        return {"nodes": nodes, "replicas": replicas, "checks": checks}

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, range(STREAMS)))
    for result in results:
        reference, fed = Reference(engine_dir), 0
        for kind, before, data, bits_per_byte in result["checks"]:
            if kind == "append":
                if len(before) > fed:  # what the stream generated since
                    reference.append(before[fed:])
                assert_close(bits_per_byte, reference.bits_per_byte(data))
                fed = len(before) + len(data)
            else:
                assert data == greedy(engine_dir, before, len(data))
    nodes = set().union(*(result["nodes"] for result in results))
    assert len(nodes) == 2, nodes  # both worker nodes served streams
    stuck = sum(Counter(result["replicas"]).most_common(1)[0][1] for result in results)
    print(f"affinity: {stuck} of {3 * STREAMS} appends on their stream's usual replica")


def appended_per_replica(url: str) -> dict[str, float]:
    """ctrt_appended_tokens_total by replica, from one scrape of the router's /metrics."""
    from compressive_rt.serving.metrics import parse

    answer = httpx.get(f"{url}/metrics", timeout=TIMEOUT_S)
    assert answer.status_code == 200, answer.text
    return {sample.labels["replica"]: sample.value for family in parse(answer.text)
            for sample in family.samples if sample.name == "ctrt_appended_tokens_total"}


def test_metrics_gather_every_replica_under_its_name_and_add_up(served):
    """Through the proxy, /metrics is every replica's, each under its X-Ctrt-Replica name (and
    the router's): successive scrapes never go back for any replica, whichever replica a
    scrape would have landed on, and the counts add up to the appends made."""
    from compressive_rt.serving.metrics import sample_value

    url, rng = served.url, random.Random(7)
    streams: dict[str, str] = {}  # stream -> the replica that answered its first append
    appended, scrapes = 0, [appended_per_replica(url)]
    with httpx.Client(base_url=url, timeout=TIMEOUT_S) as client:
        for _ in range(12):  # streams until both replicas hold some (routing picks them)
            stream = new_stream(url)
            text = text_of(rng)
            answer = client.post(f"/v1/streams/{stream}/append", json={"text": text})
            assert answer.status_code == 200, answer.text
            streams[stream], appended = answer.headers["x-ctrt-replica"], appended + len(text)
            if len(set(streams.values())) == 2 and len(streams) >= 4:
                break
        replicas = set(streams.values())
        assert len(replicas) == 2, streams
        for round_ in range(3):
            scrapes.append(appended_per_replica(url))
            for stream in streams:
                text = text_of(rng)
                answer = client.post(f"/v1/streams/{stream}/append", json={"text": text})
                assert answer.status_code == 200, answer.text
                appended += len(text)
        scrapes += [appended_per_replica(url) for _ in range(3)]
    assert set(scrapes[-1]) == replicas  # the router appends nothing
    for earlier, later in zip(scrapes, scrapes[1:]):
        assert all(later[name] >= earlier.get(name, 0) for name in later), (earlier, later)
    assert scrapes[-3] == scrapes[-2] == scrapes[-1]  # no traffic: every scrape the same
    grown = sum(scrapes[-1].values()) - sum(scrapes[0].values())
    assert grown == appended
    text = httpx.get(f"{url}/metrics", timeout=TIMEOUT_S).text
    assert sample_value(text, "ctrt_scrape_replicas", {"answered": "yes"}) == [2.0]
    assert sample_value(text, "ctrt_scrape_replicas", {"answered": "no"}) == [0.0]


def test_a_refusal_of_the_router_is_in_its_metrics(served):
    from compressive_rt.serving.metrics import sample_value

    def refused() -> list[float]:
        text = httpx.get(f"{served.url}/metrics", timeout=TIMEOUT_S).text
        return sample_value(text, "ctrt_refused_total",
                            {"bound": "request_too_large", "replica": "router"})

    before = refused()
    host, port = httpx.URL(served.url).host, httpx.URL(served.url).port
    with socket.create_connection((host, port), timeout=TIMEOUT_S) as sock:
        # a body declared larger than any this service takes (sent: none of it)
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     b"application/json\r\nContent-Length: 1073741824\r\n\r\n")
        answer = b""
        for _ in range(100):  # until the error's code or the end of the connection
            chunk = sock.recv(65536)
            answer += chunk
            if not chunk or b"request_too_large" in answer:
                break
    assert answer.startswith(b"HTTP/1.1 413 ") and b"request_too_large" in answer, answer
    assert refused() == [(before[0] if before else 0) + 1]


def test_a_replica_killed_mid_traffic_loses_nothing_acknowledged(served, engine_dir):
    import ray

    from compressive_rt.serving.ray_app import APP_NAME, REPLICA

    url, clients = served.url, 4
    both_replicas_answer(url)
    streams = [new_stream(url) for _ in range(clients)]
    history = {stream: b"" for stream in streams}
    acknowledged = {stream: [] for stream in streams}  # (start, text, bits_per_byte)
    statuses: Counter = Counter()
    first = httpx.post(f"{url}/v1/streams/{streams[0]}/append", json={"text": "first "},
                       timeout=TIMEOUT_S)
    assert first.status_code == 200, first.text
    acknowledged[streams[0]].append((0, b"first ", first.json()["bits_per_byte"]))
    history[streams[0]] = b"first "
    victim = first.headers["x-ctrt-replica"]
    # the store names the stream's holder as answers name their replica
    described = httpx.get(f"{url}/v1/streams/{streams[0]}", timeout=TIMEOUT_S)
    assert described.json()["holder"] == victim, described.text
    # stream 0 (on the victim) stops after its third append until the kill is done: its
    # later appends meet the kill, however fast the others run and however slow the kill
    traffic, killed, killed_at, recovered_at = threading.Event(), threading.Event(), [], []
    errors: list[BaseException] = []

    def position(client, stream) -> int:
        for _ in range(200):
            answer = client.get(f"/v1/streams/{stream}")
            statuses[answer.status_code] += 1
            if answer.status_code == 200:
                return answer.json()["position"]
            assert answer.status_code in (503, 504) and "retry-after" in answer.headers, \
                answer.text
            time.sleep(float(answer.headers["retry-after"]) / 4)
        raise AssertionError(f"stream {stream} did not answer")

    def append_all(stream, seed):
        rng = random.Random(seed)
        try:
            with httpx.Client(base_url=url, timeout=TIMEOUT_S) as client:
                for count in range(12):
                    if count == 3:
                        traffic.set()
                        if stream == streams[0]:
                            assert killed.wait(TIMEOUT_S), "the replica was not killed"
                    text = text_of(rng).encode()
                    for _ in range(50):  # until acknowledged, or found in the store
                        answer = client.post(f"/v1/streams/{stream}/append",
                                             json={"text": text.decode()})
                        statuses[answer.status_code] += 1
                        if answer.status_code == 200:
                            start = len(history[stream])
                            assert answer.json()["position"] == start + len(text)
                            acknowledged[stream].append(
                                (start, text, answer.json()["bits_per_byte"]))
                            history[stream] += text
                            if killed_at and stream == streams[0] and not recovered_at:
                                recovered_at.append(time.monotonic())
                            break
                        # 503: the replica died under it; 504: the router found the dead
                        # replica's lease lapsed first (load decides which comes first).
                        # Either way the outcome is unknown: the store says
                        assert answer.status_code in (503, 504), answer.text
                        assert int(answer.headers["retry-after"]) >= 1
                        landed = position(client, stream)  # the answer was lost, not the append?
                        if landed == len(history[stream]) + len(text):
                            history[stream] += text
                            break
                        assert landed == len(history[stream])
                        time.sleep(0.25)
                    else:
                        raise AssertionError(f"stream {stream}: no append for 50 tries")
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=append_all, args=(stream, index))
               for index, stream in enumerate(streams)]
    for thread in threads:
        thread.start()
    assert traffic.wait(TIMEOUT_S)
    ray.kill(ray.get_actor(f"SERVE_REPLICA::{APP_NAME}#{REPLICA}#{victim}", namespace="serve"),
             no_restart=True)
    killed_at.append(time.monotonic())
    killed.set()
    for thread in threads:
        thread.join(TIMEOUT_S * 3)
    assert not errors, errors
    assert set(statuses) <= {200, 503, 504}, statuses
    assert recovered_at, "the killed replica's stream never answered again"
    print(f"failover: {recovered_at[0] - killed_at[0]:.2f} s from the kill to the killed "
          f"replica's stream answering again; statuses {dict(statuses)}")
    with httpx.Client(base_url=url, timeout=TIMEOUT_S) as client:
        for stream in streams:
            assert position(client, stream) == len(history[stream])
    for stream in streams:
        reference, fed = Reference(engine_dir), 0
        for start, text, bits_per_byte in acknowledged[stream]:
            if start > fed:  # appends that landed without an answer
                reference.append(history[stream][fed:start])
            assert_close(bits_per_byte, reference.bits_per_byte(text))
            fed = start + len(text)
        assert len(acknowledged[stream]) >= 10


def test_a_paused_replica_loses_its_streams_to_the_other_within_its_lease(served, engine_dir):
    from support.pause import Process, paused
    from support.redis_and_ray import stream_record

    from compressive_rt.serving.ray_routing import LEASE_POLL_FRACTION
    from compressive_rt.serving.settings import ServeSettings

    settings = ServeSettings()
    # the router leaves the replica out a lease (and one poll of the leases) after it stopped;
    # a request already waiting on it is then 504 (outcome unknown) and retried after
    # Retry-After with its Idempotency-Key; the other
    # replica takes each stream from the store at once (one restore of a tiny engine: 3 s
    # leaves room for a loaded machine). Serve's health check would need >= 15 s to replace it
    bound_s = settings.lease_s * (1 + LEASE_POLL_FRACTION) + settings.retry_after_s + 3
    url, held = served.url, {}
    both_replicas_answer(url)  # the replica-kill test's victim is replaced by now
    with httpx.Client(base_url=url, timeout=TIMEOUT_S) as client:
        for _ in range(30):  # three streams on one replica
            stream = new_stream(url)
            answer = client.post(f"/v1/streams/{stream}/append", json={"text": "held; "})
            assert answer.status_code == 200, answer.text
            owner = (answer.headers["x-ctrt-replica"], int(answer.headers["x-ctrt-pid"]))
            held.setdefault(owner, []).append(stream)
            if len(held[owner]) == 3:
                break
    (victim, pid), streams = next((owner, got) for owner, got in held.items() if len(got) == 3)
    statuses: Counter = Counter()
    answered: dict = {}

    def until_answered(key, method, path, body=None):
        # retried with one Idempotency-Key: a 504 (sent to the paused replica, outcome
        # unknown) may only be retried with it
        headers = {"Idempotency-Key": f"pause-{key}"} if method == "POST" else {}
        with httpx.Client(base_url=url, timeout=TIMEOUT_S) as client:
            for _ in range(20):
                answer = client.request(method, path, json=body, headers=headers)
                statuses[answer.status_code] += 1
                if answer.status_code == 200:
                    answered[key] = (answer, time.monotonic())
                    return
                code = answer.json()["error"]["code"]
                assert (answer.status_code, code) in {(503, "replica_unavailable"),
                                                      (504, "replica_lapsed")}, answer.text
                time.sleep(int(answer.headers["retry-after"]))

    work = [(stream, "POST", f"/v1/streams/{stream}/append", {"text": "moved; "})
            for stream in streams] + [(f"models {index}", "GET", "/v1/models", None)
                                      for index in range(4)]
    with paused(Process(pid)):
        paused_at = time.monotonic()
        with ThreadPoolExecutor(len(work)) as pool:
            for done in [pool.submit(until_answered, *item) for item in work]:
                done.result(timeout=TIMEOUT_S)
    took = {key: at - paused_at for key, (_, at) in answered.items()}
    print(f"rerouted after a pause: {max(took.values()):.2f} s at most (bound {bound_s:.2f} s); "
          f"statuses {dict(statuses)}")
    assert set(answered) == {key for key, *_ in work}
    for key, (answer, _) in answered.items():
        assert answer.headers["x-ctrt-replica"] != victim
        assert took[key] < bound_s, took
    reference = Reference(engine_dir)
    reference.append(b"held; ")
    expected = reference.bits_per_byte(b"moved; ")
    for stream in streams:
        assert_close(answered[stream][0].json()["bits_per_byte"], expected)
        assert stream_record(served.redis.url, stream)["holder"] != victim
    # resumed, the paused replica answers nothing from its stale copies: it refuses (409,
    # dropping the copy) or takes the stream back from the store
    expected = reference.bits_per_byte(b"after")  # after "held; moved; " (it fed them)
    with httpx.Client(base_url=url, timeout=TIMEOUT_S) as client:
        for stream in streams:
            for _ in range(5):
                answer = client.post(f"/v1/streams/{stream}/append", json={"text": "after"})
                if answer.status_code != 409:
                    break
                assert answer.headers["x-ctrt-replica"] == victim
                assert answer.json()["error"]["code"] == "stream_taken"
            assert answer.status_code == 200, answer.text
            assert answer.json()["position"] == len("held; moved; after")
            assert_close(answer.json()["bits_per_byte"], expected)


def test_serve_ray_ends_with_one_line_when_its_application_is_deleted(served):
    """The module's last test: it deletes the application."""
    from ray import serve

    from compressive_rt.errors import CtrtError
    from compressive_rt.serving.ray_app import APP_NAME
    from compressive_rt.serving.ray_server import watch_until

    failures: list[BaseException] = []

    def watch():
        try:
            watch_until(threading.Event())
        except CtrtError as exc:
            failures.append(exc)

    watching = threading.Thread(target=watch)
    watching.start()
    serve.delete(APP_NAME)
    watching.join(TIMEOUT_S)
    assert not watching.is_alive()
    assert [str(failure) for failure in failures] == [
        f"the application {APP_NAME!r} was deleted from Serve under this command; the service "
        f"is down"]
