"""The call planner (runtime/planner.py) against a plain token-by-token model of its rules."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from compressive_rt.runtime.planner import COMMIT, EXTEND, SEGMENT, Call, plan_feed


def token_by_token(fill: int, pending: int, seg_len: int) -> list[str]:
    """One stream alone: what consumes each of its tokens ("segment" for a whole segment that
    starts at a boundary with L tokens to go, else "extend"), with a "commit" each time its
    partial segment fills up (and first of all when it is already full)."""
    events = []
    if fill == seg_len and pending:
        events.append(COMMIT)
        fill = 0
    left = pending
    while left:
        if fill == 0 and left >= seg_len:
            events += [SEGMENT] * seg_len
            left -= seg_len
            continue
        events.append(EXTEND)
        fill, left = fill + 1, left - 1
        if fill == seg_len:
            events.append(COMMIT)
            fill = 0
    return events


def per_stream(plan: list[Call], streams: int) -> list[list[str]]:
    events = [[] for _ in range(streams)]
    for entry, members, tokens in plan:
        for i in members:
            events[i] += [entry] * (tokens if entry != COMMIT else 1)
    return events


feeds = st.integers(1, 9).flatmap(lambda seg_len: st.tuples(
    st.just(seg_len),
    st.lists(st.tuples(st.integers(0, seg_len), st.integers(0, 4 * seg_len + 3)),
             min_size=1, max_size=6)))


@given(feeds)
def test_each_stream_gets_what_it_would_get_alone_token_by_token(feed):
    seg_len, streams = feed
    fills, pending = [f for f, _ in streams], [p for _, p in streams]
    plan = plan_feed(fills, pending, seg_len)
    assert per_stream(plan, len(streams)) == [token_by_token(f, p, seg_len)
                                              for f, p in streams]


@given(feeds)
def test_every_call_is_one_the_engine_can_run(feed):
    seg_len, streams = feed
    fills = [f for f, _ in streams]
    for entry, members, tokens in plan_feed(fills, [p for _, p in streams], seg_len):
        assert members and len(set(members)) == len(members)
        if entry == SEGMENT:
            assert tokens == seg_len and all(fills[i] == 0 for i in members)
        elif entry == EXTEND:
            assert 1 <= tokens and all(fills[i] + tokens <= seg_len for i in members)
            for i in members:
                fills[i] += tokens
        else:
            assert tokens == 0 and all(fills[i] == seg_len for i in members)
            for i in members:
                fills[i] = 0
    # no partial segment is left full, but one that had nothing to feed
    assert all(fill < seg_len or not p for fill, (_, p) in zip(fills, streams))


def test_decoding_streams_in_step_make_one_extend_call_and_commit_together():
    assert plan_feed([3, 3, 3], [1, 1, 1], 8) == [Call(EXTEND, (0, 1, 2), 1)]
    assert plan_feed([7, 2], [1, 1], 8) == [Call(EXTEND, (0, 1), 1), Call(COMMIT, (0,), 0)]


def test_whole_segments_at_a_boundary_score_in_one_call_while_others_wait():
    assert plan_feed([0, 5], [16, 3], 8) == [Call(SEGMENT, (0,), 8), Call(SEGMENT, (0,), 8),
                                             Call(EXTEND, (1,), 3), Call(COMMIT, (1,), 0)]


def test_a_full_segment_left_by_a_failed_commit_is_committed_first():
    assert plan_feed([8, 0], [2, 2], 8) == [Call(COMMIT, (0,), 0), Call(EXTEND, (0, 1), 2)]
    assert plan_feed([8], [0], 8) == []
