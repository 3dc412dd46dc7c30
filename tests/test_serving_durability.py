"""An acknowledged append is never lost, even to kill -9.

Three clients append to their own streams at once (more streams than resident slots, a
snapshot every 64 tokens: the server spills and checkpoints all the time) while the server is
killed with SIGKILL at random moments, ten times, and restarted on the same store. After each
restart every stream's position is its acknowledged tokens plus at most the one append in
flight (whose answer never came), and every acknowledged append, the first after each restart
included, scored what an uninterrupted stream in-process scores for the same history.

The recovery bound: after kill -9 a stream replays at most --snapshot-every logged tokens (an
append that passes the bound is written with a snapshot, in one transaction, before its
answer), counted by ctrt_replayed_tokens_total.
"""

import random
import threading
import time

import httpx
import pytest
from support.serving import Reference, Server, assert_close

from compressive_rt.serving.metrics import sample_value

pytestmark = [pytest.mark.serving, pytest.mark.slow]

KILLS = 10
CLIENTS = 3
ALPHABET = "abcdefghij klmnopqrstuvwxyz.,;\n(){}=+-*/0123456789éü€"


def test_kill_9_at_random_moments_loses_no_acknowledged_append(engine_dir, tmp_path):
    rng = random.Random(19)
    store, options = tmp_path / "store", ("--streams", "2", "--snapshot-every", "64")
    server = Server(engine_dir, store, *options).start()
    try:
        streams = [httpx.post(f"{server.url}/v1/streams").json()["id"] for _ in range(CLIENTS)]
        history = {stream: b"" for stream in streams}  # every token the store holds
        acknowledged = {stream: [] for stream in streams}  # (start, text, bits_per_byte)
        for kill in range(KILLS):
            in_flight: dict[str, bytes] = {}
            errors: list[BaseException] = []

            def append_until_the_server_dies(stream, seed, url=server.url):
                texts = random.Random(seed)
                with httpx.Client(timeout=60) as client:
                    while True:
                        text = "".join(texts.choices(ALPHABET, k=texts.randint(1, 200)))
                        in_flight[stream] = text.encode()
                        try:
                            answer = client.post(f"{url}/v1/streams/{stream}/append",
                                                 json={"text": text})
                        except httpx.HTTPError:
                            return  # killed: this append is in flight
                        try:
                            assert answer.status_code == 200, answer.text
                            got = answer.json()
                            start = len(history[stream])
                            assert got["position"] == start + len(text.encode())
                        except AssertionError as exc:
                            errors.append(exc)
                            return
                        acknowledged[stream].append((start, text.encode(), got["bits_per_byte"]))
                        history[stream] += text.encode()
                        del in_flight[stream]

            clients = [threading.Thread(target=append_until_the_server_dies,
                                        args=(stream, rng.random())) for stream in streams]
            for client in clients:
                client.start()
            time.sleep(rng.uniform(0.3, 1.5))
            server.kill()
            for client in clients:
                client.join(60)
            assert not errors, errors
            server = Server(engine_dir, store, *options).start()
            for stream in streams:
                position = httpx.get(f"{server.url}/v1/streams/{stream}").json()["position"]
                acked, landed = len(history[stream]), in_flight.get(stream, b"")
                assert position in {acked, acked + len(landed)}, (kill, stream)
                if position > acked:  # the append in flight was durable before its answer
                    history[stream] += landed
        for stream in streams:  # one more append each after the last restart
            answer = httpx.post(f"{server.url}/v1/streams/{stream}/append",
                                json={"text": "the end"}).json()
            start = len(history[stream])
            acknowledged[stream].append((start, b"the end", answer["bits_per_byte"]))
            history[stream] += b"the end"
            assert answer["position"] == len(history[stream])
    finally:
        server.stop()
    for stream in streams:
        assert len(acknowledged[stream]) > KILLS
        reference, fed = Reference(engine_dir), 0
        for start, text, bits_per_byte in acknowledged[stream]:
            if start > fed:  # appends that landed without an answer
                reference.append(history[stream][fed:start])
            assert history[stream][start:start + len(text)] == text
            assert_close(bits_per_byte, reference.bits_per_byte(text))
            fed = start + len(text)
        assert fed == len(history[stream])


def replayed_tokens(url):
    values = sample_value(httpx.get(f"{url}/metrics").text, "ctrt_replayed_tokens_total")
    assert len(values) == 1, values
    return values[0]


def test_after_kill_9_a_stream_replays_at_most_snapshot_every_tokens(engine_dir, tmp_path):
    store, options = tmp_path / "store", ("--snapshot-every", "64")
    reference, server = Reference(engine_dir), Server(engine_dir, store, *options).start()
    try:
        stream = httpx.post(f"{server.url}/v1/streams").json()["id"]
        texts = [b"forty bytes logged, under the bound ..\n", bytes(range(32, 127)) * 10]
        for text in texts:  # 39 bytes logged, then 950 that pass the bound: kill at once
            answer = httpx.post(f"{server.url}/v1/streams/{stream}/append", timeout=60,
                                json={"text": text.decode()})
            assert_close(answer.json()["bits_per_byte"], reference.bits_per_byte(text))
        server.kill()
        # restarted: first the 950 were checkpointed with their append, then 17 are logged
        for replayed in (0, len(b"after the restart")):
            server = Server(engine_dir, store, *options).start()
            answer = httpx.post(f"{server.url}/v1/streams/{stream}/append", timeout=60,
                                json={"text": "after the restart"}).json()
            assert replayed_tokens(server.url) == replayed
            assert_close(answer["bits_per_byte"], reference.bits_per_byte(b"after the restart"))
            server.kill()
    finally:
        server.stop()
