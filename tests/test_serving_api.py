"""The HTTP API in-process (Starlette's TestClient runs the app and its lifespan): OpenAI's
completions shape, persistent streams against an uninterrupted in-process stream, errors in
OpenAI's shape, the API key, limits and metrics."""

import logging
import re
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest
from starlette.testclient import TestClient
from support.serving import Reference, assert_close, greedy, sse_events

from compressive_rt.runtime.backends.ort import OrtCpuBackend
from compressive_rt.runtime.manifest import load_manifest
from compressive_rt.runtime.sampling import Sampling
from compressive_rt.runtime.scheduler import Scheduler
from compressive_rt.runtime.session import Session
from compressive_rt.serving.metrics import parse, sample_value
from compressive_rt.serving.server import open_engine
from compressive_rt.serving.settings import ServeSettings

pytestmark = pytest.mark.serving

MODEL = "tiny"
TEXT_A = b"The Compressive Transformer keeps old memories " * 3
TEXT_B = "and compresses them: \u00e9t\u00e9, caf\u00e9, na\u00efve.\n".encode()


def metric(client, name, labels=None):
    """A sample's value from GET /metrics (its labels include `labels`)."""
    values = sample_value(client.get("/metrics").text, name, labels)
    return values[0] if values else None


# ---- completions ----------------------------------------------------------------------------
def test_models_lists_the_engine_and_an_unknown_model_is_404(served):
    client = served()
    assert client.get("/v1/models").json()["data"][0]["id"] == MODEL
    assert client.get(f"/v1/models/{MODEL}").json()["id"] == MODEL
    answer = client.post("/v1/completions", json={"model": "gpt-4", "prompt": "a"})
    assert answer.status_code == 404
    assert answer.json()["error"] == {
        "message": "the model 'gpt-4' does not exist; this server serves 'tiny' (GET "
                   "/v1/models)", "type": "not_found_error", "param": "model",
        "code": "model_not_found"}


def test_greedy_completions_equal_the_scheduler_token_for_token(served, engine_dir):
    client = served()
    prompts = ["def main(", "import os\n", "x" * 20]
    answer = client.post("/v1/completions", json={
        "model": MODEL, "prompt": prompts, "max_tokens": 20, "temperature": 0}).json()
    with Scheduler(Session(engine_dir, max_streams=3)) as scheduler:
        ids = [scheduler.submit(p, 20, Sampling(greedy=True)) for p in prompts]
        for _ in scheduler.run():
            pass
        expected = [scheduler.result(i) for i in ids]
    assert [c["index"] for c in answer["choices"]] == [0, 1, 2]
    for choice, completion in zip(answer["choices"], expected, strict=True):
        assert choice["token_ids"] == list(completion.tokens)
        assert choice["text"] == completion.text
        assert choice["finish_reason"] == "length"
    assert answer["usage"] == {"prompt_tokens": sum(len(p) for p in prompts),
                               "completion_tokens": 60, "total_tokens": 60 + 39}
    assert answer["object"] == "text_completion" and answer["model"] == MODEL


def test_streamed_chunks_add_up_to_the_whole_answer(served):
    client = served()
    request = {"prompt": ["Once upon", "a"], "max_tokens": 12, "temperature": 0.8, "seed": 7,
               "top_k": 50}
    whole = client.post("/v1/completions", json=request).json()
    with client.stream("POST", "/v1/completions",
                       json={**request, "stream": True,
                             "stream_options": {"include_usage": True}}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response.iter_lines())
    *chunks, usage = events
    assert usage["choices"] == [] and usage["usage"] == whole["usage"]
    for index, choice in enumerate(whole["choices"]):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == index]
        assert "".join(c["text"] for c in mine) == choice["text"]
        assert sum((c["token_ids"] for c in mine), []) == choice["token_ids"]
        assert [c["finish_reason"] for c in mine] == [None] * (len(mine) - 1) + ["length"]


