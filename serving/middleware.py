"""ASGI middleware around the app: request counting, the API key, the body-size limit."""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from compressive_rt.serving.errors import ApiError
from compressive_rt.serving.metrics import Metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

PROTECTED_PREFIX = "/v1/"
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


class RequireApiKey:
    """`Authorization: Bearer KEY` on every /v1/ route, compared in constant time; 401
    otherwise. No key configured: everything is open."""

    def __init__(self, app: App, api_key: str | None) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.expected is None or scope["type"] != "http" or \
                not scope["path"].startswith(PROTECTED_PREFIX):
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


class LimitBody:
    """Reads the whole body (at most `limit_of(scope)` bytes, else 413) before the app runs,
    then hands it over; later receive() calls pass through (the app sees the disconnect)."""

    def __init__(self, app: App, limit_of: Callable[[Scope], int]) -> None:
        self.app, self.limit_of = app, limit_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit_of(scope)
        declared = next((value for name, value in scope["headers"] if name == b"content-length"),
                        None)
        if declared is not None:
            if not declared.isdigit():
                return await send_error(send, ApiError(400, "Content-Length is not a number"))
            if int(declared) > limit:
                return await send_error(send, too_large(int(declared), limit))
        body, size = bytearray(), 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= limit:
                body += chunk
            ended = not message.get("more_body", False)
            # A body over the limit is read on (discarded) up to twice the limit before the
            # 413, so that a client that sends it all before reading gets the answer rather
            # than a connection reset.
            if size > limit and (ended or size > DRAIN_FACTOR * limit):
                return await send_error(send, too_large(size, limit))
            if ended:
                break
        handed = False

        async def replay() -> Message:
            nonlocal handed
            if handed:
                return await receive()
            handed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


def too_large(size: int, limit: int) -> ApiError:
    return ApiError(413, f"the request body is {size} bytes or more; this server takes at "
                         f"most {limit} here (--max-body-bytes)", "invalid_request_error",
                    code="request_too_large")
