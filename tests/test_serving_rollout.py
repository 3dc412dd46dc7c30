"""Rolling out a re-exported engine on a shared Redis store while it keeps serving (the README's
"Rolling out a re-exported engine"): a `ctrt serve` of the old engine and one of its re-export
run on one store; `ctrt store migrate` moves the streams while a client keeps appending to
them. The client sends each stream to the old server until that answers 409 `stream_moved`,
then to the new one. No acknowledged append is lost: every stream's position on the new server
is its acknowledged history, and it continues equal to an uninterrupted stream."""

import subprocess
import sys
import threading

import httpx
import pytest
from support.engines import copy_engine
from support.redis_and_ray import RedisServer
from support.serving import Reference, Server, assert_close

pytestmark = [pytest.mark.serving, pytest.mark.slow]

CHECKPOINT = "c0ffee" * 10 + "abcd"
STREAMS = 4
CHUNKS = [f"line {i}: x = {i} * {i}\n" for i in range(12)]  # appended in turn, cycling
MOST_ROUNDS = 2000  # of the traffic beside the migration (it stops when the migration ends)


def append(url: str, stream: str, text: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/streams/{stream}/append", json={"text": text}, timeout=60)


class Client:
    """Appends CHUNKS to every stream in turn, each to the old server until it says the stream
    moved, then to the new one; keeps what was acknowledged. A 409 `stream_taken` (the
    migration holds the stream for a moment) is retried."""

    def __init__(self, old: str, new: str, streams: list[str]) -> None:
        self.old, self.new = old, new
        self.server = dict.fromkeys(streams, old)
        self.acknowledged = {stream: "" for stream in streams}
        self.moved_answers = 0

    def run(self, rounds: int, stop: threading.Event | None = None) -> None:
        """`rounds` appends to every stream, fewer if `stop` is set meanwhile."""
        for index in range(rounds):
            if stop is not None and stop.is_set():
                return
            for stream in self.server:
                self._append(stream, CHUNKS[len(self.acknowledged[stream]) % len(CHUNKS)])

    def _append(self, stream: str, text: str) -> None:
        """Append until acknowledged (`text` is the next chunk after what was acknowledged)."""
        for _ in range(50):
            answer = append(self.server[stream], stream, text)
            if answer.status_code == 200:
                self.acknowledged[stream] += text
                return
            assert answer.status_code == 409, answer.text
            if answer.json()["error"]["code"] == "stream_moved":
                assert self.server[stream] == self.old
                self.moved_answers += 1
                self.server[stream] = self.new
        raise AssertionError(f"stream {stream}: no append was acknowledged in 50 tries")


def test_streams_move_to_the_new_engine_under_traffic_and_lose_nothing(engine_dir, tmp_path):
    old = copy_engine(engine_dir, tmp_path / "old", CHECKPOINT)
    new = copy_engine(engine_dir, tmp_path / "new", CHECKPOINT, "re-exported")
    redis_server = RedisServer(tmp_path / "redis").start()
    servers = [Server(engine, tmp_path / name, "--store", redis_server.url, "--streams", "2")
               for engine, name in ((old, "old"), (new, "new"))]
    try:
        old_server, new_server = servers
        old_server.start()
        streams = [httpx.post(f"{old_server.url}/v1/streams").json()["id"]
                   for _ in range(STREAMS)]
        client = Client(old_server.url, new_server.url, streams)
        client.run(2)
        new_server.start()  # beside the old one, on the same store: its namespace is empty
        assert "it also holds streams of other engines: " in new_server.log()
        stop = threading.Event()
        traffic = threading.Thread(target=client.run, args=(MOST_ROUNDS, stop))
        traffic.start()
        try:
            migrated = subprocess.run(
                [sys.executable, "-m", "compressive_rt.cli.main", "store", "migrate",
                 redis_server.url, "--engine", str(new)], capture_output=True, text=True,
                timeout=300)
        finally:
            stop.set()
            traffic.join()
        assert migrated.returncode == 0, migrated.stderr
        assert migrated.stdout.startswith(f"moved {STREAMS} streams from namespace"), \
            migrated.stdout
        client.run(1)  # every stream's client hears that it moved, once
        assert client.moved_answers == STREAMS
        listed = subprocess.run([sys.executable, "-m", "compressive_rt.cli.main", "store", "list",
                                 redis_server.url], capture_output=True, text=True, timeout=120)
        rows = [line.split()[1:4:2] for line in listed.stdout.splitlines()[1:]]
        assert rows == [[str(STREAMS), "0"], ["0", str(STREAMS)]]  # streams, moved
        for stream in streams:
            history = client.acknowledged[stream]
            gone = append(old_server.url, stream, "late")
            assert (gone.status_code, gone.json()["error"]["code"]) == (409, "stream_moved")
            described = httpx.get(f"{new_server.url}/v1/streams/{stream}", timeout=60).json()
            assert described["position"] == len(history)
            reference = Reference(engine_dir)
            reference.append(history.encode())
            answer = append(new_server.url, stream, "# done\n")
            assert answer.status_code == 200, answer.text
            assert_close(answer.json()["bits_per_byte"], reference.bits_per_byte(b"# done\n"))
    finally:
        for server in servers:
            server.stop()
        redis_server.stop()