def test_the_stop_sequence_ends_the_text_and_is_left_out_of_it(served):
    client = served()
    request = {"prompt": "abc", "max_tokens": 40, "temperature": 1.0, "seed": 3}
    tokens = client.post("/v1/completions", json=request).json()["choices"][0]["token_ids"]
    at = next(i for i, t in enumerate(tokens) if i >= 2 and t < 128)  # an ASCII byte
    stop = chr(tokens[at])
    answer = client.post("/v1/completions", json={**request, "stop": [stop]}).json()
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["token_ids"] == tokens[:at + 1]  # the same samples, up to the stop
    assert choice["text"] == bytes(tokens[:at]).decode("utf-8", errors="replace")
    with client.stream("POST", "/v1/completions",
                       json={**request, "stop": stop, "stream": True}) as response:
        chunks = sse_events(response.iter_lines())
    assert "".join(c["choices"][0]["text"] for c in chunks) == choice["text"]


def test_requests_waiting_for_a_slot_start_as_soon_as_one_frees(served, engine_dir):
    """One slot, three requests at once: each starts when the one before it finishes, though
    nothing else arrives to wake the engine."""
    client = served(streams=1)
    prompts = [f"request {i}" for i in range(3)]
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda p: client.post("/v1/completions", json={
            "prompt": p, "max_tokens": 10, "temperature": 0}), prompts, timeout=120))
    for prompt, answer in zip(prompts, answers, strict=True):
        assert answer.json()["choices"][0]["token_ids"] == \
            list(greedy(engine_dir, prompt.encode(), 10))


@pytest.mark.parametrize("body, param, message", [
    (b"{not json", None, "the request body is not valid JSON"),
    (b"[1, 2]", None, "the request body must be a JSON object, got list"),
    (b"{}", "prompt", "prompt is required"),
    (b'{"prompt": 5}', "prompt", "prompt: input should be a valid string, got 5"),
    (b'{"prompt": ["a", 5]}', "prompt[1]", "prompt[1]: input should be a valid string"),
    (b'{"prompt": ""}', "prompt", "prompt is empty"),
    (b'{"prompt": []}', "prompt", "prompt is an empty list"),
    (b'{"prompt": "a", "max_tokens": "5"}', "max_tokens", "input should be a valid integer"),
    (b'{"prompt": "a", "max_tokens": 2.0}', "max_tokens", "input should be a valid integer"),
    (b'{"prompt": "a", "max_tokens": 0}', "max_tokens", r"must be in [1, 4096]"),
    (b'{"prompt": "a", "max_tokens": 5000}', "max_tokens", r"must be in [1, 4096]"),
    (b'{"prompt": "a", "temperature": true}', "temperature", "input should be a valid number"),
    (b'{"prompt": "a", "temperature": 2.5}', "temperature", "must be in [0, 2]"),
    (b'{"prompt": "a", "top_p": 0}', "top_p", "top_p must be in (0, 1]"),
    (b'{"prompt": "a", "top_k": -1}', "top_k", "top_k must be >= 0"),
    (b'{"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}', "stop", "at most 4"),
    (b'{"prompt": "a", "n": 2}', "n", "n=2 is not supported"),
    (b'{"prompt": "a", "stream": "yes"}', "stream", "input should be a valid boolean"),
    (b'{"prompt": "\\ud800"}', "prompt", "prompt is not valid Unicode (surrogates not allowed"),
    (b'{"prompt": "a", "stop": "\\udfff"}', "stop", "stop is not valid Unicode"),
])
def test_bad_requests_get_400_naming_the_field(served, body, param, message):
    answer = served().post("/v1/completions", content=body,
                           headers={"content-type": "application/json"})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert message in error["message"]


def test_body_and_prompt_limits_are_413_and_400(served):
    client = served(max_body_bytes=2000, max_prompt_bytes=100)
    big = client.post("/v1/completions", json={"prompt": "x" * 3000})
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    long = client.post("/v1/completions", json={"prompt": "x" * 101})
    assert long.status_code == 400 and long.json()["error"]["param"] == "prompt"
    assert "at most 100 (--max-prompt-bytes)" in long.json()["error"]["message"]


