"""`ctrt serve --ray` as a library call: start (or join) a Ray cluster, deploy the replicas and
their router (ray_app.py) behind Serve's HTTP proxy on the head node, serve until SIGTERM or
SIGINT, then delete the application (each replica finishes what runs and spills its streams
to the store) and, if this process started Ray, stop it. Exit 0."""

from __future__ import annotations

import logging
import os
import signal
import threading
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
from compressive_rt.serving.server import listen
from compressive_rt.serving.settings import API_KEY_VARIABLE
from compressive_rt.serving.stores import describe_store, open_store


def check_store(deployment: RayDeployment) -> str:
    """Open the store once here, so an unreachable or foreign store is this command's error,
    not replicas that fail to start; returns its durability setting."""
    store = open_store(deployment.store, engine_namespace(load_manifest(deployment.engine_dir)))
    try:
        return store.durability
    finally:
        store.close()


def serve_on_ray(deployment: RayDeployment, address: str | None = None,
                 say: Callable[[str], None] = print) -> int:
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
    # "local": a Ray of this process's own; with no address ray.init would join whatever
    # cluster was started last on this machine (/tmp/ray/ray_current_cluster), anyone's
    context = ray.init(address="local" if started_here else address or None,
                       include_dashboard=False, logging_level=logging.WARNING)
    # after ray.init, which installs handlers of its own that end the process at once
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        serve.start(proxy_location="HeadOnly",
                    http_options={"host": settings.host, "port": settings.port})
        try:
            serve.run(build_app(deployment), name=APP_NAME, route_prefix="/")
        except RuntimeError as exc:  # a deployment that could not start: its replicas' error
            raise CtrtError(f"the replicas did not start: {exc}") from None
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
        while not stop.wait(1.0):
            pass
        say("ctrt serve --ray: stopping; the replicas spill their streams to the store")
        serve.delete(APP_NAME)
    finally:
        if started_here:
            serve.shutdown()
            ray.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    say("ctrt serve --ray: stopped; every stream is in the store")
    return 0
