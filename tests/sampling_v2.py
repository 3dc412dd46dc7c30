"""Sampling version 2 written out from its specification (COMMON.md), in plain Python and numpy:
the reference the native runtime's sampler is held to until runtime/sampling.py (the Python
runtime's own implementation of the same specification) is on main."""

from __future__ import annotations

import numpy as np

MASK = 2**64 - 1
GOLDEN = 0x9E3779B97F4A7C15


def mix(x: int) -> int:
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def spec_uniform(seed: int, n: int) -> float:
    """u_n: the n-th output of splitmix64 seeded with seed, as a double in [0, 1)."""
    return (mix((seed + (n + 1) * GOLDEN) & MASK) >> 11) * 2.0**-53


def spec_token(logits: np.ndarray, uniform: float, greedy: bool = False,
               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> int:
    if greedy:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    kept = np.ones(z.size, dtype=bool)
    if 0 < top_k < z.size:
        kth = np.sort(z)[::-1][top_k - 1]
        kept = z >= kth
    p = np.where(kept, np.exp(z - z.max()), 0.0)
    if top_p < 1.0:
        q = np.sort(p[kept])[::-1]
        c = np.cumsum(q)
        j = int(np.argmax(c >= top_p * c[-1])) if (c >= top_p * c[-1]).any() else len(q) - 1
        p = np.where(p < q[j], 0.0, p)
    cumulative = np.cumsum(p)
    above = np.nonzero(cumulative > uniform * cumulative[-1])[0]
    return int(above[0]) if above.size else int(np.nonzero(p > 0)[0][-1])
