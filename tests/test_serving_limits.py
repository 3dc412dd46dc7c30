"""Bounds on what a client can spend, in-process (Starlette's TestClient): input that would
recurse or overflow is a 400 that says why, never a 500."""

import io
import json

import numpy as np
import openai
import pytest
from support.serving import greedy
from test_serving_api import TEXT_A, append, metric, new_stream

from compressive_rt.runtime.snapshot import META

pytestmark = pytest.mark.serving

NESTED = "[" * 5000 + "]" * 5000  # 10 KB


@pytest.mark.parametrize("route, body", [
    ("/v1/completions", f'{{"prompt": {NESTED}}}'),
    ("/v1/completions", f'{{"prompt": "a", "logit_bias": {{"5": {NESTED}}}}}'),
    ("STREAM/append", f'{{"text": {NESTED}}}'),
    ("STREAM/generate", f'{{"prompt": {NESTED}}}'),
])
def test_a_body_nested_thousands_deep_is_400_before_it_is_parsed(served, route, body):
    client = served()
    route = route.replace("STREAM", f"/v1/streams/{new_stream(client)}")
    answer = client.post(route, content=body.encode(),
                         headers={"content-type": "application/json"})
    assert answer.status_code == 400, answer.text
    depth = 5001 if "logit_bias" not in body else 5002
    assert answer.json()["error"]["message"] == (
        f"the request body nests {depth} levels deep; this server takes at most 16 "
        f"(--max-json-depth)")


def test_brackets_inside_strings_do_not_count_as_nesting(served, engine_dir):
    client = served(max_json_depth=2)
    prompt = "[[[{{{" + '\\"[[' * 3
    answer = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 3,
                                                  "temperature": 0})
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["token_ids"] == list(greedy(engine_dir,
                                                                   prompt.encode(), 3))


@pytest.mark.parametrize("temperature", [1e-310, 1e-300, 9e-6])
def test_a_temperature_below_the_floor_is_greedy(served, engine_dir, temperature):
    answer = served().post("/v1/completions", json={"prompt": "The ", "max_tokens": 12,
                                                    "temperature": temperature, "seed": 3})
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["token_ids"] == list(greedy(engine_dir, b"The ", 12))


