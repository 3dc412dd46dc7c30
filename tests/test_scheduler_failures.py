"""The scheduler under failure: an engine call that fails, a callback that raises, requests that
join, leave and continue streams. Every request ends exactly as its clean run."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.engines import RecordingBackend
from support.rules import fp32_bound

from compressive_rt.runtime.generate import generate
from compressive_rt.runtime.sampling import Sampling
from compressive_rt.runtime.scheduler import Scheduler
from compressive_rt.runtime.session import EngineCallError, RuntimeInputError, Session

GREEDY = Sampling(greedy=True)
_clean_runs: dict = {}


def prompt_of(length: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(32, 127, length).astype(np.uint8).tobytes()


def clean_run(engine_dir, prompt: bytes, budget: int, sampling: Sampling = GREEDY) -> bytes:
    """The request alone on a session of its own, nothing failing."""
    key = (str(engine_dir), prompt, budget, sampling)
    if key not in _clean_runs:
        _clean_runs[key] = generate(Session(engine_dir), prompt, budget, sampling)
    return _clean_runs[key]


def step_through_failures(scheduler: Scheduler, limit: int = 2000) -> int:
    """Step until done, catching (and counting) the engine failures, as a server would."""
    failures = 0
    for _ in range(limit):
        if not (scheduler.waiting or scheduler.running):
            return failures
        try:
            scheduler.step()
        except EngineCallError:
            failures += 1
    raise AssertionError("the scheduler did not finish")


class PositionProbe:
    """on_token callbacks that check each request's stream: at its j-th token (from 0) the
    stream holds the prompt and the j tokens generated before it, no more, no fewer (a
    finished request on a fresh stream has given it back: nothing to check)."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler, self.wrong, self.logits = scheduler, [], {}

    def callback(self, prompt_len: int, raise_at: int | None = None):
        seen = []

        def on_token(event):
            request = event.request_id
            stream = self.scheduler.stream(request)
            if stream is not None:
                position = self.scheduler.session.position(stream)
                if position != prompt_len + len(seen):
                    self.wrong.append((request, len(seen), position, prompt_len + len(seen)))
                self.logits.setdefault(request, []).append(
                    self.scheduler.session.last_logits(stream).copy())
            seen.append(event.token)
            if len(seen) - 1 == raise_at:
                raise ConnectionError(f"client of request {request} went away")

        return on_token


def test_a_failed_engine_call_loses_no_token_and_feeds_none_twice(engine):
    """Two requests (a 200-byte prompt and "ab", greedy, two streams); one engine call fails,
    each in turn, and the caller keeps stepping: both finish as their clean runs, and every
    token's stream holds exactly what was fed before it."""
    _, engine_dir = engine("conv")
    prompts = [prompt_of(200, seed=1), b"ab"]
    expected = [clean_run(engine_dir, p, 12) for p in prompts]
    probe_backend = RecordingBackend(engine_dir)
    with Scheduler(Session(engine_dir, backend=probe_backend, max_streams=2)) as scheduler:
        for p in prompts:
            scheduler.submit(p, 12, GREEDY)
        list(scheduler.run())
    clean_logits = None
    for failing_call in range(1, probe_backend.attempts + 1):
        session = Session(engine_dir, backend=RecordingBackend(engine_dir, {failing_call}),
                          max_streams=2)
        scheduler = Scheduler(session)
        probe = PositionProbe(scheduler)
        ids = [scheduler.submit(p, 12, GREEDY, on_token=probe.callback(len(p))) for p in prompts]
        assert step_through_failures(scheduler) == 1
        assert probe.wrong == []
        assert [bytes(scheduler.result(i).tokens) for i in ids] == expected
        first_logits = probe.logits[ids[0]][0]  # at the 200-byte prompt's first token
        if clean_logits is None:
            clean_logits = first_logits
        assert np.abs(first_logits - clean_logits).max() <= fp32_bound(clean_logits)


