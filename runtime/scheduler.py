"""Continuous batching: many generation requests share one Session, each at its own pace.

Each `step` makes one `Session.feed` call. Every decoding request feeds the token it sampled
last; every request still absorbing its prompt feeds the prompt up to its stream's next
segment boundary (so whole segments take the one-call `segment` path). Then every request
whose input is in its stream samples, all in one vectorized pass (runtime/sampling.py), and
only then do callbacks run. A request on a fresh stream gives it back when it ends; waiting
requests take free streams in the order they were submitted, each slot granted by the
admission controller (runtime/admission.py) that a server shares. A request may also continue an
existing stream (`submit(..., stream=...)`): every token it generates, the last included, is
fed into that stream, which stays in the session.

Failures: when the feed raises EngineCallError, each request's progress follows what the
error says its stream consumed (no token lost, none fed twice) and the error propagates;
stepping again continues every request as if nothing had failed. A callback that raises ends
only its own request (finish reason "error", the exception on its Completion).
"""

from __future__ import annotations

import codecs
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from compressive_rt.errors import RuntimeInputError
from compressive_rt.runtime.admission import SlotAdmission
from compressive_rt.runtime.sampling import BatchSampler, Sampling
from compressive_rt.runtime.session import EngineCallError, Session
from compressive_rt.runtime.text import matched_stop, utf8_decoder

BYTE_VOCAB = 256


class TokenEvent(NamedTuple):
    """One generated token of one request."""

    request_id: int
    token: int
    text: str  # UTF-8 decoded piece: "" while a character is incomplete; the last one flushes
    finished: bool  # this was the request's last token


@dataclass(frozen=True)
class Completion:
    """A request's prompt and generated tokens; finish_reason is None while it runs."""

    request_id: int
    prompt: bytes
    tokens: tuple[int, ...]
    finish_reason: str | None  # "stop", "length", "cancelled" or "error"
    seed: int  # of its random stream (runtime/sampling.py), drawn at submit when not given
    error: BaseException | None = None  # what its callback raised (finish reason "error")

    @property
    def text(self) -> str:
        return bytes(self.tokens).decode("utf-8", errors="replace")


@dataclass(eq=False)
class _Request:
    request_id: int
    prompt: np.ndarray  # [P] int32
    prompt_len: int  # P
    max_new_tokens: int
    sampling: Sampling
    seed: int
    stop: list[bytes]
    on_token: Callable[[TokenEvent], None] | None
    decoder: codecs.IncrementalDecoder
    keeps_stream: bool  # continues a caller's stream, which outlives the request
    granted: bool  # its fresh stream's slot was granted by the admission controller already
    stream: int | None = None
    lane: int | None = None  # its row in the sampler's tables while it runs
    position: int = 0  # tokens in its stream
    absorbed: int = 0  # prompt tokens fed so far
    token: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int32))
    token_fed: bool = True  # False from sampling a token until it is in the stream
    generated: bytearray = field(default_factory=bytearray)
    ending: str | None = None  # why it ends, once its last token is fed (kept streams)
    held: TokenEvent | None = None  # its last event, sent once that token is fed
    finish_reason: str | None = None
    error: BaseException | None = None


def prompt_tokens(prompt: bytes | str | Sequence[int] | np.ndarray, vocab_size: int,
                  allow_empty: bool = False) -> np.ndarray:
    """The prompt as token ids [P] int32, checked: 1-D integers in range, at least one unless
    allow_empty (a stream that was fed before has logits to sample the first token from)."""
    if isinstance(prompt, str):
        prompt = prompt.encode()
    if isinstance(prompt, (bytes, bytearray)):
        array = np.frombuffer(prompt, dtype=np.uint8)
    else:
        array = np.asarray(prompt)
    if array.ndim != 1:
        raise RuntimeInputError(f"the prompt must be bytes or a 1-D sequence of token ids, "
                                f"got shape {array.shape}")
    if array.size == 0:
        if allow_empty:
            return np.zeros(0, dtype=np.int32)
        raise RuntimeInputError(
            "the prompt is empty: the model has no start-of-text token, so the first byte "
            "would have nothing to condition on; give at least one byte")
    if not np.issubdtype(array.dtype, np.integer):
        raise RuntimeInputError(f"prompt token ids must be integers, got dtype {array.dtype}")
    if array.min() < 0 or array.max() >= vocab_size:
        bad = array[(array < 0) | (array >= vocab_size)][0]
        raise RuntimeInputError(f"prompt token id {int(bad)} is out of range [0, {vocab_size})")
    return array.astype(np.int32)