def with_position(snapshot: bytes, position: int) -> bytes:
    """The snapshot with its record's position replaced (nothing else changed)."""
    with np.load(io.BytesIO(snapshot), allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    meta = json.loads(arrays.pop(META).tobytes())
    meta["position"] = position
    out = io.BytesIO()
    np.savez(out, **{META: np.frombuffer(json.dumps(meta).encode(), np.uint8)}, **arrays)
    return out.getvalue()


@pytest.mark.parametrize("position", [2**63 - 64, 2**53, 64 * 10**30])
def test_a_snapshot_position_beyond_2_to_the_53_is_400_and_the_stream_goes_on(served,
                                                                               position):
    client = served()
    stream = new_stream(client)
    append(client, stream, TEXT_A)
    taken = client.get(f"/v1/streams/{stream}/snapshot").content
    answer = client.put(f"/v1/streams/{stream}/snapshot", content=with_position(taken, position))
    assert answer.status_code == 400
    assert f"position must be an integer in [0, 2**53), got {position}" in \
        answer.json()["error"]["message"]
    assert append(client, stream, b"more")["position"] == len(TEXT_A) + 4


def test_refusals_are_counted_by_the_bound_that_refused_them(served):
    client = served()
    for _ in range(3):
        client.post("/v1/completions", content=f'{{"prompt": {NESTED}}}'.encode())
    assert metric(client, "ctrt_refused_total", {"bound": "json_depth"}) == 3


def test_a_full_store_answers_507_and_still_lists_describes_and_deletes(served, tmp_path):
    client = served(store_max_bytes=1 << 20, streams=1, snapshot_every=4)
    created, answer = [], None
    for _ in range(200):  # each stream's snapshot: about 140 KB of this engine's state
        answer = client.post("/v1/streams")
        if answer.status_code != 200:
            break
        created.append(answer.json()["id"])
        answer = client.post(f"/v1/streams/{created[-1]}/append", json={"text": "abcdefgh"})
        if answer.status_code != 200:
            break
    assert answer.status_code == 507, answer.text
    error = answer.json()["error"]
    assert error["code"] == "store_full" and "is full (its bound is" in error["message"]
    assert "delete streams (DELETE /v1/streams/ID) to make room" in error["message"]
    assert metric(client, "ctrt_refused_total", {"bound": "store_full"}) == 1
    assert metric(client, "ctrt_store_max_bytes") == 1 << 20
    assert metric(client, "ctrt_store_bytes") > 0
    assert len(client.get("/v1/streams").json()["data"]) == len(created)
    assert client.get(f"/v1/streams/{created[0]}").status_code == 200
    for stream in created:
        assert client.delete(f"/v1/streams/{stream}").status_code == 200
    stream = new_stream(client)
    assert append(client, stream, TEXT_A)["position"] == len(TEXT_A)


# ---- OpenAI's completions contract ----------------------------------------------------------
def openai_client(client):
    """The official client over the in-process app (TestClient is an httpx.Client)."""
    return openai.OpenAI(base_url="http://testserver/v1", api_key="none", max_retries=0,
                         http_client=client)


def test_token_id_prompts_complete_as_their_bytes_do_through_the_openai_client(served,
                                                                               engine_dir):
    completions = openai_client(served()).completions
    ids = list(b"def main(")
    one = completions.create(model="tiny", prompt=ids, max_tokens=8, temperature=0)
    assert one.choices[0].model_extra["token_ids"] == list(greedy(engine_dir, b"def main(", 8))
    assert one.usage.prompt_tokens == len(ids)
    two = completions.create(model="tiny", prompt=[ids, list(b"The ")], max_tokens=8,
                             temperature=0)
    assert [choice.model_extra["token_ids"] for choice in two.choices] == \
        [list(greedy(engine_dir, b"def main(", 8)), list(greedy(engine_dir, b"The ", 8))]


@pytest.mark.parametrize("prompt, param, message", [
    ([65, 256], "prompt", "prompt[1] is token id 256, outside the vocabulary [0, 256)"),
    ([[65], [-1]], "prompt[1]", "prompt[1][0] is token id -1, outside the vocabulary"),
    ([10**30], "prompt", f"prompt[0] is token id {10**30}, outside the vocabulary"),
    ([[]], "prompt[0]", "prompt[0] is an empty list of token ids"),
])
def test_token_ids_outside_the_vocabulary_are_400_through_the_openai_client(served, prompt,
                                                                            param, message):
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client(served()).completions.create(model="tiny", prompt=prompt, max_tokens=2)
    assert refused.value.status_code == 400 and refused.value.body["param"] == param
    assert message in refused.value.body["message"]


def test_stream_options_without_stream_is_400_through_the_openai_client(served):
    completions = openai_client(served()).completions
    with pytest.raises(openai.BadRequestError) as refused:
        completions.create(model="tiny", prompt="a", max_tokens=2,
                           stream_options={"include_usage": True})
    assert refused.value.body["param"] == "stream_options"
    assert refused.value.body["message"] == "stream_options is only allowed with stream: true"
    streamed = completions.create(model="tiny", prompt="a", max_tokens=2, stream=True,
                                  stream_options={"include_usage": True})
    assert [chunk.usage.completion_tokens for chunk in streamed if chunk.usage] == [2]


@pytest.mark.parametrize("route", ["/docs", "/redoc", "/openapi.json"])
def test_the_api_documentation_follows_the_api_key(served, tmp_path, route):
    assert served().get(route).status_code == 200
    client = served(store=tmp_path / "keyed", api_key="s3cret")
    answer = client.get(route)
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_api_key"
    assert client.get(route, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/health").status_code == 200