def test_unknown_routes_and_methods_answer_in_openai_shape(served):
    client = served()
    missing = client.get("/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    wrong = client.get("/v1/completions")
    assert wrong.status_code == 405 and "error" in wrong.json()
    assert client.get("/v1/streams/has%20space").status_code == 404


def test_the_api_key_guards_the_v1_routes_only(served):
    client = served(api_key="s3cret")
    assert client.get("/v1/models").status_code == 401
    wrong = client.get("/v1/models", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert wrong.json()["error"]["type"] == "authentication_error"
    assert client.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code \
        == 200
    assert client.get("/health").status_code == 200 and client.get("/ready").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_the_request_timeout_is_a_504_and_cancels_the_request(served, engine_dir):
    """The 504 cancels the request before it is sent: with one slot, the next request runs
    (it would wait for 100000 tokens otherwise), and tokens are counted only for requests
    that run."""
    client = served(streams=1, request_timeout_s=2, max_tokens_limit=100000)
    answer = client.post("/v1/completions", json={"prompt": "a", "max_tokens": 100000})
    assert answer.status_code == 504 and answer.json()["error"]["code"] == "timeout"
    assert "and was cancelled before it changed anything" in answer.json()["error"]["message"]
    request = {"prompt": "def ", "max_tokens": 8, "temperature": 0}
    assert client.post("/v1/completions", json=request).json()["choices"][0]["token_ids"] == \
        list(greedy(engine_dir, b"def ", 8))
    generated = metric(client, "ctrt_generated_tokens_total")
    client.post("/v1/completions", json=request)
    assert metric(client, "ctrt_generated_tokens_total") == generated + 8


def test_metrics_count_requests_tokens_and_latencies(served):
    client = served()
    client.post("/v1/completions", json={"prompt": "ab", "max_tokens": 5})
    client.post("/v1/completions", json={"prompt": ""})
    assert metric(client, "ctrt_requests_total",
                  {"route": "/v1/completions", "status": "200"}) == 1
    assert metric(client, "ctrt_requests_total",
                  {"route": "/v1/completions", "status": "400"}) == 1
    assert metric(client, "ctrt_generated_tokens_total") == 5
    assert metric(client, "ctrt_time_to_first_token_seconds_count") == 1
    assert metric(client, "ctrt_inter_token_latency_seconds_count") == 4
    assert metric(client, "ctrt_engine_step_seconds_count", {"kind": "generate"}) >= 5
    assert metric(client, "ctrt_queue_depth") == 0


def test_every_sample_of_metrics_is_labelled_with_the_servers_name(engine_dir, tmp_path):
    from starlette.testclient import TestClient

    app, engine = open_engine(engine_dir, ServeSettings(model_name=MODEL, streams=2),
                              tmp_path / "store", threads=1, name="alpha")
    with TestClient(app) as client:
        client.post("/v1/completions", json={"prompt": "ab", "max_tokens": 3})
        text = client.get("/metrics").text
    samples = [sample for family in parse(text) for sample in family.samples]
    assert len(samples) > 50
    assert {sample.labels["replica"] for sample in samples} == {"alpha"}
    assert sample_value(text, "ctrt_generated_tokens_total") == [3.0]
    assert sample_value(text, "ctrt_requests_total",
                        {"route": "/v1/completions", "status": "200", "replica": "alpha"}) == [1.0]


def test_each_request_writes_one_access_log_line(served, caplog):
    client = served()
    with caplog.at_level(logging.INFO, logger="compressive_rt.serving.access"):
        stream = new_stream(client)
        append(client, stream, b"hello")
        client.post(f"/v1/streams/{stream}/generate", json={"max_tokens": 2, "stream": True})
        client.get("/v1/streams/nope")
        client.post("/v1/completions", json={"prompt": ""})
    lines = [record.getMessage() for record in caplog.records
             if record.name == "compressive_rt.serving.access"]
    pattern = re.compile(r"(\S+) (\S+) (\d{3}) stream=(\S+) (\d+\.\d) ms replica=(\S+)")
    parsed = [pattern.fullmatch(line).groups() for line in lines]
    assert [fields[:4] for fields in parsed] == [
        ("POST", "/v1/streams", "200", "-"),
        ("POST", f"/v1/streams/{stream}/append", "200", stream),
        ("POST", f"/v1/streams/{stream}/generate", "200", stream),
        ("GET", "/v1/streams/nope", "404", "nope"),
        ("POST", "/v1/completions", "400", "-")]
    replicas = {fields[5] for fields in parsed}
    assert len(replicas) == 1 and replicas.pop().startswith(socket.gethostname() + "-")


def test_no_access_log_writes_none(served, caplog):
    client = served(access_log=False)
    with caplog.at_level(logging.INFO, logger="compressive_rt.serving.access"):
        assert client.get("/health").status_code == 200
    assert not [record for record in caplog.records
                if record.name == "compressive_rt.serving.access"]


# ---- persistent streams ---------------------------------------------------------------------
def new_stream(client):
    answer = client.post("/v1/streams").json()
    assert answer["position"] == 0 and answer["resident"] is False
    return answer["id"]


def append(client, stream, text: bytes):
    answer = client.post(f"/v1/streams/{stream}/append", json={"text": text.decode()})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_appending_a_then_b_scores_what_appending_ab_does(served, engine_dir):
    client = served()
    split, whole = new_stream(client), new_stream(client)
    first, second = append(client, split, TEXT_A), append(client, split, TEXT_B)
    joined = append(client, whole, TEXT_A + TEXT_B)
    assert first["predicted_bytes"] == len(TEXT_A) - 1  # a new stream's first byte: no prediction
    assert second["predicted_bytes"] == len(TEXT_B)  # scored from the stream's last logits
    assert_close(first["bits"] + second["bits"], joined["bits"])
    reference = Reference(engine_dir)
    assert_close(first["bits_per_byte"], reference.bits_per_byte(TEXT_A))
    assert_close(second["bits_per_byte"], reference.bits_per_byte(TEXT_B))
    assert (second["position"], joined["position"]) == (len(TEXT_A + TEXT_B),) * 2


def test_a_long_append_is_scored_chunk_by_chunk(served, engine_dir):
    client = served()
    stream = new_stream(client)
    text = bytes(range(32, 127)) * 3  # 285 bytes: 36 segments of L=8
    steps_before = metric(client, "ctrt_engine_step_seconds_count", {"kind": "append"}) or 0
    answer = append(client, stream, text)
    steps = metric(client, "ctrt_engine_step_seconds_count", {"kind": "append"}) - steps_before
    assert steps >= len(text) / 8  # one feed per segment at most: never [n, V] logits at once
    assert_close(answer["bits_per_byte"], Reference(engine_dir).bits_per_byte(text))


def test_generate_continues_the_stream_and_feeds_every_token(served, engine_dir):
    client = served()
    stream = new_stream(client)
    append(client, stream, TEXT_A)
    answer = client.post(f"/v1/streams/{stream}/generate",
                         json={"max_tokens": 12, "temperature": 0}).json()
    expected = greedy(engine_dir, TEXT_A, 12)
    assert answer["choices"][0]["token_ids"] == list(expected)
    assert answer["position"] == len(TEXT_A) + 12 and answer["stream_id"] == stream
    more = client.post(f"/v1/streams/{stream}/generate",
                       json={"prompt": "def f(", "max_tokens": 5, "temperature": 0}).json()
    history = TEXT_A + expected + b"def f("
    assert more["choices"][0]["token_ids"] == list(greedy(engine_dir, history, 5))
    history += bytes(more["choices"][0]["token_ids"])
    tail = append(client, stream, TEXT_B)
    reference = Reference(engine_dir)
    reference.append(history)
    assert_close(tail["bits_per_byte"], reference.bits_per_byte(TEXT_B))
    assert tail["position"] == len(history + TEXT_B)


def test_a_streamed_generation_ends_with_the_streams_position(served, engine_dir):
    client = served()
    stream = new_stream(client)
    with client.stream("POST", f"/v1/streams/{stream}/generate",
                       json={"prompt": "ab", "max_tokens": 6, "temperature": 0,
                             "stream": True}) as response:
        *chunks, last = sse_events(response.iter_lines())
    assert sum((c["choices"][0]["token_ids"] for c in chunks), []) == \
        list(greedy(engine_dir, b"ab", 6))
    assert last["position"] == 8 and last["usage"]["completion_tokens"] == 6


def test_generating_on_a_stream_with_no_history_needs_a_prompt(served):
    client = served()
    stream = new_stream(client)
    answer = client.post(f"/v1/streams/{stream}/generate", json={"max_tokens": 3})
    assert answer.status_code == 400 and "has not been fed" in answer.json()["error"]["message"]
    assert client.get(f"/v1/streams/{stream}").json()["position"] == 0


def test_a_snapshot_round_trips_over_http(served, engine_dir):
    client = served()
    source, target = new_stream(client), new_stream(client)
    append(client, source, TEXT_A)
    append(client, target, b"something else entirely")
    snapshot = client.get(f"/v1/streams/{source}/snapshot")
    assert snapshot.headers["x-stream-position"] == str(len(TEXT_A))
    session = Session(engine_dir)  # the runtime reads what the server hands out
    assert session.position(session.restore(snapshot.content)) == len(TEXT_A)
    put = client.put(f"/v1/streams/{target}/snapshot", content=snapshot.content,
                     headers={"content-type": "application/octet-stream"})
    assert put.status_code == 200 and put.json()["position"] == len(TEXT_A)
    reference = Reference(engine_dir)
    reference.append(TEXT_A)
    expected = reference.bits_per_byte(TEXT_B)
    assert_close(append(client, target, TEXT_B)["bits_per_byte"], expected)
    assert_close(append(client, source, TEXT_B)["bits_per_byte"], expected)


def test_an_uploaded_bad_snapshot_is_refused_and_changes_nothing(served, engine_dir):
    client = served()
    stream = new_stream(client)
    append(client, stream, TEXT_A)
    for bad in (b"garbage", b"PK\x03\x04" + bytes(100)):
        answer = client.put(f"/v1/streams/{stream}/snapshot", content=bad)
        assert answer.status_code == 400 and "snapshot" in answer.json()["error"]["message"]
    assert client.put(f"/v1/streams/{stream}/snapshot", content=b"").status_code == 400
    reference = Reference(engine_dir)
    reference.append(TEXT_A)
    assert_close(append(client, stream, TEXT_B)["bits_per_byte"], reference.bits_per_byte(TEXT_B))


def test_streams_beyond_the_resident_limit_spill_and_resume_exactly(served, engine_dir):
    client = served(streams=2)
    streams = [new_stream(client) for _ in range(4)]
    references = [Reference(engine_dir) for _ in streams]
    for round_ in range(3):
        for stream, reference in zip(streams, references, strict=True):
            text = TEXT_A[round_ * 9:round_ * 9 + 13] + stream.encode()
            assert_close(append(client, stream, text)["bits_per_byte"],
                         reference.bits_per_byte(text))
    resident = [client.get(f"/v1/streams/{s}").json()["resident"] for s in streams]
    assert sum(resident) == 2 and resident[-2:] == [True, True]
    assert metric(client, "ctrt_spills_total") >= 6
    assert metric(client, "ctrt_resident_streams") == 2
    assert metric(client, "ctrt_stored_streams") == 4


def test_streams_survive_a_restart_of_the_server(served, engine_dir, tmp_path):
    client = served(store=tmp_path / "kept")
    stream = new_stream(client)
    append(client, stream, TEXT_A)
    client.__exit__(None, None, None)  # a graceful stop: every stream is stored
    again = served(store=tmp_path / "kept")
    info = again.get(f"/v1/streams/{stream}").json()
    assert (info["position"], info["resident"]) == (len(TEXT_A), False)
    reference = Reference(engine_dir)
    reference.append(TEXT_A)
    assert_close(append(again, stream, TEXT_B)["bits_per_byte"], reference.bits_per_byte(TEXT_B))


def test_an_append_of_a_lone_surrogate_is_400_naming_text(served):
    client = served()
    stream = new_stream(client)
    answer = client.post(f"/v1/streams/{stream}/append", content=b'{"text": "a\\ud800"}')
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "text"
    assert client.get(f"/v1/streams/{stream}").json()["position"] == 0


@pytest.mark.parametrize("store_kind", ["sqlite", "redis"])
def test_creates_beyond_the_stream_limit_are_429_until_one_is_deleted(served, tmp_path,
                                                                       store_kind):
    store = None
    if store_kind == "redis":
        from support.redis_and_ray import RedisServer

        redis_server = RedisServer(tmp_path / "redis").start()
        store = redis_server.url
    try:
        client = served(store=store, max_stored_streams=2)
        streams = [new_stream(client) for _ in range(2)]
        refused = client.post("/v1/streams")
        assert refused.status_code == 429
        assert refused.json()["error"] == {
            "message": "the store holds its limit of 2 streams (--max-stored-streams): delete "
                       "one (DELETE /v1/streams/{id}) before creating another",
            "type": "rate_limit_error", "param": None, "code": "too_many_streams"}
        assert metric(client, "ctrt_max_stored_streams") == 2
        assert client.delete(f"/v1/streams/{streams[0]}").status_code == 200
        assert client.post("/v1/streams").status_code == 200
        assert client.post("/v1/streams").status_code == 429
    finally:
        if store_kind == "redis":
            redis_server.stop()


def test_a_deleted_stream_is_gone(served):
    client = served()
    stream = new_stream(client)
    append(client, stream, b"abc")
    assert client.delete(f"/v1/streams/{stream}").json()["deleted"] is True
    for answer in (client.get(f"/v1/streams/{stream}"), client.delete(f"/v1/streams/{stream}"),
                   client.post(f"/v1/streams/{stream}/append", json={"text": "x"})):
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "stream_not_found"
    assert client.get("/v1/streams").json()["data"] == []


def test_the_state_of_a_stream_is_constant_in_its_history(served, engine_dir):
    client = served()
    stream = new_stream(client)
    sizes = {client.get(f"/v1/streams/{stream}").json()["state_bytes"]}
    for _ in range(4):
        append(client, stream, TEXT_A)
        sizes.add(client.get(f"/v1/streams/{stream}").json()["state_bytes"])
    session = Session(engine_dir)
    state = session.stream_state(session.add_stream())
    assert sizes == {sum(array.nbytes for array in state.values())}


class FailingBackend(OrtCpuBackend):
    """Real ONNX Runtime that can be told to fail its next `fail_next` calls (an engine call
    failing, as a device error would: nothing else here makes ONNX Runtime fail on valid
    input)."""

    def __init__(self, engine_dir) -> None:
        super().__init__(load_manifest(engine_dir), threads=1)
        self.fail_next = 0

    def run(self, handle):
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("injected failure")
        super().run(handle)


@pytest.fixture
def failing(engine_dir, tmp_path):
    backend = FailingBackend(engine_dir)
    app, _ = open_engine(engine_dir, ServeSettings(model_name=MODEL, streams=2),
                         tmp_path / "store", backend=backend)
    with TestClient(app) as client:
        yield client, backend


def test_a_failed_engine_call_fails_its_append_and_the_stream_stays_as_acknowledged(
        failing, engine_dir):
    client, backend = failing
    stream = new_stream(client)
    append(client, stream, TEXT_A)
    backend.fail_next = 1
    answer = client.post(f"/v1/streams/{stream}/append", json={"text": TEXT_B.decode()})
    assert answer.status_code == 500 and "injected failure" in answer.json()["error"]["message"]
    assert client.get(f"/v1/streams/{stream}").json()["position"] == len(TEXT_A)
    reference = Reference(engine_dir)
    reference.append(TEXT_A)
    assert_close(append(client, stream, TEXT_B)["bits_per_byte"], reference.bits_per_byte(TEXT_B))


def test_a_generation_step_that_fails_once_is_retried_without_losing_a_token(failing,
                                                                             engine_dir):
    client, backend = failing
    stream = new_stream(client)
    append(client, stream, TEXT_A)
    backend.fail_next = 1
    answer = client.post("/v1/completions", json={"prompt": "ab", "max_tokens": 6,
                                                  "temperature": 0})
    assert answer.json()["choices"][0]["token_ids"] == list(greedy(engine_dir, b"ab", 6))
    backend.fail_next = 1
    generated = client.post(f"/v1/streams/{stream}/generate",
                            json={"max_tokens": 5, "temperature": 0}).json()
    assert generated["choices"][0]["token_ids"] == list(greedy(engine_dir, TEXT_A, 5))
    assert generated["position"] == len(TEXT_A) + 5


def test_generation_steps_that_keep_failing_fail_their_requests(failing, engine_dir):
    client, backend = failing
    backend.fail_next = 3
    failed = client.post("/v1/completions", json={"prompt": "ab", "max_tokens": 4})
    assert failed.status_code == 500 and "engine calls keep failing" in \
        failed.json()["error"]["message"]
    answer = client.post("/v1/completions", json={"prompt": "ab", "max_tokens": 6,
                                                  "temperature": 0}).json()
    assert answer["choices"][0]["token_ids"] == list(greedy(engine_dir, b"ab", 6))
