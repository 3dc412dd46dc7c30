"""The HTTP API (FastAPI): OpenAI-compatible completions, persistent streams, health, metrics.

Handlers parse and check a request, hand it to the engine thread and turn its events into an
answer (JSON, or SSE when `stream` is true). They never call the Session.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException

from compressive_rt.serving.engine import Engine
from compressive_rt.serving.errors import ApiError, bad_request, not_found, unknown_stream
from compressive_rt.serving.exchange import ClientGone, Exchange, RequestQueue
from compressive_rt.serving.idempotency import request_key
from compressive_rt.serving.jobs import (
    AppendJob,
    DeleteJob,
    GenerateJob,
    GenerationParams,
    Job,
    SnapshotInJob,
    SnapshotOutJob,
)
from compressive_rt.serving.metrics import Metrics
from compressive_rt.serving.middleware import (
    AccessLog,
    BodyBudget,
    CountRequests,
    LimitBody,
    RequireApiKey,
    bodies_in_flight,
)
from compressive_rt.serving.schemas import (
    AppendBody,
    CompletionBody,
    GenerationFields,
    StreamGenerateBody,
    parse_body,
)
from compressive_rt.serving.settings import ServeSettings
from compressive_rt.serving.text import ChoiceText
from compressive_rt.serving.tickets import Done, Finished, Token

log = logging.getLogger("compressive_rt.serving")

STREAM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
SNAPSHOT_ROUTE = re.compile(r"/v1/streams/[^/]+/snapshot")
GONE = 499  # the client left: nothing is sent (nginx's convention)


def create_app(engine: Engine, settings: ServeSettings, metrics: Metrics,
               snapshot_limit: int) -> Any:
    """The ASGI app serving `engine`; uploads of snapshots may be `snapshot_limit` bytes (what
    a snapshot of this engine can be), every other body `settings.max_body_bytes`."""
    queue = RequestQueue(settings.queue_size, settings.retry_after_s, metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        engine.start()
        yield
        await asyncio.to_thread(engine.stop)

    app = FastAPI(title="compressive-rt", summary="Compressive Transformer engine server",
                  lifespan=lifespan)
    async def refused(request: Request, exc: ApiError) -> JSONResponse:
        if exc.bound is not None:
            metrics.refused.labels(exc.bound).inc()
        return await _api_error(request, exc)

    app.add_exception_handler(ApiError, refused)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)

    def exchange(request: Request, queued: bool) -> Exchange:
        return Exchange(engine, settings, queue if queued else None, request)

    def check_model(fields: GenerationFields) -> None:
        if fields.model is not None and fields.model != settings.model_name:
            raise not_found(f"the model {fields.model!r} does not exist; this server serves "
                            f"{settings.model_name!r} (GET /v1/models)", "model",
                            "model_not_found")

    # ---- probes --------------------------------------------------------------------------
    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        if not engine.ready:
            return JSONResponse({"status": "not ready"}, status_code=503)
        if not engine.ownership.reachable():
            return JSONResponse({"status": "not ready", "reason": "the store cannot be reached"},
                                status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    # ---- models and completions -----------------------------------------------------------
    def model_card() -> dict:
        return {"id": settings.model_name, "object": "model", "created": 0,
                "owned_by": "compressive-rt"}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model}")
    async def model(model: str) -> dict:
        if model != settings.model_name:
            raise not_found(f"the model {model!r} does not exist; this server serves "
                            f"{settings.model_name!r}", "model", "model_not_found")
        return model_card()

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = parse_body(CompletionBody, await request.body(), settings.max_json_depth)
        check_model(body)
        params, prompts = body.params(settings), body.prompt_tokens(settings)
        call = exchange(request, queued=True)
        engine.submit(call.ticket, engine.complete, prompts, params)
        answer = CompletionAnswer(settings.model_name, params, len(prompts),
                                  sum(len(p) for p in prompts), body.include_usage, metrics,
                                  call.ticket.accepted)
        return await respond(call, answer, body.stream)

    # ---- persistent streams ---------------------------------------------------------------
    def stream_id_of(stream_id: str) -> str:
        if not STREAM_ID.fullmatch(stream_id):
            raise unknown_stream(stream_id)
        return stream_id

    async def engine_call(request: Request, method: Any, *args: Any,
                          queued: bool = False) -> dict:
        """Run `method(ticket, *args)` on the engine thread; its Done result (empty if the
        client left)."""
        call = exchange(request, queued)
        engine.submit(call.ticket, method, *args)
        try:
            events = await call.collect()
        except ClientGone:
            return {}
        return events[-1].result

    def job_on(stream_id: str, job: Job) -> tuple[Any, str, Job]:
        """The engine call that queues `job` on the stream (behind its earlier requests)."""
        return engine.stream_job, stream_id_of(stream_id), job

    @app.post("/v1/streams")
    async def create_stream(request: Request) -> dict:
        return await engine_call(request, engine.create_stream)

    @app.get("/v1/streams")
    async def list_streams(request: Request) -> dict:
        return await engine_call(request, engine.list_streams)

    @app.get("/v1/streams/{stream_id}")
    async def describe_stream(request: Request, stream_id: str) -> dict:
        return await engine_call(request, engine.describe_stream, stream_id_of(stream_id))

    @app.delete("/v1/streams/{stream_id}")
    async def delete_stream(request: Request, stream_id: str) -> dict:
        return await engine_call(request, *job_on(stream_id, DeleteJob()))

    @app.post("/v1/streams/{stream_id}/append")
    async def append(request: Request, stream_id: str) -> dict:
        stream_id = stream_id_of(stream_id)
        raw = await request.body()
        tokens = parse_body(AppendBody, raw, settings.max_json_depth).tokens()
        key, digest = request_key(request.headers, raw)
        job = AppendJob(tokens=tokens, key=key, digest=digest)
        result = await engine_call(request, *job_on(stream_id, job), queued=True)
        return {"id": stream_id, "object": "stream.append", "bytes": len(tokens), **result}

    @app.post("/v1/streams/{stream_id}/generate")
    async def generate(request: Request, stream_id: str) -> Response:
        stream_id = stream_id_of(stream_id)
        raw = await request.body()
        body = parse_body(StreamGenerateBody, raw, settings.max_json_depth)
        check_model(body)
        params, prompt = body.params(settings), body.prompt_array(settings)
        key, digest = request_key(request.headers, raw)
        call = exchange(request, queued=True)
        job = GenerateJob(prompt=prompt, params=params, key=key, digest=digest)
        engine.submit(call.ticket, *job_on(stream_id, job))
        answer = CompletionAnswer(settings.model_name, params, 1, len(prompt),
                                  body.include_usage, metrics, call.ticket.accepted,
                                  stream_id=stream_id)
        return await respond(call, answer, body.stream)

    @app.get("/v1/streams/{stream_id}/snapshot")
    async def get_snapshot(request: Request, stream_id: str) -> Response:
        result = await engine_call(request, *job_on(stream_id, SnapshotOutJob()), queued=True)
        if not result:
            return Response(status_code=GONE)
        return Response(result["snapshot"], media_type="application/octet-stream", headers={
            "X-Stream-Position": str(result["position"]),
            "Content-Disposition": f'attachment; filename="{stream_id}.npz"'})

    @app.put("/v1/streams/{stream_id}/snapshot")
    async def put_snapshot(request: Request, stream_id: str) -> dict:
        stream_id = stream_id_of(stream_id)
        data = await request.body()
        if not data:
            raise bad_request("the body is empty: send the snapshot's bytes "
                              "(application/octet-stream)")
        return await engine_call(request, *job_on(stream_id, SnapshotInJob(data=data)),
                                 queued=True)

    def body_limit(scope: dict) -> int:
        if scope["method"] == "PUT" and SNAPSHOT_ROUTE.fullmatch(scope["path"]):
            return snapshot_limit
        return settings.max_body_bytes

    largest = max(snapshot_limit, settings.max_body_bytes)
    budget = BodyBudget(bodies_in_flight(settings.max_body_bytes_in_flight, largest), metrics)
    limited = LimitBody(app, body_limit, budget, settings.body_timeout_s)
    counted = CountRequests(RequireApiKey(limited, settings.api_key), metrics)
    return AccessLog(counted, metrics.replica) if settings.access_log else counted


async def respond(call: Exchange, answer: CompletionAnswer, stream: bool) -> Response:
    """A completion's answer: JSON once Done, or SSE chunks as tokens come and `[DONE]`."""
    if not stream:
        try:
            events = await call.collect()
        except ClientGone:
            return Response(status_code=GONE)
        for event in events:
            answer.observe(event)
        return JSONResponse(answer.whole())
    try:
        await call.started()
    except ClientGone:
        return Response(status_code=GONE)

    async def chunks() -> AsyncIterator[str]:
        try:
            async for event in call.events():
                chunk = answer.observe(event)
                if chunk is not None:
                    yield sse(chunk)
            if answer.include_usage or answer.stream_id is not None:
                yield sse(answer.usage_chunk())  # a stream's also says its new position
            yield "data: [DONE]\n\n"
        except ApiError as exc:  # the status is sent already: the error is the last event
            yield sse(exc.body())
        finally:
            call.close()

    return StreamingResponse(chunks(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def sse(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"


class CompletionAnswer:
    """Builds a completion's answer from engine events: streamed chunks as they come, or the
    whole object. Text leaves out the stop sequence that ended a choice (as OpenAI's);
    `token_ids` (an extension) are the tokens generated, the stop sequence's included (they are
    what a persistent stream was fed)."""

    def __init__(self, model: str, params: GenerationParams, choices: int, prompt_tokens: int,
                 include_usage: bool, metrics: Metrics, accepted: float,
                 stream_id: str | None = None) -> None:
        self.model, self.params, self.metrics = model, params, metrics
        self.prompt_tokens, self.include_usage, self.stream_id = prompt_tokens, include_usage, \
            stream_id
        self.id = f"cmpl-{time.time_ns():x}"
        self.created = int(time.time())
        self.texts = [ChoiceText(params.stop) for _ in range(choices)]
        self.finished: list[Finished | None] = [None] * choices
        self.last_token_at = [accepted] * choices
        self.first = [True] * choices
        self.result: dict[str, Any] = {}

    def _timed(self, index: int) -> None:
        now = time.perf_counter()
        latency = now - self.last_token_at[index]
        (self.metrics.time_to_first_token if self.first[index]
         else self.metrics.inter_token_latency).observe(latency)
        self.first[index] = False
        self.last_token_at[index] = now

    def observe(self, event: object) -> dict | None:
        """Take one engine event; returns the SSE chunk it makes, if any."""
        if isinstance(event, Token):
            self._timed(event.index)
            piece = self.texts[event.index].add(event.token)
            return self._chunk(event.index, piece, None, [event.token])
        if isinstance(event, Finished):
            self.finished[event.index] = event
            last = [] if event.last_token is None else [event.last_token]
            if last:
                self._timed(event.index)
            piece = self.texts[event.index].finish(event.finish_reason, event.last_token)
            return self._chunk(event.index, piece, event.finish_reason, last)
        if isinstance(event, Done):
            self.result = event.result
        return None

    def _header(self) -> dict[str, Any]:
        header = {"id": self.id, "object": "text_completion", "created": self.created,
                  "model": self.model}
        if self.stream_id is not None:
            header["stream_id"] = self.stream_id
        return header

    def _chunk(self, index: int, text: str, finish_reason: str | None,
               token_ids: list[int]) -> dict:
        return {**self._header(), "choices": [{"index": index, "text": text, "logprobs": None,
                                               "finish_reason": finish_reason,
                                               "token_ids": token_ids}]}

    def usage(self) -> dict[str, int]:
        completion = sum(len(f.tokens) for f in self.finished if f is not None)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}

    def usage_chunk(self) -> dict:
        return {**self._header(), "choices": [], "usage": self.usage(), **self._extra()}

    def _extra(self) -> dict[str, Any]:
        return {"position": self.result["position"]} if "position" in self.result else {}

    def whole(self) -> dict:
        choices = [{"index": index, "text": ChoiceText.whole(bytes(f.tokens), self.params.stop,
                                                              f.finish_reason),
                    "logprobs": None, "finish_reason": f.finish_reason,
                    "token_ids": list(f.tokens)}
                   for index, f in enumerate(self.finished)]
        return {**self._header(), "choices": choices, "usage": self.usage(), **self._extra()}


# ---- errors: OpenAI's shape, never a traceback ----------------------------------------------
async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    error = ApiError(exc.status_code, str(exc.detail), kind)
    return JSONResponse(error.body(), status_code=exc.status_code, headers=exc.headers)


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0]
    param = ".".join(str(part) for part in first["loc"][1:]) or None
    return await _api_error(_, bad_request(f"{param}: {first['msg']}", param))


async def _internal_error(_: Request, exc: Exception) -> JSONResponse:
    log.exception("an internal error", exc_info=exc)
    error = ApiError(500, "an internal error; see the server log", "server_error")
    return JSONResponse(error.body(), status_code=500)
