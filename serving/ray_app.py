"""`ctrt serve` on Ray Serve: the same HTTP API served by several replicas, each one Session and
its engine thread (the `ctrt serve` app in-process), on a store they share (Redis).

Two deployments. `StreamRouter` (the HTTP ingress, no engine) reads a request, and forwards it
to a `StreamReplica` through a DeploymentHandle; a request on a persistent stream
(/v1/streams/{id}/...) carries the stream id as its multiplexed model id, so Serve routes it to
the replica that holds the stream when it can (best effort). Correctness does not depend on
that: a replica that gets a stream it does not hold takes it from the store (the holder is
asked to give it up first, and fenced out if it does not answer), and when the multiplexer
evicts a stream (more streams than `streams` routed to a replica) the replica spills it.

Failures a client sees: a replica that dies (or cannot be reached) before its answer is
complete gives a 503 with Retry-After; its streams are taken by the other replicas from the
store on their next request, with every acknowledged append. A streamed answer (SSE) cut off
by a replica's death ends with an error event instead of `[DONE]`. Never a wrong answer: an
answer is only sent once the replica that computed it has made it durable in the store.

Also run with `serve run compressive_rt.serving.ray_app:app_builder engine_dir=DIR
store=redis://HOST:PORT [replicas=N max_tokens=... ...]` (the keys of `RayDeployment` and
every setting of `ctrt serve`: deployment_from_arguments).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from prometheus_client import CONTENT_TYPE_LATEST
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.config import RequestRouterConfig
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from compressive_rt.errors import CtrtError
from compressive_rt.runtime.snapshot import most_snapshot_bytes
from compressive_rt.serving.asgi_call import Head, call_asgi
from compressive_rt.serving.engine import row_specs
from compressive_rt.serving.errors import ApiError, server_error
from compressive_rt.serving.metrics import RouterMetrics
from compressive_rt.serving.middleware import (
    STREAM_PATH,
    BodyBudget,
    bodies_full,
    bodies_in_flight,
    body_timeout,
    log_access,
    too_large,
)
from compressive_rt.serving.ray_metrics import ROUTER_NAME, gather_metrics
from compressive_rt.serving.ray_routing import (
    LEASE_POLL_FRACTION,
    ROUTES,
    LeaseRouter,
    keep_replica_on_loopback,
)
from compressive_rt.serving.redis_store import is_redis_url, public_address
from compressive_rt.serving.server import open_engine
from compressive_rt.serving.settings import (
    API_KEY_VARIABLE,
    SETTING_NAMES,
    ServeSettings,
    settings_from_strings,
)

log = logging.getLogger("compressive_rt.serving")

APP_NAME = "ctrt"
APP_BUILDER = "compressive_rt.serving.ray_app:app_builder"  # for `serve run`
ROUTER, REPLICA = "StreamRouter", "StreamReplica"
# the replica or its node is gone, or Serve cannot reach one now: a retry will find another
UNAVAILABLE = (RayActorError, BackPressureError, DeploymentUnavailableError)
HEALTH_CHECK_PERIOD_S, HEALTH_CHECK_TIMEOUT_S = 2, 5  # see build_app
# Serve's own access log says `POST / 200` for every request (the router's one route); the
# app's (middleware.AccessLog) says the path, the stream and the replica
NO_SERVE_ACCESS_LOG = {"enable_access_log": False}
# settings a `serve run` deployment does not read: Serve's proxy has its own host and port
UNUSED_BY_SERVE_RUN = ("host", "port", "api_key")
# Where Ray 2.60's serve.multiplexed keeps a replica's streams (ray/serve/multiplex.py,
# _ModelMultiplexWrapper: `models`, and the flag that pushes the ids to the routers). Serve has
# no call to drop one id; without it a stream given up here would stay routed here too, and
# its requests would alternate between two replicas for good. Ray is pinned in the extra.
MULTIPLEXER, MULTIPLEXED_IDS, PUSH_IDS = ("__serve_multiplex_wrapper", "models",
                                           "_push_multiplexed_replica_info")


@dataclass(frozen=True)
class RayDeployment:
    """What `ctrt serve --ray` (or `serve run ...:app_builder`) deploys."""

    engine_dir: str  # the same path on every node
    store: str  # redis://HOST:PORT (rediss:// for TLS): the replicas' shared store
    settings: ServeSettings = field(default_factory=ServeSettings)
    replicas: int = 2
    replicas_per_node: int | None = None  # at most this many on one node (None: no bound)
    threads: int = 1  # ONNX Runtime threads of each replica (and its CPUs for Ray)
    backend: str = "auto"
    prepack: str = "all"

    def __post_init__(self) -> None:
        if not is_redis_url(self.store):
            raise CtrtError(f"replicas on Ray need a store they share: --store "
                            f"redis://HOST:PORT (got {self.store!r})")
        if self.replicas < 1:
            raise CtrtError(f"--replicas must be >= 1, got {self.replicas}")
        if self.replicas_per_node is not None and self.replicas_per_node < 1:
            raise CtrtError(f"--replicas-per-node must be >= 1, got {self.replicas_per_node}")
        if self.threads < 1:
            raise CtrtError(f"--threads must be >= 1, got {self.threads}")
        if not Path(self.engine_dir).is_dir():
            raise CtrtError(f"the engine directory {self.engine_dir} does not exist")


class HeldStream:
    """What the multiplexer holds for a stream routed to this replica; evicted, it asks the
    engine to spill the stream."""

    def __init__(self, engine: Any, stream_id: str) -> None:
        self.engine, self.stream_id, self.evicted = engine, stream_id, False

    def __del__(self) -> None:
        if not self.evicted:
            self.evicted = True
            self.engine.give_up(self.stream_id)


class StreamReplica:
    """One replica: one Session, its engine thread and the `ctrt serve` app, in-process."""

    def __init__(self, deployment: RayDeployment) -> None:
        logging.basicConfig(level=logging.INFO,
                            format="%(levelname)s: %(name)s: %(message)s")
        keep_replica_on_loopback()
        replica = serve.get_replica_context().replica_id.unique_id  # the stream's holder too
        self.app, self.engine = open_engine(
            deployment.engine_dir, deployment.settings, deployment.store, deployment.backend,
            deployment.threads, deployment.prepack, replica)
        self.loop: asyncio.AbstractEventLoop | None = None  # the one requests run on
        self.engine.residency.on_give_up = self._given_up
        self.engine.start()
        session = self.engine.session
        self.largest_body = max(deployment.settings.max_body_bytes,
                                most_snapshot_bytes(session.manifest, row_specs(session)))
        self.identity = [(b"x-ctrt-replica", replica.encode()),
                         (b"x-ctrt-node", ray.get_runtime_context().get_node_id().encode()),
                         (b"x-ctrt-pid", str(os.getpid()).encode())]
        self.stopped = False

    async def forward(self, method: str, path: str, query: bytes,
                      headers: list[tuple[bytes, bytes]],
                      body: bytes) -> AsyncIterator[Head | bytes]:
        self.loop = asyncio.get_running_loop()
        stream_id = serve.get_multiplexed_model_id()
        if stream_id:  # `hold`: the deployment's multiplexed loader (build_app)
            await self.hold(stream_id)
        async for part in call_asgi(self.app, method, path, query, headers, body):
            if isinstance(part, Head):
                part = dataclasses.replace(part, headers=part.headers + self.identity)
            yield part

    def _given_up(self, stream_id: str) -> None:
        """The engine gave the stream up (another replica took it): stop holding it in the
        multiplexer, so the routers send its requests to the taker only."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._forget_held, stream_id)

    def _forget_held(self, stream_id: str) -> None:
        multiplexer = getattr(self, MULTIPLEXER, None)
        if multiplexer is None:
            return
        held = getattr(multiplexer, MULTIPLEXED_IDS).pop(stream_id, None)
        if held is not None:
            held.evicted = True  # given up already: its __del__ must not ask again
            setattr(multiplexer, PUSH_IDS, True)

    def metrics_text(self) -> str:
        """This replica's metrics, for the router's GET /metrics (ray_metrics.py)."""
        return self.engine.metrics.exposition().decode()

    def body_limit(self) -> int:
        """The largest body a request may have (an uploaded snapshot's bound)."""
        return self.largest_body

    def check_health(self) -> None:
        """Serve replaces a replica whose engine thread died of a bug."""
        if self.engine.failed:
            raise RuntimeError("the engine thread failed; see the replica's log")

    def __del__(self) -> None:
        """Serve's graceful shutdown: finish what runs, spill every stream to the store."""
        if not getattr(self, "stopped", True):
            self.stopped = True
            self.engine.stop()


