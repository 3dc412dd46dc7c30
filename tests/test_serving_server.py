"""`ctrt serve` as a user runs it: a subprocess on 127.0.0.1 on a free port, driven by the
official openai client, httpx, and raw HTTP; disconnects, a full queue, concurrent requests on
one stream, SIGTERM and API keys. Every server is stopped at the end of its test."""

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from support.serving import Reference, Server, assert_close, greedy, sse_events

from compressive_rt.serving.metrics import sample_value

pytestmark = [pytest.mark.serving, pytest.mark.slow]


@pytest.fixture(scope="module")
def shared(engine_dir, tmp_path_factory):
    """One server for the tests that only read and write their own streams."""
    running = Server(engine_dir, tmp_path_factory.mktemp("shared") / "store",
                     "--model-name", "tiny", "--streams", "4").start()
    yield running
    running.stop()


def metric(url, name):
    values = sample_value(httpx.get(f"{url}/metrics").text, name)
    return values[0] if values else None


def test_the_openai_client_completes_with_and_without_streaming(shared):
    client = openai.OpenAI(base_url=f"{shared.url}/v1", api_key="none", max_retries=0)
    assert [model.id for model in client.models.list()] == ["tiny"]
    whole = client.completions.create(model="tiny", prompt="def main(", max_tokens=20,
                                      temperature=0.7, seed=11, extra_body={"top_k": 40})
    choice = whole.choices[0]
    assert choice.finish_reason == "length" and whole.usage.completion_tokens == 20
    assert len(choice.token_ids) == 20  # the extension field, read through the client
    pieces = client.completions.create(model="tiny", prompt="def main(", max_tokens=20,
                                       temperature=0.7, seed=11, extra_body={"top_k": 40},
                                       stream=True)
    chunks = list(pieces)
    assert "".join(chunk.choices[0].text for chunk in chunks) == choice.text
    assert chunks[-1].choices[0].finish_reason == "length"
    with pytest.raises(openai.NotFoundError, match="the model 'gpt-4' does not exist") as error:
        client.completions.create(model="gpt-4", prompt="a")
    assert error.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="max_tokens must be in") as error:
        client.completions.create(model="tiny", prompt="a", max_tokens=-3)
    assert error.value.param == "max_tokens"


def test_greedy_over_http_equals_ctrt_generate_greedy(shared, engine_dir):
    prompts = ["def main(", "import numpy as np\n", "class "]
    command = [str(Path(sys.executable).parent / "ctrt"), "generate", str(engine_dir),
               "--greedy", "--max-new-tokens", "30", "--json", "--threads", "1"]
    for prompt in prompts:
        command += ["--prompt", prompt]
    generated = json.loads(subprocess.run(command, capture_output=True, text=True, check=True,
                                          timeout=300).stdout)
    answer = httpx.post(f"{shared.url}/v1/completions", timeout=60, json={
        "model": "tiny", "prompt": prompts, "max_tokens": 30, "temperature": 0}).json()
    assert [c["token_ids"] for c in answer["choices"]] == \
        [r["tokens"] for r in generated["requests"]]


def refuses_connections(url: str, tries: int = 600) -> bool:
    """True once a connection to the server is refused (asked every 0.1 s, at most `tries`
    times: the bound only ends a broken test)."""
    for _ in range(tries):
        try:
            httpx.get(f"{url}/health", timeout=5)
        except httpx.ConnectError:
            return True
        time.sleep(0.1)
    return False


