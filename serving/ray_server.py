"""`ctrt serve --ray` as a library call: start (or join) a Ray cluster, deploy the replicas and
their router (ray_app.py) behind Serve's HTTP proxy on the head node, serve until SIGTERM or
SIGINT, then stop. Exit 0.

Binding: Serve's proxy listens on --host:--port, without a gRPC port; a Ray of this process's
own is put on --host (`bind_ray`: with a loopback --host nothing it starts listens beyond
loopback).

Stopping: the router drains first (from then on every request is 503 with Retry-After, and the
requests it forwarded are answered within --grace); then, on a Ray of its own, Serve's proxy
is stopped before the application (clients get connection refused, never the proxy's 404 for
routes it no longer has), the application is deleted (each replica finishes what runs and
spills its streams to the store) and Ray stops. Joined to a cluster whose proxy serves other
applications too, the proxy stays, and answers 404 once the application is deleted.

Serve going down under the command (the application deleted, its deployment failed, the
controller unreachable for CONTROLLER_LOST_S) ends it with a one-line error, exit 2."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable

from compressive_rt.errors import CtrtError
from compressive_rt.runtime.manifest import load_manifest
from compressive_rt.serving.namespaces import engine_namespace
from compressive_rt.serving.ray_app import (
    APP_BUILDER,
    APP_NAME,
    RayDeployment,
    build_app,
    serve_run_arguments,
)
from compressive_rt.serving.ray_routing import RAY_SINGLE_MACHINE
from compressive_rt.serving.server import listen
from compressive_rt.serving.settings import API_KEY_VARIABLE
from compressive_rt.serving.stores import describe_store, open_store

EXCEPTION_LINE = re.compile(r"[A-Za-z_][\w.]*: \S")  # a traceback's last line
WATCH_S = 1.0  # how often the command asks Serve for the application's status
CONTROLLER_LOST_S = 30  # Ray restarts a dead controller within seconds: longer is gone
PROXY_ACTOR = "SERVE_PROXY_ACTOR"  # the prefix of Serve's proxies' actor names
# Serve's controller kills a proxy that is not ready within 5 s or misses 3 health checks of
# 10 s; a proxy starting on a loaded machine (its import alone took longer under two CPU
# burners) was killed before it ran, and serve.start failed. Set, unless the environment sets
# them, before a Ray whose processes inherit this environment starts (read where they start).
SERVE_PROXY_PATIENCE = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",
                        "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "30"}


def check_store(deployment: RayDeployment) -> str:
    """Open the store once here, so an unreachable or foreign store is this command's error,
    not replicas that fail to start; returns its durability setting."""
    store = open_store(deployment.store, engine_namespace(load_manifest(deployment.engine_dir)))
    try:
        return store.durability
    finally:
        store.close()


def say_now(line: str) -> None:
    print(line, flush=True)  # a log read while the command runs (journald, a test) has it


def bind_ray(host: str) -> dict[str, str]:
    """Put a Ray of this process's own on `host` (ray.init's arguments). A loopback host: Ray's
    single-machine mode (its node IP 127.0.0.1, every socket of every process on loopback;
    ray.init turns a loopback node IP into the machine's address otherwise). Another address:
    Ray's node IP (Ray's own servers still listen on every interface, as for a cluster). A
    wildcard: Ray's default."""
    if host == "localhost" or (is_address(host) and ipaddress.ip_address(host).is_loopback):
        from ray._private import ray_constants

        os.environ[RAY_SINGLE_MACHINE] = "0"  # Ray's processes read it when they start
        ray_constants.ENABLE_RAY_CLUSTER = False  # this one read it when Ray was imported
        return {}
    if is_address(host) and not ipaddress.ip_address(host).is_unspecified:
        return {"_node_ip_address": host}
    return {}


def patient_proxies() -> None:
    """SERVE_PROXY_PATIENCE into this process's environment, where it does not set them."""
    for name, value in SERVE_PROXY_PATIENCE.items():
        os.environ.setdefault(name, value)


