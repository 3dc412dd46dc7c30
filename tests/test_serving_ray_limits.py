"""`ctrt serve --ray`: the router, which reads each body whole before it forwards it, reserves
it in the same bound on bodies held at once (`--max-body-bytes-in-flight`) before reading it.
A subprocess with its own Ray and a real redis-server, on 127.0.0.1."""

import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from ray_helpers import need_ray
from redis_helpers import RedisServer
from test_serving_connections import DEADLINE_S, response_of

from compressive_rt.benchmarks.serve import free_port

CTRT = Path(sys.executable).parent / "ctrt"
UPLOAD_BYTES = 3_000_000


@pytest.mark.slow  # Ray's start: about 20 s
def test_withheld_uploads_through_the_ray_router_hold_their_reservation(engine_dir, tmp_path):
    need_ray()
    redis_server = RedisServer(tmp_path / "redis").start()
    port, log = free_port(), tmp_path / "serve.log"
    bound = 2 * UPLOAD_BYTES + 100_000  # 2 uploads; the smallest bound this engine allows
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(CTRT), "serve", str(engine_dir), "--ray", "--replicas", "1", "--threads", "1",
             "--store", redis_server.url, "--port", str(port), "--model-name", "tiny",
             "--max-body-bytes-in-flight", str(bound)], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    uploads = []
    try:
        deadline = time.monotonic() + 300
        while True:  # until Ray and Serve are up (minutes on a loaded machine)
            assert server.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        stream = httpx.post(f"{url}/v1/streams", timeout=60).json()["id"]
        for _ in range(5):
            sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)
            sock.sendall(f"PUT /v1/streams/{stream}/snapshot HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         f"Content-Length: {UPLOAD_BYTES}\r\n\r\n".encode() + bytes(1000))
            uploads.append(sock)
        answered = set()
        while len(answered) < 3:  # the refused ones answer; the admitted wait for their bodies
            readable, _, _ = select.select([s for s in uploads if s not in answered], [], [],
                                           DEADLINE_S)
            assert readable, f"only {len(answered)} of 5 withheld uploads were answered"
            answered.update(readable)
        for sock in answered:
            refusal = response_of(sock)
            assert refusal.startswith(b"HTTP/1.1 503 "), refusal[:300]
            assert b"(--max-body-bytes-in-flight)" in refusal
        assert httpx.get(f"{url}/v1/models", timeout=60).status_code == 200
    finally:
        for sock in uploads:
            sock.close()
        server.terminate()
        server.wait(180)
        redis_server.stop()