class ReplicaLapsed(Exception):
    """The replica a request waits on lost its lease (paused, partitioned) before answering."""


class StreamRouter:
    """The HTTP ingress: forwards each request to a replica, by stream id when it has one
    (never to a replica whose lease has lapsed: ray_routing.py). At shutdown, `drain` first:
    from then on every request is 503 with Retry-After, and it returns once the requests
    already forwarded are answered."""

    def __init__(self, replicas: Any, settings: ServeSettings) -> None:
        keep_replica_on_loopback()
        self.replicas, self.settings = replicas, settings
        self.retry_after_s = settings.retry_after_s
        self.largest_body: int | None = None
        self.budget: BodyBudget | None = None  # the replicas' bound on bodies, here too
        self.metrics = RouterMetrics(ROUTER_NAME)
        self.draining, self.in_flight = False, 0
        self.answered = asyncio.Event()  # set whenever no request is in flight

    async def drain(self) -> int:
        """Refuse new requests (503, Retry-After); wait (at most the grace) for the ones in
        flight; the number still in flight then."""
        self.draining = True
        if self.in_flight:
            self.answered.clear()
            try:
                async with asyncio.timeout(self.settings.grace_s):
                    await self.answered.wait()
            except TimeoutError:
                log.warning("%d requests were still running after the %g s grace",
                            self.in_flight, self.settings.grace_s)
        return self.in_flight

    async def __call__(self, request: Request) -> Response:
        """The request's answer; one the router gives itself (a refusal, no replica) is
        logged here, every other by the replica that answers it."""
        started = time.perf_counter()
        response = await self._answer(request)
        if self.settings.access_log and not any(
                name == b"x-ctrt-replica" for name, _ in response.raw_headers):
            log_access(request.method, app_path(request.scope), response.status_code,
                       time.perf_counter() - started, ROUTER_NAME)
        return response

    async def _answer(self, request: Request) -> Response:
        if self.draining:
            return self._unavailable("the service is shutting down; retry after "
                                     f"{self.retry_after_s} s (on its next start or another "
                                     f"server of the store)", "shutting_down")
        self.in_flight += 1
        try:
            return await self._call(request)
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self.answered.set()

    async def _call(self, request: Request) -> Response:
        if request.method == "GET" and app_path(request.scope) == "/metrics":
            return Response(await gather_metrics(REPLICA, self.metrics),
                            media_type=CONTENT_TYPE_LATEST)
        if self.largest_body is None:
            try:
                self.largest_body = await self.replicas.body_limit.remote()
            except UNAVAILABLE as exc:
                return self._gone(exc)
            self.budget = BodyBudget(bodies_in_flight(self.settings.max_body_bytes_in_flight,
                                                      self.largest_body), self.metrics)
        declared = request.headers.get("content-length", "")
        chunked = "transfer-encoding" in request.headers
        reserved = int(declared) if declared.isdigit() else self.largest_body if chunked else 0
        if reserved > self.largest_body:
            self.metrics.refused.labels("request_too_large").inc()
            return error_response(too_large(reserved, self.largest_body))
        if not self.budget.reserve(reserved):
            return error_response(bodies_full(self.budget, reserved))
        try:  # held until the body is read and handed to a replica
            return await self._forward(request)
        finally:
            self.budget.release(reserved)

    async def _forward(self, request: Request) -> Response:
        body = bytearray()
        try:
            async with asyncio.timeout(self.settings.body_timeout_s):
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > self.largest_body:
                        self.metrics.refused.labels("request_too_large").inc()
                        return error_response(too_large(len(body), self.largest_body))
        except TimeoutError:
            self.metrics.refused.labels("body_timeout").inc()
            return error_response(body_timeout(self.settings.body_timeout_s, len(body)))
        path = app_path(request.scope)
        match = STREAM_PATH.match(path)
        handle = self.replicas.options(stream=True,
                                       multiplexed_model_id=match[1] if match else "")
        parts = handle.forward.remote(request.method, path,
                                      request.scope.get("query_string", b""),
                                      list(request.scope["headers"]), bytes(body))
        try:
            head = await self._head(parts)
        except UNAVAILABLE as exc:
            return self._gone(exc)
        except ReplicaLapsed:
            # it reached the replica, which may yet apply it: the outcome is unknown (504),
            # so a retry is safe only with the same Idempotency-Key
            self.metrics.refused.labels("replica_lapsed").inc()
            return error_response(ApiError(
                504, f"the replica this request was sent to stopped answering (its lease "
                     f"lapsed) before it answered, so whether it was applied is unknown; retry "
                     f"after {self.retry_after_s} s with the same Idempotency-Key (its streams "
                     f"continue on another replica from the store)", "server_error",
                code="replica_lapsed", headers={"Retry-After": str(self.retry_after_s)}))
        except RayTaskError as exc:
            log.error("a replica failed on %s %s: %s", request.method, path, exc)
            error = server_error("the replica failed; see its log")
            return JSONResponse(error.body(), status_code=error.status)
        if head.body is not None:
            response = Response(head.body, status_code=head.status)
        else:
            response = StreamingResponse(self._rest(parts), status_code=head.status)
        response.raw_headers = list(head.headers)
        return response

    async def _head(self, parts: Any) -> Head:
        """The answer's head; ReplicaLapsed if the replica it was sent to loses its lease
        first (the request is cancelled there)."""
        request_id = parts._request_metadata.internal_request_id  # what the router sees
        first = asyncio.ensure_future(parts.__anext__())
        try:
            while True:
                done, _ = await asyncio.wait({first}, timeout=self.settings.lease_s
                                             * LEASE_POLL_FRACTION)
                if done:
                    return first.result()
                if ROUTES.sent_to_lapsed(request_id):
                    first.cancel()
                    parts.cancel()
                    raise ReplicaLapsed(request_id)
        finally:
            ROUTES.forget(request_id)

    def _gone(self, exc: BaseException) -> JSONResponse:
        log.warning("no replica answered: %s", type(exc).__name__)
        return self._unavailable(f"the replica serving this request is gone or busy; retry "
                                 f"after {self.retry_after_s} s (its streams continue on "
                                 f"another replica from the store)", "replica_unavailable")

    def _unavailable(self, message: str, code: str) -> JSONResponse:
        self.metrics.refused.labels(code).inc()
        return error_response(ApiError(503, message, "server_error", code=code,
                                       headers={"Retry-After": str(self.retry_after_s)}))

    async def _rest(self, parts: Any) -> AsyncIterator[bytes]:
        try:
            async for chunk in parts:
                yield chunk
        except (*UNAVAILABLE, RayTaskError) as exc:  # the status is sent: say it in the stream
            log.warning("a replica failed mid-stream: %s", type(exc).__name__)
            error = server_error("the replica serving this stream failed before the answer "
                                 "was complete; nothing of it was acknowledged: retry", 503)
            yield f"data: {json.dumps(error.body())}\n\n".encode()
        finally:
            parts.cancel()


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def app_path(scope: dict) -> str:
    """The request's path inside the application (without the route prefix it was served
    under), as `ctrt serve` sees it."""
    path, prefix = scope["path"], scope.get("root_path", "").rstrip("/")
    if prefix and (path == prefix or path.startswith(prefix + "/")):
        return path[len(prefix):] or "/"
    return path