def is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def serve_on_ray(deployment: RayDeployment, address: str | None = None,
                 say: Callable[[str], None] = say_now) -> int:
    """Serve until a signal; `address`: a running cluster's ("auto": the one `ray start` made
    on this node), or None to start Ray in this process (or join $RAY_ADDRESS)."""
    settings = deployment.settings
    if settings.port == 0:
        raise CtrtError("--ray needs a fixed --port: Serve's proxy listens on it")
    listen(settings.host, settings.port).close()  # a busy port: this command's error
    durability = check_store(deployment)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(name)s: %(message)s")
    import ray
    from ray import serve

    started_here = address is None and not os.environ.get("RAY_ADDRESS")
    if started_here:
        patient_proxies()
    # "local": a Ray of its own even where another runs on this machine (None would join the
    # one in /tmp/ray/ray_current_cluster, and stop its Serve at the end)
    context = ray.init(address="local" if started_here else address, include_dashboard=False,
                       logging_level=logging.WARNING,
                       **(bind_ray(settings.host) if started_here else {}))
    # after ray.init, which installs handlers of its own that end the process at once
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        start_serve(settings.host, settings.port)
        try:
            serve.run(build_app(deployment), name=APP_NAME, route_prefix="/")
        except RuntimeError as exc:  # a deployment that could not start: its replicas' error
            raise CtrtError(f"the replicas did not start: {deploy_failure(exc)}") from None
        per_node = deployment.replicas_per_node or "any number of"
        say(f"ctrt serve --ray: {deployment.engine_dir} as model {settings.model_name!r}, "
            f"{deployment.replicas} replicas ({per_node} per node, {deployment.threads} "
            f"threads and {settings.streams} resident streams each) on the Ray cluster at "
            f"{context.address_info.get('gcs_address')}; store {describe_store(deployment.store)}"
            f" ({durability})")
        key = "API key required" if settings.api_key else "no API key"
        say(f"listening on http://{settings.host}:{settings.port} ({key})")
        say(f"the same deployment with N replicas (the API key from ${API_KEY_VARIABLE}): "
            f"serve run --address auto --name {APP_NAME} --route-prefix / --non-blocking "
            f"{APP_BUILDER} {' '.join(serve_run_arguments(deployment, 'N'))}")
        watch_until(stop)
        say("ctrt serve --ray: stopping; the replicas spill their streams to the store")
        left = serve.get_app_handle(APP_NAME).drain.remote().result(
            timeout_s=settings.grace_s + 30)
        if left:
            say(f"ctrt serve --ray: {left} requests still ran after the grace")
        if started_here:
            stop_proxies()
        serve.delete(APP_NAME)
    finally:
        if started_here:
            serve.shutdown()
            ray.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    say("ctrt serve --ray: stopped; every stream is in the store")
    return 0


def start_serve(host: str, port: int) -> None:
    """Serve's controller and its proxy on host:port (no gRPC port); a proxy that does not
    start is this command's one-line error."""
    from ray import serve
    from ray.exceptions import RayError

    try:
        serve.start(proxy_location="HeadOnly", http_options={"host": host, "port": port},
                    grpc_options={"port": 0})
    except (RayError, TimeoutError) as exc:
        raise CtrtError(f"Serve's proxy did not start on {host}:{port}: "
                        f"{one_line(str(exc))}") from None


def watch_until(stop: threading.Event) -> None:
    """Until `stop`: CtrtError if Serve goes down under the command."""
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    reached = time.monotonic()
    while not stop.wait(WATCH_S):
        try:
            app = serve.status().applications.get(APP_NAME)
        except Exception as exc:  # noqa: BLE001 - any failure to reach the controller
            if time.monotonic() - reached > CONTROLLER_LOST_S:
                raise CtrtError(f"Serve's controller cannot be reached ({one_line(str(exc))}); "
                                f"the service is down") from None
            continue
        reached = time.monotonic()
        if app is None:
            raise CtrtError(f"the application {APP_NAME!r} was deleted from Serve under this "
                            f"command; the service is down")
        if app.status == ApplicationStatus.DEPLOY_FAILED:
            raise CtrtError(f"the application {APP_NAME!r} failed: {one_line(app.message)}")


def stop_proxies() -> None:
    """Kill Serve's proxies (a Ray of this process's own): connections are refused from now
    on, before the application's deletion would make the proxy answer 404."""
    import ray

    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] == "serve" and actor["name"].startswith(PROXY_ACTOR):
            ray.kill(ray.get_actor(actor["name"], namespace="serve"), no_restart=True)


def deploy_failure(error: RuntimeError) -> str:
    """Why the application did not deploy, in one line: a failed deployment's message (its
    replicas' error), else `serve.run`'s own."""
    from ray import serve

    try:
        app = serve.status().applications.get(APP_NAME)
    except Exception:  # noqa: BLE001 - the controller is gone too: serve.run's message
        app = None
    messages = [deployment.message for deployment in app.deployments.values()
                if deployment.message] if app is not None else []
    return one_line(messages[0] if messages else str(error))


def one_line(message: str) -> str:
    """A Ray error's message as one line: the last exception it quotes (`module.Name: what`,
    a traceback's last line), else its first line."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    raised = [line for line in lines if EXCEPTION_LINE.match(line) and not line.endswith(
        "Traceback (most recent call last):")]
    return (raised[-1] if raised else lines[0] if lines else "no message")[:500]
