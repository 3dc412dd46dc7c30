"""`ctrt serve --ray` as a user runs it: a subprocess that starts its own Ray, serves the API
through Serve's proxy on 127.0.0.1, and on SIGTERM spills every stream to the Redis store,
stops Ray and exits 0; and the option errors it gives before starting anything."""

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from support.redis_and_ray import RedisServer, wait_ready
from support.rules import need_ray
from support.serving import Reference, assert_close

from compressive_rt.benchmarks.launchers.server_process import free_port
from compressive_rt.serving.redis_store import RedisStore

pytestmark = [pytest.mark.serving, pytest.mark.ray, pytest.mark.slow]

CTRT = Path(sys.executable).parent / "ctrt"


def ctrt(*args, timeout=120):
    return subprocess.run([str(CTRT), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("args, message", [
    (["--ray"], "replicas on Ray need a store they share: --store redis://HOST:PORT"),
    (["--ray", "--store", "redis://127.0.0.1:1", "--replicas", "0"], "--replicas must be >= 1"),
    (["--replicas", "3"], "--replicas only apply with --ray"),
    (["--ray", "--store", "redis://127.0.0.1:1", "--port", "0"], "--ray needs a fixed --port"),
])
def test_option_errors_are_one_line_and_exit_2(engine_dir, args, message):
    done = ctrt("serve", engine_dir, *args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: ")
    assert message in done.stderr


def test_serve_run_builds_the_deployment_from_its_arguments(engine_dir):
    need_ray()
    from ray.serve import Application

    from compressive_rt.errors import CtrtError
    from compressive_rt.serving.ray_app import app_builder

    built = app_builder({"engine_dir": str(engine_dir), "store": "redis://127.0.0.1:6380",
                         "replicas": "3", "streams": "4"})
    assert isinstance(built, Application)
    with pytest.raises(CtrtError, match=r"unknown arguments \['replica'\]"):
        app_builder({"engine_dir": str(engine_dir), "store": "redis://h:1", "replica": "3"})
    with pytest.raises(CtrtError, match="an argument is not a number"):
        app_builder({"engine_dir": str(engine_dir), "store": "redis://h:1", "replicas": "two"})
    every_setting = {"max_tokens_limit": "100", "max_body_bytes": "4096", "grace_s": "2.5",
                     "retry_after_s": "3", "max_prompt_bytes": "64"}
    assert isinstance(app_builder({"engine_dir": str(engine_dir), "store": "redis://h:1",
                                   **every_setting}), Application)
    with pytest.raises(CtrtError, match=r"streams='two' is not an integer"):
        app_builder({"engine_dir": str(engine_dir), "store": "redis://h:1", "streams": "two"})
    with pytest.raises(CtrtError, match=r"--max-tokens must be >= 1, got 0"):
        app_builder({"engine_dir": str(engine_dir), "store": "redis://h:1",
                     "max_tokens_limit": "0"})
    with pytest.raises(CtrtError, match="need a store they share"):
        app_builder({"engine_dir": str(engine_dir), "store": "/tmp/store"})


def test_serve_run_takes_every_setting_by_its_option_name(engine_dir, monkeypatch):
    need_ray()
    from compressive_rt.serving.ray_app import deployment_from_arguments

    monkeypatch.delenv("CTRT_API_KEY", raising=False)
    built = deployment_from_arguments({
        "engine_dir": str(engine_dir), "store": "redis://h:1", "replicas": "3",
        "replicas-per-node": "1", "max_tokens": "100", "max-body-bytes": "4096",
        "grace": "2.5", "request_timeout": "30", "retry-after": "3", "lease": "4",
        "access_log": "false", "body-timeout": "7", "header_timeout": "8"})
    settings = built.settings
    assert (built.replicas, built.replicas_per_node) == (3, 1)
    assert (settings.max_tokens_limit, settings.max_body_bytes, settings.grace_s,
            settings.request_timeout_s, settings.retry_after_s, settings.lease_s,
            settings.access_log, settings.body_timeout_s, settings.header_timeout_s) == (
        100, 4096, 2.5, 30.0, 3, 4.0, False, 7.0, 8.0)
    assert settings.model_name == Path(engine_dir).resolve().name and settings.api_key is None
    monkeypatch.setenv("CTRT_API_KEY", "k3y")
    assert deployment_from_arguments({"engine_dir": str(engine_dir),
                                      "store": "redis://h:1"}).settings.api_key == "k3y"


def test_the_serve_run_arguments_ctrt_prints_rebuild_the_same_deployment(engine_dir,
                                                                         monkeypatch):
    need_ray()
    from compressive_rt.serving.ray_app import (
        RayDeployment,
        deployment_from_arguments,
        serve_run_arguments,
    )
    from compressive_rt.serving.settings import ServeSettings

    settings = ServeSettings(model_name="tiny", streams=3, api_key="s3cret", queue_size=9,
                             max_tokens_limit=77, max_body_bytes=5000, grace_s=1.5,
                             snapshot_every=128, lease_s=3.0, access_log=False,
                             max_body_bytes_in_flight=1 << 22)
    deployment = RayDeployment(str(engine_dir), "redis://:pa55@127.0.0.1:6380/1", settings,
                               replicas=3, replicas_per_node=2, threads=2, prepack="none")
    arguments = serve_run_arguments(deployment, "5")
    assert "s3cret" not in " ".join(arguments) and "pa55" not in " ".join(arguments)
    monkeypatch.setenv("CTRT_API_KEY", "s3cret")
    rebuilt = deployment_from_arguments(dict(argument.split("=", 1) for argument in arguments))
    assert rebuilt == dataclasses.replace(deployment, store="redis://127.0.0.1:6380/1",
                                          replicas=5)


def test_an_unreachable_store_is_refused_before_ray_starts(engine_dir):
    done = ctrt("serve", engine_dir, "--ray", "--store", f"redis://127.0.0.1:{free_port()}",
                "--port", str(free_port()))
    assert done.returncode == 2
    assert "error: the Redis store redis://127.0.0.1:" in done.stderr
    assert "cannot be used" in done.stderr


def test_serve_ray_answers_and_spills_every_stream_at_sigterm(engine_dir, tmp_path):
    need_ray()
    redis_server = RedisServer(tmp_path / "redis").start()
    try:
        stream, replica, output = serve_one_stream_then_sigterm(engine_dir, redis_server,
                                                                tmp_path)
        assert "listening on http://127.0.0.1:" in output
        # the replica's access log, through Ray's log forwarding; not Serve's `POST / 200`
        assert re.search(rf"POST /v1/streams/{stream}/append 200 stream={stream} "
                         rf"\d+\.\d ms replica={replica}\n", output), output
        assert re.search(rf"GET /v1/models 200 stream=- \d+\.\d ms replica={replica}\n",
                         output), output
        assert "POST / 200" not in output
        assert re.search(r"serve run --address auto --name ctrt --route-prefix / --non-blocking "
                         r"compressive_rt.serving.ray_app:app_builder engine_dir=\S+ "
                         r"store=redis://127.0.0.1:\d+/0 replicas=N model_name=tiny\n", output)
        assert "appendonly yes, appendfsync always" in output
        assert "stopped; every stream is in the store" in output
        store = RedisStore(redis_server.url, _identity(engine_dir))
        taken = store.take(stream)
        store.close()
        assert (taken.position, taken.snapshot_position, taken.tail) == (12, 12, b"")
        assert taken.snapshot is not None  # spilled at the stop, not only logged
    finally:
        redis_server.stop()


def serve_one_stream_then_sigterm(engine_dir, redis_server, tmp_path):
    """(the stream it appended to, the replica that answered, the command's output)."""
    port, log = free_port(), tmp_path / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(CTRT), "serve", str(engine_dir), "--ray", "--replicas", "1", "--threads", "1",
             "--store", redis_server.url, "--port", str(port), "--model-name", "tiny"],
            stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(server, url, log)
        stream = httpx.post(f"{url}/v1/streams", timeout=60).json()["id"]
        answer = httpx.post(f"{url}/v1/streams/{stream}/append", json={"text": "to the store"},
                            timeout=60)
        assert answer.status_code == 200, answer.text
        assert_close(answer.json()["bits_per_byte"],
                     Reference(engine_dir).bits_per_byte(b"to the store"))
        models = httpx.get(f"{url}/v1/models", timeout=60).json()
        assert [model["id"] for model in models["data"]] == ["tiny"]
        replica = answer.headers["x-ctrt-replica"]
        server.terminate()
        assert server.wait(180) == 0, log.read_text()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(60)
    return stream, replica, log.read_text()


def _identity(engine_dir):
    from compressive_rt.runtime.manifest import load_manifest
    from compressive_rt.serving.namespaces import engine_namespace

    return engine_namespace(load_manifest(engine_dir))
