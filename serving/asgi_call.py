"""One HTTP request run through an in-process ASGI app, its answer handed on in parts: what a
Ray Serve replica does with each request its ingress forwards (ray_app.py), so the replica
serves exactly the app `ctrt serve` serves (middleware, limits, errors and all).

The answer comes as a Head, then, for a streamed answer (SSE), its body in chunks as the app
sends them; any other answer is whole in its Head, so a replica that dies before it is done
leaves its caller with nothing half-sent. Closing the iterator early (the client left) is a
disconnect for the app, which cancels the request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

EVENT_STREAM = b"text/event-stream"
CLIENT = ("127.0.0.1", 0)  # the replica's own view: the client's address stays at the ingress


@dataclass(frozen=True)
class Head:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes | None  # None: streamed, the chunks follow


def http_scope(method: str, path: str, query: bytes,
               headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1", "method": method, "scheme": "http", "path": path,
            "raw_path": path.encode(), "query_string": query, "root_path": "",
            "headers": headers, "client": CLIENT, "server": ("127.0.0.1", 80)}


async def call_asgi(app: Any, method: str, path: str, query: bytes,
                    headers: list[tuple[bytes, bytes]],
                    body: bytes) -> AsyncIterator[Head | bytes]:
    """Run the request through `app`: a Head, then (streamed answers) the body's chunks."""
    sent: asyncio.Queue[dict | None] = asyncio.Queue()
    gone = asyncio.Event()
    handed = False

    async def receive() -> dict:
        nonlocal handed
        if not handed:
            handed = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def run() -> None:
        try:
            await app(http_scope(method, path, query, headers), receive, sent.put)
        finally:
            sent.put_nowait(None)

    async def next_message() -> dict:
        message = await sent.get()
        if message is None:
            raise RuntimeError(f"the app ended {method} {path} without an answer")
        return message

    task = asyncio.create_task(run())
    try:
        start = await next_message()
        status, response_headers = start["status"], list(start.get("headers", []))
        streamed = any(name.lower() == b"content-type" and value.startswith(EVENT_STREAM)
                       for name, value in response_headers)
        if not streamed:
            whole = bytearray()
            while True:
                message = await next_message()
                whole += message.get("body", b"")
                if not message.get("more_body", False):
                    break
            yield Head(status, response_headers, bytes(whole))
            return
        yield Head(status, response_headers, None)
        while True:
            message = await next_message()
            if message.get("body"):
                yield message["body"]
            if not message.get("more_body", False):
                return
    finally:
        gone.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=30)
        except Exception:  # noqa: BLE001 - a time-out, or an error the app has logged
            task.cancel()
