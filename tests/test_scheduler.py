"""Continuous batching: many requests on one Session, each as if it ran alone."""

import numpy as np
import pytest
import torch

from compressive_rt.ct_reference.generate import greedy_generate
from compressive_rt.runtime.generate import generate
from compressive_rt.runtime.sampling import Sampling
from compressive_rt.runtime.scheduler import Scheduler
from compressive_rt.runtime.session import RuntimeInputError, Session

GREEDY = Sampling(greedy=True)
EMPTY_PROMPT = ("the prompt is empty: the model has no start-of-text token, so the first byte "
                "would have nothing to condition on; give at least one byte")


def prompt_of(length: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(32, 127, length).astype(np.uint8).tobytes()


def alone(engine_dir, prompt: bytes, max_new_tokens: int, sampling: Sampling = GREEDY,
          stop=()) -> bytes:
    return generate(Session(engine_dir), prompt, max_new_tokens, sampling, stop=stop)


@pytest.mark.slow
def test_many_requests_on_few_streams_each_equal_generating_it_alone(engine):
    model, engine_dir = engine("conv")  # seg_len 8: prompts cross 0 to 3 segment boundaries
    budgets = {1: 30, 5: 7, 8: 19, 13: 40, 17: 3, 30: 25}  # prompt length -> max_new_tokens
    prompts = {length: prompt_of(length, seed=length) for length in budgets}
    stop_prompt = prompts[13]
    unstopped = alone(engine_dir, stop_prompt, budgets[13])
    stop = unstopped[20:22]  # cuts the 40-token budget short
    late_prompt = prompt_of(11, seed=99)

    session = Session(engine_dir, max_streams=3)
    scheduler = Scheduler(session)
    ids = {length: scheduler.submit(prompt, budgets[length], GREEDY,
                                    stop=[stop] if length == 13 else ())
           for length, prompt in prompts.items()}
    waited, steps, late = 0, 0, None
    while scheduler.waiting or scheduler.running:
        scheduler.step()
        steps += 1
        assert len(session.streams) == scheduler.running <= 3
        waited = max(waited, scheduler.waiting)
        if steps == 10:  # joins while the others decode
            late = scheduler.submit(late_prompt, 15, GREEDY)
    assert waited == 3 and session.streams == []

    for length, request_id in ids.items():
        result = scheduler.result(request_id)
        if length == 13:
            assert bytes(result.tokens) == unstopped[:unstopped.index(stop) + 2]
            assert result.finish_reason == "stop"
        else:
            expected = alone(engine_dir, prompts[length], budgets[length])
            assert bytes(result.tokens) == expected
            eager = greedy_generate(model, torch.tensor([list(prompts[length])]), budgets[length])
            assert list(result.tokens) == eager[0].tolist()
            assert result.finish_reason == "length"
    assert bytes(scheduler.result(late).tokens) == alone(engine_dir, late_prompt, 15)


def test_a_sampled_request_does_not_depend_on_what_else_runs(engine):
    _, engine_dir = engine("conv")
    sampling = Sampling(temperature=0.8, top_k=20, seed=7)
    prompt = prompt_of(10, seed=1)
    expected = alone(engine_dir, prompt, 30, sampling)
    scheduler = Scheduler(Session(engine_dir, max_streams=3))
    scheduler.submit(prompt_of(21, seed=2), 12, Sampling(seed=7))
    sampled = scheduler.submit(prompt, 30, sampling)
    scheduler.submit(prompt, 9, Sampling(top_p=0.5, seed=8))
    list(scheduler.run())
    assert bytes(scheduler.result(sampled).tokens) == expected


def test_callbacks_and_the_iterator_deliver_the_same_tokens_and_text(engine):
    _, engine_dir = engine("conv")
    scheduler = Scheduler(Session(engine_dir, max_streams=2))
    by_callback = []
    ids = [scheduler.submit(prompt_of(n, seed=n), 12 + n, GREEDY, on_token=by_callback.append)
           for n in (3, 9, 14)]
    by_iterator = list(scheduler.run())
    assert by_iterator == by_callback and len(by_iterator) == 15 + 21 + 26
    for request_id in ids:
        events = [e for e in by_iterator if e.request_id == request_id]
        result = scheduler.result(request_id)
        assert tuple(e.token for e in events) == result.tokens
        assert "".join(e.text for e in events) == result.text
        assert [e.finished for e in events] == [False] * (len(events) - 1) + [True]


def test_a_finished_request_frees_its_stream_at_once_for_the_next(engine):
    _, engine_dir = engine("conv")
    session = Session(engine_dir, max_streams=1)
    scheduler = Scheduler(session)
    streams_at_last_token = []

    def on_token(event):
        if event.finished:
            streams_at_last_token.append(list(session.streams))

    first = scheduler.submit(b"abc", 4, GREEDY, on_token=on_token)
    second = scheduler.submit(b"xyz", 3, GREEDY)
    events = list(scheduler.run())
    assert streams_at_last_token == [[]]
    assert [e.request_id for e in events] == [first] * 4 + [second] * 3
    assert bytes(scheduler.result(second).tokens) == alone(engine_dir, b"xyz", 3)


def test_a_bad_request_is_refused_at_submission_and_the_others_run(engine):
    _, engine_dir = engine("conv")
    scheduler = Scheduler(Session(engine_dir, max_streams=2))
    good = scheduler.submit(b"abc", 10, GREEDY)
    bad_requests = [
        ((b"", 5), EMPTY_PROMPT),
        (([], 5), EMPTY_PROMPT),
        (([1, 300], 5), "prompt token id 300 is out of range [0, 256)"),
        ((np.array([0.5]), 5), "prompt token ids must be integers, got dtype float64"),
        ((np.zeros((2, 2), np.int32), 5), "1-D sequence of token ids, got shape (2, 2)"),
        ((b"abc", -1), "max_new_tokens must be an integer >= 0, got -1"),
    ]
    for args, message in bad_requests:
        with pytest.raises(RuntimeInputError) as error:
            scheduler.submit(*args)
        assert message in str(error.value)
    assert scheduler.waiting == 1
    list(scheduler.run())
    assert bytes(scheduler.result(good).tokens) == alone(engine_dir, b"abc", 10)
    with pytest.raises(RuntimeInputError, match="no request 1 in this scheduler"):
        scheduler.result(1)


def test_generate_refuses_an_empty_prompt_and_takes_no_stream(engine):
    _, engine_dir = engine("conv")
    session = Session(engine_dir)
    with pytest.raises(RuntimeInputError) as error:
        generate(session, b"", 5, GREEDY)
    assert str(error.value) == EMPTY_PROMPT
    assert session.streams == []


def test_zero_new_tokens_finishes_at_submission_without_a_stream(engine):
    _, engine_dir = engine("conv")
    session = Session(engine_dir)
    scheduler = Scheduler(session)
    request = scheduler.submit(b"abc", 0, GREEDY)
    assert scheduler.waiting == 0 and scheduler.running == 0 and session.streams == []
    assert list(scheduler.run()) == []
    assert scheduler.result(request).tokens == () and scheduler.result(request).text == ""
    assert scheduler.result(request).finish_reason == "length"


def test_cancel_and_close_free_every_stream_and_keep_the_tokens_so_far(engine):
    _, engine_dir = engine("conv")
    session = Session(engine_dir, max_streams=2)
    with Scheduler(session) as scheduler:
        ids = [scheduler.submit(prompt_of(5, seed=i), 50, GREEDY) for i in range(3)]
        for _ in range(4):  # prompt in one step, then a token per step
            scheduler.step()
        scheduler.cancel(ids[0])
        assert len(session.streams) == scheduler.running == 1 and scheduler.waiting == 1
        scheduler.step()  # the waiting request takes the freed stream
        assert scheduler.running == 2
    assert session.streams == []
    results = [scheduler.result(i) for i in ids]
    assert [r.finish_reason for r in results] == ["cancelled"] * 3
    assert [len(r.tokens) for r in results] == [4, 5, 1]
    assert bytes(results[0].tokens) == alone(engine_dir, prompt_of(5, seed=0), 4)


def test_a_session_full_of_other_streams_is_a_clear_error(engine):
    _, engine_dir = engine("conv")
    session = Session(engine_dir, max_streams=1)
    session.add_stream()
    scheduler = Scheduler(session)
    scheduler.submit(b"abc", 5, GREEDY)
    with pytest.raises(RuntimeInputError, match="all 1 stream slots of the session are held "
                                                "by streams outside this scheduler"):
        scheduler.step()


def test_last_logits_after_a_feed_of_streams_at_different_lengths_equal_alone(engine):
    _, engine_dir = engine("conv")
    tokens = [np.arange(5, dtype=np.int32) + 40, np.array([7], dtype=np.int32)]
    session = Session(engine_dir, max_streams=2)
    streams = [session.add_stream(), session.add_stream()]
    session.feed(dict(zip(streams, tokens)), want_logits=False)
    for stream, stream_tokens in zip(streams, tokens):
        reference = Session(engine_dir)
        single = reference.add_stream()
        expected = reference.feed({single: stream_tokens})[single][-1]
        np.testing.assert_allclose(session.last_logits(stream), expected, atol=1e-5, rtol=0)
