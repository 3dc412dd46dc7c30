"""Sampling: one token for each of many requests from their logits [n, V], in one vectorized
pass, each request drawing from a random stream of its own.

The random stream (SAMPLING_VERSION 2; the native runtime draws the same numbers): a request
with seed s takes, for its n-th sampled token (n = 0, 1, ...), the uniform
u_n = (mix(s + (n + 1) * 0x9E3779B97F4A7C15 mod 2**64) >> 11) * 2**-53, the n-th output of
splitmix64 seeded with s. It is counter-based, so a request's tokens depend only on its seed,
its logits and how many tokens it sampled before: not on what else runs, how steps are
batched, or an engine call that failed and was retried. (Version 1 drew from numpy's
default_rng per request.)

A token from logits [V] (float32): greedy takes the first index of the maximum. Otherwise
z = float64(logits) / temperature, m = max(z); top-k (0 < k < V) keeps z >= the k-th largest z;
p_i = exp(z_i - m) for kept i, else 0; top-p (< 1) sorts the kept p descending into q,
c = cumsum(q), j = the first index with c[j] >= top_p * c[-1], and drops every p_i < q[j].
Finally C = cumsum(p) in token-id order and the token is the smallest i with C_i > u * C[-1]
(if rounding leaves none, the largest i with p_i > 0). Ties at a threshold are all kept.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np

from compressive_rt.errors import RuntimeInputError

SAMPLING_VERSION = 2
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
MIX_2 = np.uint64(0x94D049BB133111EB)
SEED_MASK = (1 << 64) - 1
# Below this, logits / temperature overflows float64 for ordinary logits (1e-310 gives inf - inf
# = NaN and token 0) long before it differs from the argmax; vLLM takes such temperatures as
# greedy too. Sampling refuses them; the server answers them greedily (serving/schemas.py).
MIN_TEMPERATURE = 1e-5


@dataclass(frozen=True)
class Sampling:
    """greedy=True takes the argmax; otherwise temperature, then top-k, then top-p (nucleus).
    `seed` (any integer, taken mod 2**64) fixes the random stream; None draws one at random."""

    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.temperature >= MIN_TEMPERATURE:
            raise RuntimeInputError(f"temperature must be >= {MIN_TEMPERATURE:g}, got "
                                    f"{self.temperature} (use greedy decoding for a "
                                    f"deterministic argmax)")
        if self.top_k < 0:
            raise RuntimeInputError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise RuntimeInputError(f"top_p must be in (0, 1], got {self.top_p}")

    def stream_seed(self) -> int:
        """The seed of this request's random stream: its own, or a fresh random one."""
        return secrets.randbits(64) if self.seed is None else self.seed & SEED_MASK


def uniforms(seeds: np.ndarray, counters: np.ndarray) -> np.ndarray:
    """u for each (seed, counter) pair: uint64 arrays [n] -> float64 [n] in [0, 1)."""
    x = seeds + (counters + np.uint64(1)) * GOLDEN  # uint64 arrays wrap mod 2**64
    x = (x ^ (x >> np.uint64(30))) * MIX_1
    x = (x ^ (x >> np.uint64(27))) * MIX_2
    x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


class BatchSampler:
    """Per-lane sampling settings and random streams for up to `lanes` requests at once; a
    request holds a lane while it runs (`assign`), and `sample` draws one token per lane."""

    def __init__(self, lanes: int, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.greedy = np.ones(lanes, dtype=bool)
        self.temperature = np.ones(lanes, dtype=np.float64)
        self.top_k = np.zeros(lanes, dtype=np.int64)
        self.top_p = np.ones(lanes, dtype=np.float64)
        self.seed = np.zeros(lanes, dtype=np.uint64)
        self.drawn = np.zeros(lanes, dtype=np.uint64)  # tokens each lane's request sampled
        self._z = np.empty((lanes, vocab_size), dtype=np.float64)  # scaled logits
        self._p = np.empty((lanes, vocab_size), dtype=np.float64)  # kept probabilities
        self._sorted = np.empty((lanes, vocab_size), dtype=np.float64)

    def assign(self, lane: int, sampling: Sampling, seed: int, drawn: int = 0) -> None:
        """Lane `lane` now samples for a request with these settings and random stream."""
        self.greedy[lane] = sampling.greedy
        self.temperature[lane] = sampling.temperature
        self.top_k[lane] = sampling.top_k if 0 < sampling.top_k < self.vocab_size else 0
        self.top_p[lane] = sampling.top_p
        self.seed[lane] = seed
        self.drawn[lane] = drawn

    def sample(self, logits: np.ndarray, lanes: np.ndarray) -> np.ndarray:
        """One token per lane from logits [n, V] float32 (row i for lanes[i]): int64 [n].
        Each lane's counter advances by one."""
        count, vocab = len(lanes), self.vocab_size
        greedy = self.greedy[lanes]
        drawn = self.drawn[lanes]
        self.drawn[lanes] = drawn + np.uint64(1)
        if greedy.all():
            return logits.argmax(axis=1)
        u = uniforms(self.seed[lanes], drawn)
        z = np.divide(logits, self.temperature[lanes, None], out=self._z[:count])
        peak = z.max(axis=1, keepdims=True)
        p = np.subtract(z, peak, out=self._p[:count])
        np.exp(p, out=p)
        top_k, top_p = self.top_k[lanes], self.top_p[lanes]
        nucleus = top_p < 1.0
        any_nucleus = nucleus.any()
        if any_nucleus or top_k.any():
            k = int(top_k[0])
            if not any_nucleus and k and (top_k == k).all():  # one k for all: no sort
                kth = np.partition(z, vocab - k, axis=1)[:, vocab - k, None]  # [n, 1]
            else:
                descending = self._sorted[:count]
                descending[:] = np.sort(z, axis=1)[:, ::-1]
                kth = descending[np.arange(count), np.where(top_k > 0, top_k, vocab) - 1, None]
            np.copyto(p, 0.0, where=z < kth)
            if any_nucleus:
                q = np.exp(descending - peak)  # the kept p, sorted descending
                np.copyto(q, 0.0, where=descending < kth)
                c = np.cumsum(q, axis=1)
                j = (c < top_p[:, None] * c[:, -1:]).sum(axis=1)
                floor = np.where(nucleus, q[np.arange(count), j], 0.0)[:, None]
                np.copyto(p, 0.0, where=p < floor)
        cumulative = np.cumsum(p, axis=1, out=p)
        tokens = (cumulative <= (u * cumulative[:, -1])[:, None]).sum(axis=1)
        past = tokens >= vocab  # rounding: the last token with p > 0
        if past.any():
            rows = np.flatnonzero(past)
            tokens[rows] = (cumulative[rows] < cumulative[rows, -1:]).sum(axis=1)
        if greedy.any():
            tokens[greedy] = logits[greedy].argmax(axis=1)
        return tokens