def build_app(deployment: RayDeployment) -> Any:
    """The Serve application: the router bound to `deployment.replicas` replicas."""
    settings = deployment.settings

    class Replica(StreamReplica):
        @serve.multiplexed(max_num_models_per_replica=settings.streams)
        async def hold(self, stream_id: str) -> HeldStream:
            return HeldStream(self.engine, stream_id)

    replica_options: dict[str, Any] = {"num_cpus": deployment.threads}
    replicas = serve.deployment(
        Replica, name=REPLICA, num_replicas=deployment.replicas,
        max_replicas_per_node=deployment.replicas_per_node,
        # the engine's own queue (429 beyond queue_size) is the backpressure, not Serve's
        max_ongoing_requests=settings.queue_size + settings.streams,
        ray_actor_options=replica_options,
        graceful_shutdown_timeout_s=settings.grace_s + 30,
        # check_health answers on the replica's event loop, never waiting for the engine
        # thread: 5 s without an answer means a stopped process or a blocked loop. Serve
        # replaces a replica after 3 failed checks in a row: about 15 to 20 s, not minutes
        health_check_period_s=HEALTH_CHECK_PERIOD_S, health_check_timeout_s=HEALTH_CHECK_TIMEOUT_S,
        # never to a replica whose lease has lapsed (a paused one): ray_routing.py
        request_router_config=RequestRouterConfig(
            request_router_class=LeaseRouter,
            request_router_kwargs={"store": deployment.store, "lease_s": settings.lease_s}),
        logging_config=NO_SERVE_ACCESS_LOG)
    router = serve.deployment(StreamRouter, name=ROUTER, num_replicas=1,
                              max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0},
                              logging_config=NO_SERVE_ACCESS_LOG)
    return router.bind(replicas.bind(deployment), settings)


