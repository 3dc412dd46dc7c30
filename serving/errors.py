"""Errors a client sees: an HTTP status and OpenAI's error body
(`{"error": {"message", "type", "param", "code"}}`), never a traceback."""

from __future__ import annotations

from typing import Any

from compressive_rt.errors import CtrtError
from compressive_rt.serving.store import StaleVersion, StoreFull, StreamMoved, UnknownStream


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


class StreamLimitReached(CtrtError):
    """The store holds --max-stored-streams streams already (found by a shared store's count)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the store holds {limit} streams")
        self.limit = limit


def too_many_streams(limit: int) -> ApiError:
    return ApiError(429, f"the store holds its limit of {limit} streams (--max-stored-streams): "
                         f"delete one (DELETE /v1/streams/{{id}}) before creating another",
                    "rate_limit_error", code="too_many_streams")


def store_failure(error: BaseException) -> ApiError:
    """The answer to a request whose store operation failed."""
    if isinstance(error, StreamLimitReached):
        return too_many_streams(error.limit)
    if isinstance(error, StreamMoved):
        return ApiError(409, str(error), "conflict_error", code="stream_moved")
    if isinstance(error, StaleVersion):
        return ApiError(409, str(error), "conflict_error", code="stream_taken")
    if isinstance(error, UnknownStream):
        return ApiError(404, str(error), "not_found_error", code="stream_not_found")
    if isinstance(error, StoreFull):
        return ApiError(507, str(error), "server_error", code="store_full", bound="store_full")
    return server_error(f"the stream store failed: {error}", 503)
