"""Batched sampling (runtime/sampling.py) against a plain, one-token-at-a-time reading of the
spec in its docstring: Python integers for the random stream, Python floats for the rest."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from compressive_rt.runtime.sampling import BatchSampler, Sampling, uniforms
from compressive_rt.runtime.session import RuntimeInputError

MASK = (1 << 64) - 1


def splitmix64(seed: int, index: int) -> float:
    """The index-th output of splitmix64 seeded with `seed`, as a uniform in [0, 1)."""
    x = (seed + (index + 1) * 0x9E3779B97F4A7C15) & MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    x ^= x >> 31
    return (x >> 11) / 2.0 ** 53


def reference_token(logits: np.ndarray, sampling: Sampling, seed: int, index: int) -> int:
    values = [float(v) for v in logits]
    if sampling.greedy:
        return values.index(max(values))
    z = [v / sampling.temperature for v in values]
    peak = max(z)
    keep = [True] * len(z)
    if 0 < sampling.top_k < len(z):
        kth = sorted(z, reverse=True)[sampling.top_k - 1]
        keep = [v >= kth for v in z]
    p = [math.exp(v - peak) if k else 0.0 for v, k in zip(z, keep)]
    if sampling.top_p < 1.0:
        q = sorted(p, reverse=True)
        total, running = sum(q), 0.0
        cumulative = []
        for value in q:
            running += value
            cumulative.append(running)
        total = cumulative[-1]
        j = next(i for i, c in enumerate(cumulative) if c >= sampling.top_p * total)
        p = [0.0 if value < q[j] else value for value in p]
    running, cumulative = 0.0, []
    for value in p:
        running += value
        cumulative.append(running)
    target = splitmix64(seed, index) * cumulative[-1]
    for i, c in enumerate(cumulative):
        if c > target:
            return i
    return max(i for i, value in enumerate(p) if value > 0)


def test_uniforms_are_the_splitmix64_stream():
    seeds = np.array([0, 1, 2**63, MASK, 12345], dtype=np.uint64)
    counters = np.array([0, 7, 3, 1000, 2**40], dtype=np.uint64)
    got = uniforms(seeds, counters)
    want = [splitmix64(int(s), int(c)) for s, c in zip(seeds, counters)]
    assert got.tolist() == want


def test_the_first_splitmix64_outputs_of_seed_zero_match_the_published_sequence():
    # splitmix64 seeded with 0 starts 0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4 (Vigna's
    # splitmix64.c, the stream that seeds xoshiro)
    for index, word in enumerate((0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4)):
        assert uniforms(np.zeros(1, np.uint64), np.array([index], np.uint64))[0] == \
            (word >> 11) / 2.0 ** 53


settings = st.builds(
    Sampling,
    greedy=st.booleans(),
    temperature=st.sampled_from([0.5, 1.0, 1.7]),
    top_k=st.sampled_from([0, 1, 3, 40, 255, 256, 300]),
    top_p=st.sampled_from([1.0, 0.9, 0.3, 0.01]),
    seed=st.integers(-2**70, 2**70))


@given(st.lists(settings, min_size=1, max_size=8), st.integers(0, 2**32), st.integers(0, 50))
def test_batched_sampling_draws_what_the_spec_draws_for_each_request(requests, data_seed, drawn):
    rng = np.random.default_rng(data_seed)
    logits = (rng.standard_normal((len(requests), 256)) * 3).astype(np.float32)
    logits[:, :8] = logits[:, 8:16]  # ties at every threshold
    sampler = BatchSampler(8, 256)
    lanes = rng.permutation(8)[:len(requests)]
    for lane, sampling in zip(lanes, requests):
        sampler.assign(int(lane), sampling, sampling.stream_seed(), drawn)
    tokens = sampler.sample(logits, lanes)
    want = [reference_token(row, sampling, sampling.stream_seed(), drawn)
            for row, sampling in zip(logits, requests)]
    assert tokens.tolist() == want
    assert sampler.drawn[lanes].tolist() == [drawn + 1] * len(requests)


def test_a_request_draws_the_same_tokens_alone_and_among_others():
    rng = np.random.default_rng(0)
    steps = [(rng.standard_normal((8, 256)) * 2).astype(np.float32) for _ in range(30)]
    mine = Sampling(top_k=40, top_p=0.9, temperature=0.8, seed=7)
    alone = BatchSampler(1, 256)
    alone.assign(0, mine, mine.stream_seed())
    crowd = BatchSampler(8, 256)
    for lane in range(8):
        crowd.assign(lane, mine if lane == 5 else Sampling(top_k=lane + 1, seed=lane),
                     mine.stream_seed() if lane == 5 else lane)
    by_itself = [int(alone.sample(logits[5:6], np.array([0]))[0]) for logits in steps]
    among = [int(crowd.sample(logits, np.arange(8))[5]) for logits in steps]
    assert by_itself == among
    assert len(set(by_itself)) > 5  # it really samples


def test_top_k_and_top_p_restrict_the_support():
    logits = np.linspace(0.0, 3.0, 16, dtype=np.float32)[None]
    sampler = BatchSampler(1, 16)
    seen_k, seen_p = set(), set()
    for seed in range(300):
        sampler.assign(0, Sampling(top_k=3), seed)
        seen_k.add(int(sampler.sample(logits, np.array([0]))[0]))
        sampler.assign(0, Sampling(top_p=0.01), seed)
        seen_p.add(int(sampler.sample(logits, np.array([0]))[0]))
    assert seen_k == {13, 14, 15} and seen_p == {15}


def test_a_missing_seed_draws_a_random_stream_and_bad_settings_are_refused():
    assert Sampling().stream_seed() != Sampling().stream_seed()
    assert Sampling(seed=-1).stream_seed() == MASK
    with pytest.raises(RuntimeInputError, match="temperature must be >= 1e-05"):
        Sampling(temperature=0)
    with pytest.raises(RuntimeInputError, match="temperature must be >= 1e-05, got 1e-310"):
        Sampling(temperature=1e-310)
    with pytest.raises(RuntimeInputError, match="top_p must be in"):
        Sampling(top_p=0)