def test_a_raising_callback_ends_only_its_own_request(engine):
    _, engine_dir = engine("conv")
    prompts = [prompt_of(11, seed=2), prompt_of(5, seed=3)]
    session = Session(engine_dir, max_streams=2)
    scheduler = Scheduler(session)
    probe = PositionProbe(scheduler)
    broken = scheduler.submit(prompts[0], 10, GREEDY,
                              on_token=probe.callback(len(prompts[0]), raise_at=1))
    other = scheduler.submit(prompts[1], 10, GREEDY, on_token=probe.callback(len(prompts[1])))
    list(scheduler.run())
    assert probe.wrong == []
    result = scheduler.result(broken)
    assert result.finish_reason == "error" and isinstance(result.error, ConnectionError)
    assert bytes(result.tokens) == clean_run(engine_dir, prompts[0], 10)[:2]
    assert bytes(scheduler.result(other).tokens) == clean_run(engine_dir, prompts[1], 10)
    assert scheduler.result(other).finish_reason == "length" and session.streams == []


requests = st.lists(st.tuples(
    st.integers(1, 30),  # prompt length: 0 to 3 segment boundaries at L = 8
    st.integers(1, 10),  # max_new_tokens
    st.one_of(st.just(GREEDY), st.builds(Sampling, top_k=st.sampled_from([0, 5, 40]),
                                         top_p=st.sampled_from([1.0, 0.8]),
                                         seed=st.integers(0, 2**64 - 1))),
    st.one_of(st.none(), st.integers(0, 9)),  # the token whose callback raises
), min_size=1, max_size=6)


@pytest.mark.slow
@given(requests, st.integers(1, 4), st.sets(st.integers(1, 60), max_size=4),
       st.integers(0, 2**16))
def test_any_mix_of_requests_failures_and_raising_callbacks_ends_as_the_clean_runs(
        engine, mix, max_streams, failing_calls, seed):
    _, engine_dir = engine("conv")
    session = Session(engine_dir, backend=RecordingBackend(engine_dir, failing_calls),
                      max_streams=max_streams)
    scheduler = Scheduler(session)
    probe = PositionProbe(scheduler)
    ids = [scheduler.submit(prompt_of(length, seed + index), budget, sampling,
                            on_token=probe.callback(length, raise_at))
           for index, (length, budget, sampling, raise_at) in enumerate(mix)]
    step_through_failures(scheduler)
    assert probe.wrong == []
    assert session.streams == []
    for index, (length, budget, sampling, raise_at) in enumerate(mix):
        clean = clean_run(engine_dir, prompt_of(length, seed + index), budget, sampling)
        result = scheduler.result(ids[index])
        if raise_at is not None and raise_at < len(clean):
            assert result.finish_reason == "error"
            assert bytes(result.tokens) == clean[:raise_at + 1]
        else:
            assert result.finish_reason == "length" and bytes(result.tokens) == clean


def test_a_seeded_request_is_the_same_alone_among_others_joining_leaving_and_after_a_failure(
        engine):
    _, engine_dir = engine("conv")
    mine, prompt = Sampling(top_k=40, temperature=0.9, seed=1234), prompt_of(13, seed=5)
    expected = clean_run(engine_dir, prompt, 40, mine)
    for failing in (set(), {17}):
        session = Session(engine_dir, backend=RecordingBackend(engine_dir, failing),
                          max_streams=8)
        scheduler = Scheduler(session)
        others = [scheduler.submit(prompt_of(3 + i, seed=i), 5 + 7 * i,
                                   Sampling(top_k=10 + i, seed=i)) for i in range(3)]
        request = scheduler.submit(prompt, 40, mine)
        others += [scheduler.submit(prompt_of(9, seed=10 + i), 30, Sampling(top_p=0.9, seed=i))
                   for i in range(4)]
        for _ in range(12):  # some of the others leave meanwhile
            try:
                scheduler.step()
            except EngineCallError:
                pass
        others += [scheduler.submit(prompt_of(20, seed=30 + i), 6, Sampling(seed=i))
                   for i in range(3)]  # and new ones join
        step_through_failures(scheduler)
        assert bytes(scheduler.result(request).tokens) == expected
        assert len(set(expected)) > 5


