"""`ctrt serve --ray` as a user runs it: a subprocess that starts its own Ray, serves the API
through Serve's proxy on 127.0.0.1 (every socket it opens on --host), and on SIGTERM drains
(503 with Retry-After, then connection refused, never 404), spills every stream to the Redis
store, stops Ray and exits 0; the router's drain; and the option errors it gives before
starting anything."""

import dataclasses
import json
import re
import subprocess
import sys
import threading
from collections import Counter
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


def test_the_lease_router_as_serve_ships_it_fills_the_ingress_routes(engine_dir, tmp_path):
    need_ray()
    from compressive_rt.serving.ray_app import RayDeployment, build_app

    app = build_app(RayDeployment(str(engine_dir), "redis://127.0.0.1:1"))
    config = app._bound_deployment.init_args[0]._bound_deployment._deployment_config
    shipped = tmp_path / "router.pickle"
    shipped.write_bytes(config.request_router_config._serialized_request_router_cls)
    # in a process of its own, as in the ingress's: Serve pickles the class by value, so the
    # router is a copy, and what it fills must still be what StreamRouter reads
    loaded = subprocess.run([sys.executable, "-c", f"""
from ray import cloudpickle
from compressive_rt.serving import ray_app, ray_routing
shipped = cloudpickle.loads(open({str(shipped)!r}, "rb").read())
router = shipped.__new__(shipped)
router.initialize_state(store="redis://127.0.0.1:1", lease_s=2.0)
print(shipped is ray_routing.LeaseRouter, router._routes is ray_app.ROUTES)
"""], capture_output=True, text=True, timeout=120)
    assert loaded.stdout.split() == ["False", "True"], loaded.stderr


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


def start_serve_ray(engine_dir, redis_server, tmp_path, *options):
    """A started `ctrt serve --ray --host 127.0.0.1` (one replica, `options` added):
    (process, URL, its output, its standard error)."""
    port, log, err = free_port(), tmp_path / "serve.log", tmp_path / "serve.err"
    with log.open("wb") as out, err.open("wb") as errors:
        server = subprocess.Popen(
            [str(CTRT), "serve", str(engine_dir), "--ray", "--replicas", "1", "--threads", "1",
             "--store", redis_server.url, "--host", "127.0.0.1", "--port", str(port),
             "--model-name", "tiny", *options], stdout=out, stderr=errors)
    return server, f"http://127.0.0.1:{port}", log, err


def serve_one_stream_then_sigterm(engine_dir, redis_server, tmp_path):
    """(the stream it appended to, the replica that answered, the command's output)."""
    server, url, log, err = start_serve_ray(engine_dir, redis_server, tmp_path)
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
        stop(server)
    return stream, replica, log.read_text() + err.read_text()


def stop(server):
    if server.poll() is None:
        server.kill()
        server.wait(60)


def process_tree(root):
    """`root` and every process below it."""
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def listening_addresses(root):
    """(local address, port, command) of every listening TCP socket of the process tree
    (/proc/net/tcp*)."""
    inodes = {}  # socket inode -> the command line of its process
    for pid in process_tree(root):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:80]
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = fd.readlink().as_posix() if fd.is_symlink() else ""
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = command.decode(errors="replace").strip()
        except OSError:
            continue
    found = []
    for table, width in [("tcp", 8), ("tcp6", 32)]:
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                address, port = fields[1].split(":")
                raw = bytes.fromhex(address)
                if width == 8:
                    host = ".".join(str(b) for b in raw[::-1])
                else:  # four little-endian 32-bit words
                    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                    host = ":".join(words[i:i + 2].hex() for i in range(0, 16, 2))
                found.append((host, int(port, 16), inodes[fields[9]]))
    return found


LOOPBACK = ("127.", "0000:0000:0000:0000:0000:0000:0000:0001",
            "0000:0000:0000:0000:0000:ffff:7f")


def test_serve_ray_listens_on_host_only_and_drains_at_sigterm(engine_dir, tmp_path):
    need_ray()
    redis_server = RedisServer(tmp_path / "redis").start()
    server, url, log, err = start_serve_ray(engine_dir, redis_server, tmp_path)
    try:
        wait_ready(server, url, log)
        sockets = listening_addresses(server.pid)
        assert sockets, "no listening socket found"
        outside = [socket for socket in sockets if not socket[0].startswith(LOOPBACK)]
        assert not outside, f"listening beyond 127.0.0.1: {outside}"
        stream = httpx.post(f"{url}/v1/streams", timeout=60).json()["id"]
        statuses, shapes, ended = Counter(), [], threading.Event()

        def load():
            with httpx.Client(base_url=url, timeout=60) as client:
                while not ended.is_set():
                    try:
                        answer = client.post(f"/v1/streams/{stream}/append", json={"text": "x"})
                    except httpx.TransportError:
                        statuses["refused"] += 1
                        ended.wait(0.01)  # paced: the machine is shared
                        continue
                    statuses[answer.status_code] += 1
                    if answer.status_code == 503:
                        shapes.append((answer.headers.get("retry-after"),
                                       answer.json()["error"]["code"]))

        clients = [threading.Thread(target=load) for _ in range(2)]
        for client in clients:
            client.start()
        try:
            server.terminate()
            assert server.wait(180) == 0, log.read_text() + err.read_text()
        finally:
            ended.set()
            for client in clients:
                client.join(60)
        print(f"during SIGTERM: {dict(statuses)}")
        assert 404 not in statuses, dict(statuses)
        assert set(statuses) <= {200, 503, "refused"}, dict(statuses)
        assert statuses["refused"] >= 1
        assert all(retry == "1" and code in ("shutting_down", "replica_unavailable")
                   for retry, code in shapes), shapes
    finally:
        stop(server)
        redis_server.stop()


def _identity(engine_dir):
    from compressive_rt.runtime.manifest import load_manifest
    from compressive_rt.serving.namespaces import engine_namespace

    return engine_namespace(load_manifest(engine_dir))


def test_replicas_that_refuse_to_start_are_a_one_line_error(engine_dir, tmp_path):
    need_ray()
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine's replicas could start on CUDA")
    redis_server = RedisServer(tmp_path / "redis").start()
    # the store and the engine pass the command's own checks; each replica refuses the backend
    server, _, log, err = start_serve_ray(engine_dir, redis_server, tmp_path,
                                          "--backend", "onnxruntime-cuda")
    try:
        assert server.wait(300) == 2, log.read_text()
        # Ray's own processes log to the same stderr (the controller quotes the replicas'
        # tracebacks, a raylet warns at shutdown): the command's own error is one line of it
        errors = [line for line in err.read_text().splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, err.read_text()
        assert errors[0].startswith("error: the replicas did not start: "), errors
        assert "has no CUDAExecutionProvider" in errors[0], errors
    finally:
        stop(server)
        redis_server.stop()


def test_a_draining_router_answers_503_with_retry_after(engine_dir):
    need_ray()
    import asyncio

    from starlette.requests import Request

    from compressive_rt.serving.ray_app import StreamRouter
    from compressive_rt.serving.settings import ServeSettings

    router = StreamRouter(None, ServeSettings(retry_after_s=3))  # no replica is asked
    scope = {"type": "http", "method": "POST", "path": "/v1/streams/st_a/append",
             "headers": [], "query_string": b""}

    async def drained():
        assert await router.drain() == 0  # nothing in flight: at once
        return await router(Request(scope))

    answer = asyncio.run(drained())
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "3"
    error = json.loads(answer.body)["error"]
    assert (error["type"], error["code"]) == ("server_error", "shutting_down")
    assert error["message"].startswith("the service is shutting down; retry after 3 s")
