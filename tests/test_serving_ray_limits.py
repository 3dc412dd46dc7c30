"""`ctrt serve --ray`: the router, which reads each body whole before it forwards it, reserves
it in the same bound on bodies held at once (`--max-body-bytes-in-flight`) before reading it.
A subprocess with its own Ray and a real redis-server, on 127.0.0.1."""

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from support.redis_and_ray import RedisServer, wait_ready
from support.rules import need_ray
from test_serving_connections import UPLOAD_BYTES, assert_refused, withheld_upload

from compressive_rt.benchmarks.launchers.server_process import free_port

pytestmark = [pytest.mark.serving, pytest.mark.ray, pytest.mark.slow]

CTRT = Path(sys.executable).parent / "ctrt"


@pytest.mark.slow  # Ray's start: about 20 s
def test_withheld_uploads_through_the_ray_router_hold_their_reservation(engine_dir, tmp_path):
    need_ray()
    redis_server = RedisServer(tmp_path / "redis").start()
    port, log = free_port(), tmp_path / "serve.log"
    bound = 2 * UPLOAD_BYTES + 100_000  # 2 uploads (and above the largest body, 4.3 MB)
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(CTRT), "serve", str(engine_dir), "--ray", "--replicas", "1", "--threads", "1",
             "--store", redis_server.url, "--port", str(port), "--model-name", "tiny",
             "--max-body-bytes-in-flight", str(bound)], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    uploads = []
    try:
        wait_ready(server, url, log)
        stream = httpx.post(f"{url}/v1/streams", timeout=60).json()["id"]
        uploads = [withheld_upload(port, stream) for _ in range(5)]
        assert_refused(uploads, 3)
        assert httpx.get(f"{url}/v1/models", timeout=60).status_code == 200
    finally:
        for sock in uploads:
            sock.close()
        server.terminate()
        server.wait(180)
        redis_server.stop()
