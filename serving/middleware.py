"""ASGI middleware around the app: the access log, request counting, the API key, the
body-size limit and the bound on the bytes of bodies held at once."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from compressive_rt.errors import CtrtError
from compressive_rt.serving.errors import ApiError
from compressive_rt.serving.metrics import Metrics, RouterMetrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

access_log = logging.getLogger("compressive_rt.serving.access")

STREAM_PATH = re.compile(r"/v1/streams/([A-Za-z0-9_-]{1,64})(/|$)")
PROTECTED_PREFIX = "/v1/"
DOC_ROUTES = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")  # FastAPI's
DRAIN_FACTOR = 2  # /health, /ready and /metrics stay open for probes and scrapers


async def send_error(send: Send, error: ApiError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()),
               *((name.lower().encode(), value.encode()) for name, value in error.headers.items())]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class CountRequests:
    """ctrt_requests_total{route, status}: the route's template, not the path (ids vary)."""

    def __init__(self, app: App, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = scope.get("route")
                self.metrics.requests.labels(getattr(route, "path", "unmatched"),
                                             str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counted)


def log_access(method: str, path: str, status: int, seconds: float, replica: str) -> None:
    """One access-log line: `POST /v1/streams/ID/append 200 stream=ID 12.3 ms replica=NAME`
    (`stream=-` when the path names no stream)."""
    match = STREAM_PATH.match(path)
    access_log.info("%s %s %d stream=%s %.1f ms replica=%s", method, path, status,
                    match[1] if match else "-", seconds * 1e3, replica)


class AccessLog:
    """One access-log line per request once its answer is sent (a streamed answer: its last
    byte), with the server's name; a request the client left before any answer: 499."""

    def __init__(self, app: App, replica: str) -> None:
        self.app, self.replica = app, replica

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), None

        async def logged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, logged)
        except Exception:
            status = status or 500  # a bug: the server answers 500 if it has not answered
            raise
        finally:
            log_access(scope["method"], scope["path"], status or 499,
                       time.perf_counter() - started, self.replica)


class RequireApiKey:
    """`Authorization: Bearer KEY` on every /v1/ route and the API's documentation (/docs,
    /redoc, /openapi.json: they describe it), compared in constant time; 401 otherwise. No key
    configured: everything is open. /health, /ready and /metrics stay open for probes."""

    def __init__(self, app: App, api_key: str | None) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.expected is None or scope["type"] != "http" or \
                not (scope["path"].startswith(PROTECTED_PREFIX) or scope["path"] in DOC_ROUTES):
            return await self.app(scope, receive, send)
        given = next((value for name, value in scope["headers"] if name == b"authorization"),
                     b"")
        if not hmac.compare_digest(given, self.expected):
            message = "a valid API key is required: send Authorization: Bearer <key>" \
                if given else "no API key given: send Authorization: Bearer <key>"
            return await send_error(send, ApiError(401, message, "authentication_error",
                                                   code="invalid_api_key",
                                                   headers={"WWW-Authenticate": "Bearer"}))
        await self.app(scope, receive, send)


BODIES_IN_FLIGHT = 64 << 20  # default bound on the bytes of bodies held at once (or 2 uploads)


def bodies_in_flight(setting: int | None, largest: int) -> int:
    """The bound on the bytes of bodies held at once: `setting` (--max-body-bytes-in-flight)
    or by default 64 MiB or two of the `largest` body, whichever is larger."""
    bound = setting or max(BODIES_IN_FLIGHT, 2 * largest)
    if bound < largest:
        raise CtrtError(f"--max-body-bytes-in-flight {bound} is less than the largest body this "
                        f"server takes ({largest} bytes: a snapshot of this engine, or "
                        f"--max-body-bytes): give at least that")
    return bound


def bodies_full(budget: BodyBudget, reserved: int) -> ApiError:
    return ApiError(503, f"the server holds {budget.held} bytes of request bodies; with this "
                         f"one's {reserved} it would pass its bound, {budget.limit} "
                         f"(--max-body-bytes-in-flight): retry later", "server_error",
                    code="bodies_in_flight", headers={"Retry-After": "1"})


def body_timeout(timeout_s: float, received: int) -> ApiError:
    return ApiError(408, f"the request body was not received within {timeout_s:g} s "
                         f"(--body-timeout): {received} bytes came", code="body_timeout")


class BodyBudget:
    """The bytes of request bodies the server holds at once (being read, or read and held by
    a running request): each request reserves its body's bound (its Content-Length, or the
    route's limit when it declares none) before a byte is read, and gives it back when it is
    answered. So a client that withholds the end of an upload costs its reservation, and all
    of them together at most `limit`. The event loop's thread alone touches it."""

    def __init__(self, limit: int, metrics: Metrics | RouterMetrics) -> None:
        self.limit, self.held, self.metrics = limit, 0, metrics

    def reserve(self, size: int) -> bool:
        if self.held + size > self.limit:
            self.metrics.refused.labels("bodies_in_flight").inc()
            return False
        self.held += size
        self.metrics.body_bytes_held.set(self.held)
        return True

    def release(self, size: int) -> None:
        self.held -= size
        self.metrics.body_bytes_held.set(self.held)


class LimitBody:
    """Reads the whole body (at most `limit_of(scope)` bytes, else 413; within `timeout_s`,
    else 408) before the app runs, then hands it over; later receive() calls pass through (the
    app sees the disconnect). The body's bound is reserved in `budget` first (503 if it is
    spent: nothing is read)."""

    def __init__(self, app: App, limit_of: Callable[[Scope], int], budget: BodyBudget,
                 timeout_s: float) -> None:
        self.app, self.limit_of, self.budget, self.timeout_s = app, limit_of, budget, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit_of(scope)
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await send_error(send, ApiError(400, "Content-Length is not a number"))
            if int(declared) > limit:
                return await send_error(send, too_large(int(declared), limit))
            reserved = int(declared)
        else:
            reserved = limit if b"transfer-encoding" in headers else 0
        if not self.budget.reserve(reserved):
            return await send_error(send, bodies_full(self.budget, reserved))
        try:
            await self._read_and_run(scope, receive, send, limit)
        finally:
            self.budget.release(reserved)

    async def _read_and_run(self, scope: Scope, receive: Receive, send: Send,
                            limit: int) -> None:
        body, size = bytearray(), 0
        try:
            async with asyncio.timeout(self.timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size <= limit:
                        body += chunk
                    ended = not message.get("more_body", False)
                    # A body over the limit is read on (discarded) up to twice the limit before
                    # the 413, so that a client that sends it all before reading gets the
                    # answer rather than a connection reset.
                    if size > limit and (ended or size > DRAIN_FACTOR * limit):
                        return await send_error(send, too_large(size, limit))
                    if ended:
                        break
        except TimeoutError:
            self.budget.metrics.refused.labels("body_timeout").inc()
            return await send_error(send, body_timeout(self.timeout_s, size))
        whole, handed = bytes(body), False
        del body  # one copy of the body is held while the request runs, not two

        async def replay() -> Message:
            nonlocal handed
            if handed:
                return await receive()
            handed = True
            return {"type": "http.request", "body": whole, "more_body": False}

        await self.app(scope, replay, send)


def too_large(size: int, limit: int) -> ApiError:
    return ApiError(413, f"the request body is {size} bytes or more; this server takes at "
                         f"most {limit} here (--max-body-bytes)", "invalid_request_error",
                    code="request_too_large")