# ---- requests that continue a stream -------------------------------------------------------
def test_a_request_on_a_kept_stream_feeds_every_token_it_returns(engine):
    _, engine_dir = engine("conv")
    history, prompt = prompt_of(19, seed=7), prompt_of(6, seed=8)
    session = Session(engine_dir, max_streams=2)
    stream = session.add_stream()
    session.feed({stream: np.frombuffer(history, np.uint8)}, want_logits=False)
    positions_at_end = []

    def on_token(event):
        if event.finished:
            positions_at_end.append(session.position(stream))

    scheduler = Scheduler(session)
    request = scheduler.submit(prompt, 9, GREEDY, on_token=on_token, stream=stream)
    list(scheduler.run())
    generated = bytes(scheduler.result(request).tokens)
    assert generated == clean_run(engine_dir, history + prompt, 9)
    assert positions_at_end == [len(history) + len(prompt) + 9]  # the last token is in
    assert session.streams == [stream]
    whole = history + prompt + generated
    reference = Session(engine_dir)
    single = reference.add_stream()
    want = reference.feed({single: np.frombuffer(whole, np.uint8)})[single][-1]
    assert np.abs(session.last_logits(stream) - want).max() <= fp32_bound(want)


def test_an_empty_prompt_continues_a_fed_stream_from_its_last_logits(engine):
    _, engine_dir = engine("conv")
    history = prompt_of(12, seed=9)
    session = Session(engine_dir)
    stream = session.add_stream()
    scheduler = Scheduler(session)
    with pytest.raises(RuntimeInputError, match="has not been fed any tokens"):
        scheduler.submit(b"", 5, GREEDY, stream=stream)
    session.feed({stream: np.frombuffer(history, np.uint8)}, want_logits=False)
    first = scheduler.submit(b"", 5, GREEDY, stream=stream)
    with pytest.raises(RuntimeInputError, match=f"stream {stream} is in use by request {first}"):
        scheduler.submit(b"x", 5, GREEDY, stream=stream)
    list(scheduler.run())
    second = scheduler.submit(b"", 4, GREEDY, stream=stream)
    list(scheduler.run())
    generated = bytes(scheduler.result(first).tokens) + bytes(scheduler.result(second).tokens)
    assert generated == clean_run(engine_dir, history, 9)
    assert session.position(stream) == len(history) + 9
    assert [c.request_id for c in scheduler.take_finished()] == [first, second]
    assert scheduler.take_finished() == []
    with pytest.raises(RuntimeInputError, match=f"no request {first} in this scheduler"):
        scheduler.result(first)  # a long-running server keeps no record of old requests


def test_cancelling_a_request_on_a_kept_stream_feeds_the_token_it_already_returned(engine):
    _, engine_dir = engine("conv")
    session = Session(engine_dir)
    stream = session.add_stream()
    session.feed({stream: np.frombuffer(b"abcdef", np.uint8)}, want_logits=False)
    scheduler = Scheduler(session)
    request = scheduler.submit(b"", 50, GREEDY, stream=stream)
    returned = [event.token for _ in range(3) for event in scheduler.step()]
    scheduler.cancel(request)
    assert scheduler.result(request).finish_reason is None  # its last token is not in yet
    assert scheduler.step() == []
    assert scheduler.result(request).finish_reason == "cancelled"
    assert list(scheduler.result(request).tokens) == returned
    assert session.position(stream) == 6 + len(returned) and session.streams == [stream]


def test_zero_new_tokens_on_a_kept_stream_adds_the_prompt_only(engine):
    _, engine_dir = engine("conv")
    session = Session(engine_dir)
    stream = session.add_stream()
    scheduler = Scheduler(session)
    request = scheduler.submit(prompt_of(21, seed=4), 0, GREEDY, stream=stream)
    list(scheduler.run())
    assert scheduler.result(request).finish_reason == "length"
    assert scheduler.result(request).tokens == () and session.position(stream) == 21
