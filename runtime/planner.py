"""Which engine calls a feed makes: a pure function of each stream's partial fill and pending
token count, with no engine and no buffers, so the rules are tested on their own.

The rules (the native runtime follows the same ones):
1. Streams whose partial segment is full (fill == L: a commit failed in an earlier feed) are
   committed first, in one `commit` call.
2. While any stream has tokens left: the streams at a segment boundary (fill 0) with at least L
   tokens left form one `segment` call of L tokens each (score and rotate in one call);
   otherwise every stream with tokens left joins one `extend` call of
   T = min(tokens left) capped so that no partial segment passes L, and the streams whose
   partial segment is then full form one `commit` call.
Streams with no tokens pending take no part, even when their partial segment is full.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

SEGMENT, EXTEND, COMMIT = "segment", "extend", "commit"


class Call(NamedTuple):
    """One engine call of a feed: the entry point, the streams taking part (indices into the
    feed's streams, in feed order) and the tokens each of them consumes (0 for a commit)."""

    entry: str
    streams: tuple[int, ...]
    tokens: int


def plan_feed(fills: Sequence[int], pending: Sequence[int], seg_len: int) -> list[Call]:
    """The calls that feed pending[i] tokens to stream i, whose partial segment holds fills[i]
    tokens (0 <= fill <= seg_len, the segment length L)."""
    count = len(pending)
    if count and min(pending) == max(pending):
        if max(fills) + pending[0] < seg_len:
            # the decoding step: every stream appends the same few tokens inside its segment
            return [Call(EXTEND, tuple(range(count)), pending[0])] if pending[0] else []
        if pending[0] == seg_len and not any(fills):  # scoring: one whole segment each
            return [Call(SEGMENT, tuple(range(count)), seg_len)]
    fills = list(fills)
    left = list(pending)
    calls = []
    full = tuple(i for i in range(count) if fills[i] == seg_len and left[i])
    if full:
        calls.append(Call(COMMIT, full, 0))
        for i in full:
            fills[i] = 0
    active = [i for i in range(count) if left[i]]
    while active:
        whole = tuple(i for i in active if fills[i] == 0 and left[i] >= seg_len)
        if whole:
            calls.append(Call(SEGMENT, whole, seg_len))
            for i in whole:
                left[i] -= seg_len
        else:
            tokens = min(min(left[i] for i in active), seg_len - max(fills[i] for i in active))
            calls.append(Call(EXTEND, tuple(active), tokens))
            rotated = []
            for i in active:
                left[i] -= tokens
                fills[i] += tokens
                if fills[i] == seg_len:
                    fills[i] = 0
                    rotated.append(i)
            if rotated:
                calls.append(Call(COMMIT, tuple(rotated), 0))
        active = [i for i in active if left[i]]
    return calls
