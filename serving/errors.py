"""Errors a client sees: an HTTP status and OpenAI's error body
(`{"error": {"message", "type", "param", "code"}}`), never a traceback."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """A request that cannot be served as asked; `status` is its HTTP status."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None, bound: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.param, self.code, self.headers = param, code, headers or {}
        self.bound = bound  # the server's bound that refused it (ctrt_refused_total{bound})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}


def bad_request(message: str, param: str | None = None, bound: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, bound=bound)


def not_found(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(404, message, "not_found_error", param, code)


def unknown_stream(stream_id: str) -> ApiError:
    return not_found(f"no stream {stream_id!r}: create one with POST /v1/streams",
                     code="stream_not_found")


def server_error(message: str, status: int = 500) -> ApiError:
    return ApiError(status, message, "server_error")