def raw_http(port, request: bytes) -> tuple[int, bytes]:
    """(status, whole answer) of raw request bytes; the server closes after answering (a
    half-closed socket would count as a client that left)."""
    request = request.replace(b"\r\nHost: a\r\n", b"\r\nHost: a\r\nConnection: close\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1]), answer


@pytest.mark.parametrize("request_bytes, status, says", [
    (b"POST /v1/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\n{bad json", 400,
     b"not valid JSON"),
    (b"POST /v1/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\n\xff\xfe\x00{", 400,
     b"not valid JSON"),
    (b"POST /v1/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999\r\n\r\n{}", 413,
     b"request_too_large"),
    (b"POST /v1/completions HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
     + b"".join(b"10000\r\n" + b"x" * 0x10000 + b"\r\n" for _ in range(20)) + b"0\r\n\r\n",
     413, b"request_too_large"),
    (b"POST /v1/streams/st_nope/append HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n"
     b'{"text":"x"}', 404, b"stream_not_found"),
    (b"GARBAGE\r\n\r\n", 400, b""),
    (b"POST /v1/completions HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n", 400, b""),
])
def test_raw_bad_http_gets_a_4xx_and_never_a_traceback(shared, request_bytes, status, says):
    got, answer = raw_http(shared.port, request_bytes)
    assert got == status and says in answer and b"Traceback" not in answer
    assert httpx.get(f"{shared.url}/health").status_code == 200


def test_requests_on_one_stream_run_one_at_a_time(shared, engine_dir):
    """Five appends sent at once: each runs on the history of those answered before it
    (positions follow each other, scores equal an uninterrupted stream fed in that order)."""
    stream = httpx.post(f"{shared.url}/v1/streams").json()["id"]
    texts = [(f"request {i}: " + "abcdefgh" * 150).encode() for i in range(5)]
    barrier = threading.Barrier(len(texts))

    def send(text):
        barrier.wait()
        return httpx.post(f"{shared.url}/v1/streams/{stream}/append", timeout=120,
                          json={"text": text.decode()}).json()

    with ThreadPoolExecutor(len(texts)) as pool:
        answers = list(pool.map(send, texts, timeout=180))
    reference, position = Reference(engine_dir), 0
    for answer, text in sorted(zip(answers, texts, strict=True),
                               key=lambda pair: pair[0]["position"]):
        position += len(text)
        assert answer["position"] == position
        assert_close(answer["bits_per_byte"], reference.bits_per_byte(text))


def test_a_client_that_disconnects_mid_stream_cancels_and_frees_its_slot(server, engine_dir):
    running = server("--streams", "1", "--max-tokens", "100000")
    with httpx.stream("POST", f"{running.url}/v1/completions", timeout=60, json={
            "prompt": "a", "max_tokens": 100000, "stream": True}) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
    # the only slot: this request runs once the disconnect has cancelled the first
    request = {"prompt": "def ", "max_tokens": 8, "temperature": 0}
    answer = httpx.post(f"{running.url}/v1/completions", timeout=120, json=request).json()
    assert answer["choices"][0]["token_ids"] == list(greedy(engine_dir, b"def ", 8))
    generated = metric(running.url, "ctrt_generated_tokens_total")
    assert generated < 100000
    httpx.post(f"{running.url}/v1/completions", timeout=120, json=request)
    assert metric(running.url, "ctrt_generated_tokens_total") == generated + 8


def test_a_generation_whose_client_leaves_leaves_its_stream_as_it_was(server, engine_dir):
    running = server("--max-tokens", "100000")
    stream = httpx.post(f"{running.url}/v1/streams").json()["id"]
    text = b"before the generation that never finishes"
    httpx.post(f"{running.url}/v1/streams/{stream}/append", json={"text": text.decode()})
    with httpx.stream("POST", f"{running.url}/v1/streams/{stream}/generate", timeout=60,
                      json={"max_tokens": 100000, "stream": True}) as response:
        assert next(response.iter_lines()).startswith("data: ")
    reference = Reference(engine_dir)
    reference.append(text)
    # queued behind the generation on the stream: it runs once the generation was dropped
    answer = httpx.post(f"{running.url}/v1/streams/{stream}/append", json={"text": "after"},
                        timeout=120)
    assert answer.json()["position"] == len(text) + len(b"after")
    assert_close(answer.json()["bits_per_byte"], reference.bits_per_byte(b"after"))


def test_a_retry_after_kill_9_gets_the_first_answer_and_appends_nothing(server):
    running = server()
    stream = httpx.post(f"{running.url}/v1/streams").json()["id"]
    request = {"url": f"{running.url}/v1/streams/{stream}/append", "timeout": 60,
               "json": {"text": "acknowledged, then the server was killed"},
               "headers": {"Idempotency-Key": "before-the-kill"}}
    first = httpx.post(**request)
    assert first.status_code == 200, first.text
    running.kill()
    again = server()  # the same store
    retried = httpx.post(**{**request, "url": f"{again.url}/v1/streams/{stream}/append"})
    assert retried.json() == first.json()
    assert httpx.get(f"{again.url}/v1/streams/{stream}").json()["position"] == \
        len(b"acknowledged, then the server was killed")


def test_a_burst_of_four_times_the_queue_completes_or_gets_429(server, engine_dir):
    running = server("--streams", "2", "--queue-size", "3")
    prompts = [f"prompt {i} " for i in range(12)]
    barrier = threading.Barrier(len(prompts))

    def send(prompt):
        barrier.wait()
        return httpx.post(f"{running.url}/v1/completions", timeout=120, json={
            "prompt": prompt, "max_tokens": 48, "temperature": 0})

    with ThreadPoolExecutor(len(prompts)) as pool:
        answers = list(pool.map(send, prompts, timeout=180))
    statuses = [answer.status_code for answer in answers]
    assert set(statuses) <= {200, 429} and statuses.count(429) >= 1
    assert statuses.count(200) >= 3
    for prompt, answer in zip(prompts, answers, strict=True):
        if answer.status_code == 429:
            assert answer.headers["retry-after"] == "1"
            assert answer.json()["error"]["code"] == "queue_full"
        else:
            assert answer.json()["choices"][0]["token_ids"] == \
                list(greedy(engine_dir, prompt.encode(), 48))


def test_sigterm_stops_accepting_finishes_in_flight_requests_and_exits_0(server):
    running = server("--grace", "60")
    stream = httpx.post(f"{running.url}/v1/streams").json()["id"]
    text = b"a stream that must outlive its server " * 4
    httpx.post(f"{running.url}/v1/streams/{stream}/append", json={"text": text.decode()})
    with httpx.stream("POST", f"{running.url}/v1/completions", timeout=120, json={
            "prompt": "def ", "max_tokens": 1500, "temperature": 0, "stream": True}) as response:
        lines = response.iter_lines()
        first = next(lines)
        running.process.send_signal(signal.SIGTERM)
        assert refuses_connections(running.url)  # no longer accepting

        events = sse_events([first, *lines])  # the request finishes: every chunk, [DONE]
    assert sum(len(e["choices"][0]["token_ids"]) for e in events) == 1500
    assert running.process.wait(60) == 0
    assert "every stream is in the store" in running.log()


def test_streams_spilled_at_sigterm_come_back_after_a_restart(server, engine_dir, tmp_path):
    running = server("--snapshot-every", "100000")
    stream = httpx.post(f"{running.url}/v1/streams").json()["id"]
    text = b"held in memory until the server stops " * 3
    httpx.post(f"{running.url}/v1/streams/{stream}/append", json={"text": text.decode()})
    assert running.terminate() == 0
    with sqlite3.connect(tmp_path / "store" / "streams.sqlite3") as db:  # spilled: a snapshot
        assert db.execute("SELECT position, snapshot_position FROM streams").fetchall() == \
            [(len(text), len(text))]
    again = server()
    info = httpx.get(f"{again.url}/v1/streams/{stream}").json()
    assert (info["position"], info["resident"]) == (len(text), False)
    reference = Reference(engine_dir)
    reference.append(text)
    answer = httpx.post(f"{again.url}/v1/streams/{stream}/append", json={"text": "next"}).json()
    assert_close(answer["bits_per_byte"], reference.bits_per_byte(b"next"))


def test_the_api_key_comes_from_the_environment_or_a_file(server, tmp_path):
    from_env = server(env={"CTRT_API_KEY": "env-key"}, store=tmp_path / "a")
    key_file = tmp_path / "key"
    key_file.write_text("file-key\n")
    from_file = server("--api-key-file", str(key_file), store=tmp_path / "b")
    for running, key in ((from_env, "env-key"), (from_file, "file-key")):
        assert httpx.get(f"{running.url}/v1/models").status_code == 401
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key=key, max_retries=0)
        assert client.models.list().data[0].object == "model"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{running.url}/v1", api_key="wrong",
                          max_retries=0).models.list()