class Scheduler:
    """Runs generation requests on `session`, at most session.max_streams at once.

    `submit` requests (also while others run), then iterate `run()` for TokenEvents; each
    request's `on_token` callback receives the same events. `take_finished` lists the requests
    that ended since it was last called. Use as a context manager (or call `close`) so that
    an error leaves no stream behind.
    """

    def __init__(self, session: Session, admission: SlotAdmission | None = None) -> None:
        if session.dims.vocab_size > BYTE_VOCAB:
            raise RuntimeInputError(
                f"the scheduler decodes byte tokens, but this engine's vocab_size is "
                f"{session.dims.vocab_size} (> {BYTE_VOCAB})")
        self.session = session
        self.admission = admission or SlotAdmission(session)
        self._requests: dict[int, _Request] = {}  # request id -> request, finished ones too
        self._waiting: deque[_Request] = deque()  # for a fresh stream, in submission order
        self._continuing: list[_Request] = []  # on a kept stream: admitted at the next step
        self._running: dict[int, _Request] = {}  # stream id -> request
        self._finished: list[int] = []  # ended since take_finished
        self._next_id = 0
        lanes = session.max_streams
        self._sampler = BatchSampler(lanes, session.dims.vocab_size)
        self._free_lanes = list(range(lanes - 1, -1, -1))
        self._logits = np.empty((lanes, session.dims.vocab_size), dtype=np.float32)  # [S, V]

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- requests ------------------------------------------------------------------------
    def submit(self, prompt: bytes | str | Sequence[int] | np.ndarray, max_new_tokens: int,
               sampling: Sampling | None = None, stop: Sequence[str | bytes] = (),
               on_token: Callable[[TokenEvent], None] | None = None,
               stream: int | None = None, granted: bool = False) -> int:
        """Queue a request; returns its id. A bad request raises RuntimeInputError here and
        changes nothing. `sampling` defaults to Sampling(). Generation stops after
        max_new_tokens or once the generated bytes end with one of `stop` (text matched as
        UTF-8; the stop string is kept).

        stream=None runs the request on a fresh stream, removed when it ends. stream=<a
        stream of the session> continues that stream: the prompt may be empty when the stream
        was fed before (its first token is sampled from the stream's last logits), every
        generated token, the last one included, is fed into it, and the stream stays. The
        event with finished=True comes once the last token is in the stream.

        granted=True: the caller was granted the fresh stream's slot by this scheduler's
        admission controller already (the request takes it at the next step)."""
        if stream is not None:
            self._check_stream(stream)
        tokens = prompt_tokens(prompt, self.session.dims.vocab_size,
                               allow_empty=stream is not None)
        if not tokens.size and not self.session.has_last_logits(stream):
            raise RuntimeInputError(
                f"stream {stream} has not been fed any tokens, so there are no logits to "
                f"sample the first token from: give a prompt of at least one byte")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) \
                or max_new_tokens < 0:
            raise RuntimeInputError(f"max_new_tokens must be an integer >= 0, "
                                    f"got {max_new_tokens!r}")
        sampling = sampling or Sampling()
        request = _Request(
            request_id=self._next_id, prompt=tokens, prompt_len=len(tokens),
            max_new_tokens=int(max_new_tokens),
            sampling=sampling, seed=sampling.stream_seed(),
            stop=[s.encode() if isinstance(s, str) else bytes(s) for s in stop if s],
            on_token=on_token, decoder=utf8_decoder(), keeps_stream=stream is not None,
            granted=granted and stream is None, stream=stream)
        self._next_id += 1
        self._requests[request.request_id] = request
        if request.max_new_tokens == 0 and not (tokens.size and request.keeps_stream):
            self._withdraw(request)
            self._end(request, "length")  # nothing to generate, no prompt to add to a stream
        else:
            (self._continuing if request.keeps_stream else self._waiting).append(request)
        return request.request_id

    def _check_stream(self, stream: int) -> None:
        if stream not in self.session.positions:
            raise RuntimeInputError(f"no stream {stream!r} in this session (streams: "
                                    f"{self.session.streams})")
        busy = [r.request_id for r in (*self._continuing, *self._running.values())
                if r.stream == stream]
        if busy:
            raise RuntimeInputError(f"stream {stream} is in use by request {busy[0]}: a stream "
                                    f"runs one request at a time")

    def result(self, request_id: int) -> Completion:
        request = self._request(request_id)
        return Completion(request.request_id, request.prompt.astype(np.uint8).tobytes(),
                          tuple(request.generated), request.finish_reason, request.seed,
                          request.error)

    def stream(self, request_id: int) -> int | None:
        """The session stream a request runs on: None while it waits for a fresh stream and
        once it gave its fresh stream back (a kept stream is the one it was given)."""
        return self._request(request_id).stream

    def take_finished(self) -> list[Completion]:
        """Every request that ended since the last call, in the order they ended; the
        scheduler then forgets them (a long-running server keeps no record of old requests),
        so `result` no longer knows them."""
        done, self._finished = self._finished, []
        completions = [self.result(request_id) for request_id in done]
        for request_id in done:
            del self._requests[request_id]
        return completions

    def cancel(self, request_id: int) -> None:
        """Stop a waiting or running request (a finished one stays as it is). A fresh stream
        is freed now; on a kept stream the token the request already sampled is fed first (by
        the next step), so every token it returned is in the stream."""
        request = self._request(request_id)
        if request.finish_reason is not None or request.ending is not None:
            return
        if request in self._waiting or request in self._continuing:
            (self._continuing if request.keeps_stream else self._waiting).remove(request)
            self._withdraw(request)
            self._end(request, "cancelled")
        elif request.keeps_stream and not request.token_fed:
            request.ending = "cancelled"
        else:
            self._end(request, "cancelled")

    def close(self) -> None:
        """End every unfinished request now, freeing their fresh streams (a kept stream keeps
        what was fed into it)."""
        for request in self._waiting:
            self._withdraw(request)
        for request in [*self._waiting, *self._continuing, *self._running.values()]:
            self._end(request, request.ending or "cancelled")
        self._waiting.clear()
        self._continuing.clear()

    @property
    def waiting(self) -> int:
        """Requests not yet running: those waiting for a fresh stream, and those on kept
        streams that start at the next step."""
        return len(self._waiting) + len(self._continuing)

    @property
    def running(self) -> int:
        return len(self._running)

    def _request(self, request_id: int) -> _Request:
        try:
            return self._requests[request_id]
        except (KeyError, TypeError):
            raise RuntimeInputError(f"no request {request_id!r} in this scheduler") from None

    # ---- the loop ----------------------------------------------------------------------------
    def run(self) -> Iterator[TokenEvent]:
        """Step until no request waits or runs (requests submitted meanwhile included)."""
        while self.waiting or self._running:
            yield from self.step()

    def step(self) -> list[TokenEvent]:
        """Admit waiting requests, feed once, sample; returns the new tokens' events."""
        self._admit()
        feed = self._inputs()
        failure = None
        if feed:
            try:
                self.session.feed(feed, want_logits=False, check=False)
            except EngineCallError as error:
                failure = error
        self._account(feed, failure)
        events = self._drained()
        if failure is not None:
            self._deliver(events)
            raise failure
        sampled = self._sample()
        events.extend(sampled)
        self._deliver(events)
        return events

    def _admit(self) -> None:
        session = self.session
        for request in self._continuing:
            request.position = session.position(request.stream)
            self._start(request)
        self._continuing.clear()
        while self._waiting and (self._waiting[0].granted or self.admission.grant()):
            request = self._waiting.popleft()
            request.granted = False
            request.stream = self.admission.take()
            self._start(request)
        if self._waiting and not self._running:
            raise RuntimeInputError(
                f"{len(self._waiting)} request(s) wait, but all {session.max_streams} stream "
                f"slots of the session are held by streams outside this scheduler: remove one "
                f"or open the session with a larger max_streams")

    def _start(self, request: _Request) -> None:
        request.lane = self._free_lanes.pop()
        self._sampler.assign(request.lane, request.sampling, request.seed)
        self._running[request.stream] = request

    def _inputs(self) -> dict[int, np.ndarray]:
        """What each running request feeds this step: its prompt up to its stream's next
        segment boundary, or the token it sampled last."""
        seg_len = self.session.dims.seg_len
        feed = {}
        for stream, request in self._running.items():
            if request.absorbed < request.prompt_len:
                chunk = seg_len - request.position % seg_len
                feed[stream] = request.prompt[request.absorbed:request.absorbed + chunk]
            elif not request.token_fed:
                feed[stream] = request.token
        return feed

    def _account(self, feed: dict[int, np.ndarray], failure: EngineCallError | None) -> None:
        """Each request's progress: what its stream consumed of this step's feed."""
        consumed = failure.consumed if failure is not None else None
        for stream, tokens in feed.items():
            request = self._running[stream]
            count = len(tokens) if consumed is None else consumed.get(stream, 0)
            request.position += count
            if request.absorbed < request.prompt_len:
                request.absorbed += count
                if request.absorbed == request.prompt_len and not request.max_new_tokens:
                    self._end(request, "length")  # a kept stream's prompt, nothing to generate
            elif count:
                request.token_fed = True

    def _drained(self) -> list[TokenEvent]:
        """Requests on kept streams whose last token is now fed: they end, and their held
        events are sent."""
        events = []
        for request in [r for r in self._running.values() if r.ending and r.token_fed]:
            if request.held is not None:
                events.append(request.held)
            self._end(request, request.ending)
        return events

    def _sample(self) -> list[TokenEvent]:
        ready = [r for r in self._running.values() if r.token_fed and r.ending is None
                 and r.absorbed == r.prompt_len]
        if not ready:
            return []
        logits = self.session.gather_last_logits([r.stream for r in ready], self._logits)
        lanes = np.fromiter((r.lane for r in ready), dtype=np.intp, count=len(ready))
        tokens = self._sampler.sample(logits, lanes).tolist()
        return [event for request, token in zip(ready, tokens, strict=True)
                if (event := self._emit(request, token)) is not None]

    def _emit(self, request: _Request, token: int) -> TokenEvent | None:
        """Record a sampled token; its event, or None when it is held until the token is fed
        (the last token of a request on a kept stream)."""
        request.generated.append(token)
        request.token[0] = token
        request.token_fed = False
        text = request.decoder.decode(bytes((token,)))
        if matched_stop(request.generated, request.stop):
            reason = "stop"
        elif len(request.generated) == request.max_new_tokens:
            reason = "length"
        else:
            return TokenEvent(request.request_id, token, text, False)
        event = TokenEvent(request.request_id, token,
                           text + request.decoder.decode(b"", final=True), True)
        if request.keeps_stream:
            request.ending, request.held = reason, event
            return None
        self._end(request, reason)
        return event

    def _deliver(self, events: list[TokenEvent]) -> None:
        """Callbacks, after every request of the step sampled: one that raises ends only its
        own request."""
        for event in events:
            request = self._requests[event.request_id]
            if request.on_token is None:
                continue
            try:
                request.on_token(event)
            except Exception as exc:  # noqa: BLE001 - a client's callback may raise anything
                request.error = exc
                if request.finish_reason is None:
                    if request.keeps_stream and not request.token_fed:
                        request.ending, request.held = "error", None
                    else:
                        self._end(request, "error")
                else:
                    request.finish_reason = "error"

    def _withdraw(self, request: _Request) -> None:
        """A waiting request's granted slot goes back unused."""
        if request.granted:
            request.granted = False
            self.admission.withdraw()

    def _end(self, request: _Request, reason: str) -> None:
        if request.stream is not None and self._running.get(request.stream) is request:
            del self._running[request.stream]
            self._free_lanes.append(request.lane)
            if not request.keeps_stream:
                self.session.remove_stream(request.stream)
        if not request.keeps_stream:
            request.stream = None
        request.ending, request.held = None, None
        request.finish_reason = reason
        self._finished.append(request.request_id)
