"""Timing statistics, the machine's physical limits, and the model's analytic cost per step."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from compressive_rt.ct_reference.config import ModelConfig


def stats(seconds: list[float]) -> dict:
    """Median and spread (p10, p90, min, max) of a list of durations, in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return {"median_ms": float(np.median(ms)), "p10_ms": float(np.percentile(ms, 10)),
            "p90_ms": float(np.percentile(ms, 90)), "min_ms": float(ms.min()),
            "max_ms": float(ms.max()), "mean_ms": float(ms.mean()), "n": int(ms.size)}


def ratio_stats(numerators: list[float], denominators: list[float]) -> dict:
    """numerator / denominator per repeat (both measured in the same round), then the median
    and the spread of those ratios over repeats."""
    ratios = np.asarray(numerators, dtype=np.float64) / np.asarray(denominators, dtype=np.float64)
    return {"median": float(np.median(ratios)), "min": float(ratios.min()),
            "max": float(ratios.max()), "p10": float(np.percentile(ratios, 10)),
            "p90": float(np.percentile(ratios, 90)), "n": int(ratios.size)}


def repeat(step: Callable[[], object], warmup: int, repeats: int) -> list[float]:
    """Durations of `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return times


# ---- physical limits -------------------------------------------------------------------------
def gemm_rate(threads: int, sizes: tuple[int, ...] = (1024, 2048), tries: int = 5,
              libs: tuple[str, ...] = ("torch", "numpy")) -> dict:
    """Best fp32 GEMM rate (GFLOP/s) of torch.matmul and numpy over square sizes and tries."""
    import torch

    torch.set_num_threads(threads)
    result: dict = {"sizes": list(sizes)}
    for lib in libs:
        best = 0.0
        for n in sizes:
            if lib == "torch":
                a, b = torch.randn(n, n), torch.randn(n, n)
                matmul = lambda: a @ b  # noqa: E731
            else:
                a = np.random.default_rng(0).random((n, n), dtype=np.float32)
                b = a.T.copy()
                matmul = lambda: a @ b  # noqa: E731
            for seconds in repeat(matmul, 1, tries):
                best = max(best, 2 * n ** 3 / seconds / 1e9)
        result[f"{lib}_gflops"] = best
    result["gflops"] = max(v for k, v in result.items() if k.endswith("_gflops"))
    return result


def memory_bandwidth(megabytes: int = 256, tries: int = 5) -> dict:
    """Best large numpy copy rate (GB/s, read + write bytes)."""
    src = np.ones(megabytes * 2 ** 20 // 4, dtype=np.float32)
    dst = np.empty_like(src)
    best = min(repeat(lambda: np.copyto(dst, src), 1, tries))
    return {"copy_gbps": 2 * src.nbytes / best / 1e9, "bytes": int(src.nbytes)}


# ---- analytic cost ---------------------------------------------------------------------------
def _compress_flops(cfg: ModelConfig) -> float:
    """One layer, one stream: f_c over L evicted slots + K/V projection of the L/c new slots."""
    d, seg_len = cfg.d_model, cfg.seg_len
    if cfg.compress_fn == "none":
        return 0.0
    flops = 2 * 2 * cfg.cmem_per_segment * d * d  # K and V of the new slots
    if cfg.compress_fn in ("conv", "dilated_conv"):
        flops += 2 * seg_len * d * d  # strided conv: L/c outputs x (c*d) x d
    if cfg.compress_fn == "dilated_conv":
        flops += len(cfg.dilation_rates) * 2 * 2 * seg_len * d * d
    return flops


def step_flops(cfg: ModelConfig, batch: int, n_new: int, cached_keys: int,
               rotate: bool) -> dict:
    """FLOPs of one cached step (what the engine must compute), by part.

    n_new tokens per stream attend to cached_keys + n_new keys; the relative-position table
    projection W_r R (C+M+L rows per layer) depends only on weights, so the engine folds it at
    load and it is listed apart ("pos_table", paid per call by the eager modules)."""
    d, n_layers, d_ff = cfg.d_model, cfg.n_layers, cfg.d_ff
    keys = cached_keys + n_new
    per_layer = {
        "qkvo_projections": 4 * 2 * n_new * d * d,
        "attention": 2 * 2 * n_new * keys * d + 2 * n_new * cfg.context_len * d,
        "ffn": 2 * 2 * n_new * d * d_ff,
    }
    parts = {name: batch * n_layers * value for name, value in per_layer.items()}
    parts["logits"] = batch * 2 * n_new * d * cfg.vocab_size
    parts["compression"] = batch * n_layers * _compress_flops(cfg) if rotate else 0.0
    total = sum(parts.values())
    parts["pos_table"] = n_layers * 2 * cfg.context_len * d * d
    return {"total": float(total), "parts": {k: float(v) for k, v in parts.items()}}


def segment_flops(cfg: ModelConfig, batch: int) -> dict:
    return step_flops(cfg, batch, cfg.seg_len, cfg.cmem_len + cfg.mem_len, rotate=True)


def decode_flops(cfg: ModelConfig, batch: int) -> dict:
    """One token per stream, amortising one rotation (commit) over seg_len tokens."""
    step = step_flops(cfg, batch, 1, cfg.cmem_len + cfg.mem_len + cfg.seg_len, rotate=False)
    rotation = step_flops(cfg, batch, 0, 0, rotate=True)["parts"]["compression"]
    step["total"] += rotation / cfg.seg_len
    step["parts"]["compression"] = rotation / cfg.seg_len
    return step


def reference_extra_flops(cfg: ModelConfig, batch: int, n_new: int) -> float:
    """What the eager reference computes on top of the cached step: K/V of the whole memory
    and the position table, every call."""
    d = cfg.d_model
    memory_kv = batch * cfg.n_layers * 2 * 2 * (cfg.cmem_len + cfg.mem_len) * d * d
    return float(memory_kv + cfg.n_layers * 2 * (cfg.cmem_len + cfg.mem_len + n_new) * d * d)


def decode_bytes(cfg: ModelConfig, weight_bytes: int, batch: int = 1) -> dict:
    """Bytes one decoding step of `batch` streams reads (fp32): every weight once, the projected
    position table, each stream's cached keys/values of memory and partial segment; the writes
    are d-sized rows."""
    d, n = cfg.d_model, cfg.n_layers
    state = batch * 4 * n * 2 * (cfg.cmem_len + cfg.mem_len + cfg.seg_len) * d
    pos_table = 4 * n * cfg.context_len * d
    return {"weights": int(weight_bytes), "pos_table": int(pos_table), "kv_state": int(state),
            "total": int(weight_bytes + pos_table + state)}