DEPLOYMENT_KEYS = {"engine_dir": str, "store": str, "replicas": int, "replicas_per_node": int,
                   "threads": int, "backend": str, "prepack": str}


def deployment_from_arguments(args: dict[str, str]) -> RayDeployment:
    """The deployment `serve run ...:app_builder KEY=VALUE...` describes: the keys of
    RayDeployment, and every setting of `ctrt serve` by its field's name or its option's
    (max_tokens or max-tokens for --max-tokens; grace for --grace); api_key, when not
    given, from $CTRT_API_KEY as for `ctrt serve`."""
    keys = {key.replace("-", "_"): value for key, value in args.items()}
    unknown = set(keys) - set(SETTING_NAMES) - set(DEPLOYMENT_KEYS)
    if unknown:
        raise CtrtError(f"unknown arguments {sorted(unknown)}; known: "
                        f"{sorted({*SETTING_NAMES, *DEPLOYMENT_KEYS})}")
    given = {SETTING_NAMES[key]: value for key, value in keys.items() if key in SETTING_NAMES}
    if "api_key" not in given and os.environ.get(API_KEY_VARIABLE):
        given["api_key"] = os.environ[API_KEY_VARIABLE]
    settings = settings_from_strings(given)
    try:
        fields = {key: kind(keys[key]) for key, kind in DEPLOYMENT_KEYS.items() if key in keys}
    except ValueError as exc:
        raise CtrtError(f"an argument is not a number: {exc}") from None
    settings.setdefault("model_name", Path(keys.get("engine_dir", "")).resolve().name)
    return RayDeployment(settings=ServeSettings(**settings), **fields)


def serve_run_arguments(deployment: RayDeployment, replicas: str = "") -> list[str]:
    """`serve run` arguments that deploy `deployment` again with `replicas` replicas (default:
    as many): every field and setting that is not its default; the API key left to
    $CTRT_API_KEY and a Redis password to $CTRT_REDIS_PASSWORD, never on a command line."""
    fields = {"engine_dir": deployment.engine_dir, "store": public_address(deployment.store),
              "replicas": replicas or deployment.replicas}
    defaults = RayDeployment.__dataclass_fields__
    fields.update({key: getattr(deployment, key) for key in DEPLOYMENT_KEYS
                   if key not in fields and getattr(deployment, key) != defaults[key].default})
    fields.update({key: value for key, value in dataclasses.asdict(deployment.settings).items()
                   if key not in UNUSED_BY_SERVE_RUN
                   and value != ServeSettings.__dataclass_fields__[key].default})
    return [f"{key}={value}" for key, value in fields.items()]


def app_builder(args: dict[str, str]) -> Any:
    """For `serve run compressive_rt.serving.ray_app:app_builder engine_dir=... store=...`."""
    return build_app(deployment_from_arguments(args))
