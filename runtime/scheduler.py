"""Continuous batching: many generation requests share one Session, each at its own pace.

Each `step` makes one `Session.feed` call. Every decoding request feeds the token it sampled
last; every request still absorbing its prompt feeds the prompt up to its next segment
boundary (so whole segments take the one-call `segment` path). The session splits the call at
segment boundaries and batches streams at different positions. A request that finishes gives
its stream back at once; waiting requests take free streams in the order they were submitted.
Each request samples with its own generator (seeded from its Sampling.seed), so its output does
not depend on what else runs.
"""

from __future__ import annotations

import codecs
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from compressive_rt.errors import RuntimeInputError
from compressive_rt.runtime.generate import Sampling, sample_token
from compressive_rt.runtime.session import Session

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
    finish_reason: str | None  # "stop", "length" or "cancelled"

    @property
    def text(self) -> str:
        return bytes(self.tokens).decode("utf-8", errors="replace")


@dataclass(eq=False)
class _Request:
    request_id: int
    prompt: np.ndarray  # [P] int32
    max_new_tokens: int
    sampling: Sampling
    stop: list[bytes]
    on_token: Callable[[TokenEvent], None] | None
    rng: np.random.Generator
    decoder: codecs.IncrementalDecoder
    generated: bytearray = field(default_factory=bytearray)
    stream: int | None = None
    absorbed: int = 0  # prompt tokens fed so far
    next_input: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int32))
    finish_reason: str | None = None


def prompt_tokens(prompt: bytes | str | Sequence[int] | np.ndarray, vocab_size: int) -> np.ndarray:
    """The prompt as token ids [P] int32, checked: 1-D integers in range, at least one."""
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
    request's `on_token` callback receives the same events. Use as a context manager (or call
    `close`) so that an error leaves no stream behind.
    """

    def __init__(self, session: Session) -> None:
        if session.dims.vocab_size > BYTE_VOCAB:
            raise RuntimeInputError(
                f"the scheduler decodes byte tokens, but this engine's vocab_size is "
                f"{session.dims.vocab_size} (> {BYTE_VOCAB})")
        self.session = session
        self._requests: dict[int, _Request] = {}  # request id -> request, finished ones too
        self._waiting: deque[_Request] = deque()
        self._running: dict[int, _Request] = {}  # stream id -> request
        self._next_id = 0

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- requests ------------------------------------------------------------------------
    def submit(self, prompt: bytes | str | Sequence[int] | np.ndarray, max_new_tokens: int,
               sampling: Sampling | None = None, stop: Sequence[str | bytes] = (),
               on_token: Callable[[TokenEvent], None] | None = None) -> int:
        """Queue a request; returns its id. A bad request raises RuntimeInputError here and
        changes nothing. `sampling` defaults to Sampling(). Generation stops after
        max_new_tokens or once the generated bytes end with one of `stop` (text matched as
        UTF-8; the stop string is kept)."""
        tokens = prompt_tokens(prompt, self.session.dims.vocab_size)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) \
                or max_new_tokens < 0:
            raise RuntimeInputError(f"max_new_tokens must be an integer >= 0, "
                                    f"got {max_new_tokens!r}")
        sampling = sampling or Sampling()
        request = _Request(
            request_id=self._next_id, prompt=tokens, max_new_tokens=int(max_new_tokens),
            sampling=sampling, stop=[s.encode() if isinstance(s, str) else bytes(s)
                                     for s in stop if s],
            on_token=on_token, rng=np.random.default_rng(sampling.seed),
            decoder=codecs.getincrementaldecoder("utf-8")(errors="replace"))
        self._next_id += 1
        self._requests[request.request_id] = request
        if request.max_new_tokens == 0:
            request.finish_reason = "length"
        else:
            self._waiting.append(request)
        return request.request_id

    def result(self, request_id: int) -> Completion:
        request = self._request(request_id)
        return Completion(request.request_id, request.prompt.astype(np.uint8).tobytes(),
                          tuple(request.generated), request.finish_reason)

    def cancel(self, request_id: int) -> None:
        """Stop a waiting or running request now (its stream is freed); a finished one stays."""
        request = self._request(request_id)
        if request.finish_reason is not None:
            return
        if request.stream is None:
            self._waiting.remove(request)
        self._finish(request, "cancelled")

    def close(self) -> None:
        """Cancel every unfinished request, freeing their streams."""
        for request in [*self._waiting, *self._running.values()]:
            self.cancel(request.request_id)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

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
        while self._waiting or self._running:
            yield from self.step()

    def step(self) -> list[TokenEvent]:
        """Admit waiting requests to free streams, feed once, sample; returns the new tokens."""
        self._admit()
        seg_len = self.session.dims.seg_len
        feed = {}
        for stream, request in self._running.items():
            if request.absorbed < len(request.prompt):
                boundary = (request.absorbed // seg_len + 1) * seg_len
                feed[stream] = request.prompt[request.absorbed:boundary]
            else:
                feed[stream] = request.next_input
        fed = list(self._running.items())
        self.session.feed(feed, want_logits=False)
        events = []
        for stream, request in fed:
            if request.finish_reason is not None:  # cancelled by a callback of this step
                continue
            tokens = feed[stream]
            if request.absorbed < len(request.prompt):
                request.absorbed += len(tokens)
                if request.absorbed < len(request.prompt):
                    continue
            token = sample_token(self.session.last_logits(stream), request.sampling, request.rng)
            events.append(self._emit(request, token))
        return events

    def _admit(self) -> None:
        session = self.session
        while self._waiting and len(session.streams) < session.max_streams:
            request = self._waiting.popleft()
            request.stream = session.add_stream()
            self._running[request.stream] = request
        if self._waiting and not self._running:
            raise RuntimeInputError(
                f"{len(self._waiting)} request(s) wait, but all {session.max_streams} stream "
                f"slots of the session are held by streams outside this scheduler: remove one "
                f"or open the session with a larger max_streams")

    def _emit(self, request: _Request, token: int) -> TokenEvent:
        request.generated.append(token)
        text = request.decoder.decode(bytes((token,)))
        if any(request.generated.endswith(s) for s in request.stop):
            self._finish(request, "stop")
        elif len(request.generated) == request.max_new_tokens:
            self._finish(request, "length")
        else:
            request.next_input[0] = token
        finished = request.finish_reason is not None
        if finished:
            text += request.decoder.decode(b"", final=True)
        event = TokenEvent(request.request_id, token, text, finished)
        if request.on_token:
            request.on_token(event)
        return event

    def _finish(self, request: _Request, reason: str) -> None:
        if request.stream is not None:
            del self._running[request.stream]
            self.session.remove_stream(request.stream)
            request.stream = None
        request.finish_reason = reason
