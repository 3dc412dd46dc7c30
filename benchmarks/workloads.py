"""Timed workloads, run round-robin: within each repeat every contender runs once (the first one
rotating), so machine drift hits all alike; each ratio is taken per repeat.

Workloads run with mem and cmem full (`fill` first): a first segment (empty memory), a segment
step, and decoding. One decode repeat is a cycle that ends with the token that commits; its
cost per token amortised over a segment is ((L-1) * median plain step + commit step) / L.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from compressive_rt.benchmarks.contenders import fill_segments
from compressive_rt.benchmarks.measure import ratio_stats, stats
from compressive_rt.benchmarks.settings import Settings, log

Unit = Callable[[], dict]  # one timed repeat -> {"seconds": ..., optional extra figures}
SPEEDUP_OF = ("native", "runtime", "cached")  # ratios are reported as these contenders' speed-ups


class CompileTimeout(Exception):
    pass


def random_tokens(rng: np.random.Generator, vocab: int, batch: int, length: int) -> np.ndarray:
    return rng.integers(0, vocab, (batch, length)).astype(np.int64)


def fill_tokens(rng: np.random.Generator, cfg, batch: int) -> np.ndarray:
    return random_tokens(rng, cfg.vocab_size, batch, fill_segments(cfg) * cfg.seg_len)


def interleave(units: dict[str, Unit], repeats: int) -> dict[str, list[dict]]:
    """Run each unit `repeats` times, round-robin, starting one contender later each repeat."""
    keys = list(units)
    results: dict[str, list[dict]] = {key: [] for key in keys}
    for repeat in range(repeats):
        shift = repeat % len(keys)
        for key in keys[shift:] + keys[:shift]:
            results[key].append(units[key]())
    return results


def timed(contender: Any, call: Callable[[], object]) -> dict:
    """Seconds of call(); for session contenders also the seconds outside engine calls (as the
    contender measures them itself when it can: the native loop around its own Run calls)."""
    engine_before = getattr(contender, "engine_seconds", None)
    outside_before = getattr(contender, "outside_seconds", None)
    started = time.perf_counter()
    call()
    elapsed = time.perf_counter() - started
    if outside_before is not None:
        return {"seconds": elapsed, "outside": contender.outside_seconds - outside_before}
    if engine_before is None:
        return {"seconds": elapsed}
    return {"seconds": elapsed, "outside": elapsed - (contender.engine_seconds - engine_before)}


def summarize(repeats: list[dict]) -> dict:
    """Stats of the per-repeat seconds, medians of the extra figures (in ms)."""
    row = stats([r["seconds"] for r in repeats])
    for name in repeats[0]:
        if name != "seconds":
            row[f"{name}_ms"] = float(np.median([r[name] for r in repeats])) * 1e3
    if "outside_ms" in row:
        row["outside_engine_ms"] = row.pop("outside_ms")
    return row


def decode_unit(contender: Any, cfg, batch: int, settings: Settings,
                rng: np.random.Generator) -> Unit:
    """One repeat of decoding, by the contender's decode_kind."""
    seg_len = cfg.seg_len
    if contender.decode_kind == "rescore":
        # no cache: the logits of position p re-score the whole partial segment; timed at evenly
        # spaced positions, their mean is the cost per token (the rotation at L-1 left out, in
        # eager's favour)
        k = settings.nocache_positions
        positions = [max(0, int((i + 0.5) * seg_len / k) - 1) for i in range(k)]
        tokens = random_tokens(rng, cfg.vocab_size, batch, seg_len)
        contender.decode_at(tokens, positions[0])  # warm-up
        return lambda: {"seconds": float(np.mean([contender.decode_at(tokens, p)
                                                  for p in positions]))}
    if contender.decode_kind == "generate":
        # the package's loop from a prompt of full-memory segments + 1 token: the generate
        # call's time minus the same call with 0 new tokens (its prompt), per new token, over
        # L new tokens (a whole cycle with one rotation, like the cached decode's amortised cost)
        count = seg_len
        prompt = np.concatenate([fill_tokens(rng, cfg, batch),
                                 random_tokens(rng, cfg.vocab_size, batch, 1)], axis=1)
        contender.generate(prompt, 1)  # warm-up
        return lambda: {"seconds": (contender.generate(prompt, count) -
                                    contender.generate(prompt, 0)) / count}
    count = min(settings.decode_tokens, seg_len)

    def cycle() -> dict:
        if seg_len - count:
            contender.advance(random_tokens(rng, cfg.vocab_size, batch, seg_len - count))
        tokens = random_tokens(rng, cfg.vocab_size, batch, count)
        steps = [timed(contender, lambda i=i: contender.decode(tokens[:, i]))
                 for i in range(count)]
        plain = steps[1:-1] if count > 2 else steps[:-1] or steps  # the first is a warm-up
        step = float(np.median([s["seconds"] for s in plain]))
        result = {"seconds": ((seg_len - 1) * step + steps[-1]["seconds"]) / seg_len,
                  "step": step, "commit_token": steps[-1]["seconds"]}
        if "outside" in steps[0]:
            result["outside"] = float(np.median([s["outside"] for s in plain]))
        return result

    return cycle


def with_compile_budget(budget_s: float, call: Callable[[], object]) -> None:
    """Run call(); raise CompileTimeout when it takes longer than budget_s (SIGALRM, main
    thread only: inductor compiles in Python, so the alarm lands between its steps)."""
    def on_alarm(signum, frame):
        raise CompileTimeout(f"torch.compile took longer than the {budget_s:.0f}s budget")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, budget_s)
    try:
        call()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _add_ratios(ratios: dict, label: str, runs: dict[str, list[dict]]) -> None:
    """Each SPEEDUP_OF contender over every other one (runtime vs cached, not also the
    inverse): the other's seconds / its seconds, per repeat."""
    for rank, fast in enumerate(SPEEDUP_OF):
        for other in runs:
            if fast in runs and other != fast and other not in SPEEDUP_OF[:rank]:
                ratios[f"{label}: {fast} vs {other}"] = ratio_stats(
                    [r["seconds"] for r in runs[other]], [r["seconds"] for r in runs[fast]])


def compare(contenders: dict[str, Any], cfg, settings: Settings, rng: np.random.Generator,
            segment_batches: tuple[int, ...], decode_batches: tuple[int, ...]) -> dict:
    """First segment (batch 1), segment steps and decoding for every contender, interleaved.

    Returns {"contenders": {key: {"name", "first_segment", "segment": {batch: row},
    "decode": {batch: row}}}, "ratios": {"<workload> b<batch>: <fast> vs <other>": spread}}.
    A torch.compile contender is compiled per batch before its rounds; if that fails within
    its budget it is reported with its error and dropped."""
    out = {key: {"name": c.name, "segment": {}, "decode": {}} for key, c in contenders.items()}
    for key, contender in contenders.items():
        if hasattr(contender, "open_seconds"):
            out[key]["session_open_ms"] = contender.open_seconds * 1e3
    ratios: dict = {}
    live = dict(contenders)
    first = random_tokens(rng, cfg.vocab_size, 1, cfg.seg_len)
    starters = {k: c for k, c in live.items() if not c.compiles}
    for contender in starters.values():
        contender.fill(1, fill_tokens(rng, cfg, 1))
        contender.first_segment(first)  # warm-up
    runs = interleave({k: (lambda c=c: timed(c, lambda: c.first_segment(first)))
                       for k, c in starters.items()}, settings.segment_repeats)
    for key, repeats in runs.items():
        out[key]["first_segment"] = summarize(repeats)
    _add_ratios(ratios, "first segment b1", runs)
    for batch in segment_batches:
        tokens = random_tokens(rng, cfg.vocab_size, batch, cfg.seg_len)
        units = {}
        for key, contender in list(live.items()):
            if contender.compiles and batch not in settings.compile_batches:
                continue
            contender.fill(batch, fill_tokens(rng, cfg, batch))
            started = time.perf_counter()
            if not contender.compiles:
                contender.segment(tokens)  # warm-up
            else:
                try:
                    with_compile_budget(settings.compile_budget_s,
                                        lambda c=contender: c.segment(tokens))
                except Exception as exc:  # report any compile failure as text, keep benchmarking
                    out[key]["error"] = f"{type(exc).__name__}: {str(exc).strip()[:600]}"
                    log(f"{contender.name} failed at batch {batch}: {out[key]['error'][:200]}")
                    del live[key]
                    continue
                out[key].setdefault("compile_seconds", {})[str(batch)] = \
                    time.perf_counter() - started
            units[key] = lambda c=contender: timed(c, lambda: c.segment(tokens))
        repeats = settings.segment_repeats if batch <= 2 else max(3, settings.segment_repeats - 2)
        runs = interleave(units, repeats)
        for key, rows in runs.items():
            out[key]["segment"][str(batch)] = summarize(rows)
        _add_ratios(ratios, f"segment b{batch}", runs)
        log(f"segment b{batch}: " + ", ".join(
            f"{out[k]['name']} {out[k]['segment'][str(batch)]['median_ms']:.1f} ms" for k in runs))
    for batch in decode_batches:
        units = {}
        for key, contender in live.items():
            if contender.decode_kind == "none" or (contender.decode_kind == "generate" and
                                                   batch != 1):
                continue  # the package's generate: batch 1 only
            contender.fill(batch, fill_tokens(rng, cfg, batch))
            units[key] = decode_unit(contender, cfg, batch, settings, rng)
        runs = interleave(units, settings.decode_cycles)
        for key, rows in runs.items():
            row = summarize(rows)
            row["amortized_ms"] = row["median_ms"]
            out[key]["decode"][str(batch)] = row
        _add_ratios(ratios, f"decode b{batch}", runs)
        log(f"decode b{batch} (amortised): " + ", ".join(
            f"{out[k]['name']} {out[k]['decode'][str(batch)]['median_ms']:.2f} ms" for k in runs))
    return {"contenders": out, "ratios": ratios}


def step_costs(contenders: dict[str, Any], cfg, batches: tuple[int, ...], repeats: int,
               rng: np.random.Generator) -> dict:
    """Median segment step per batch and decode step at batch 1 (no commit among the timed
    tokens) for each contender, interleaved: {key: {"segment_b<B>_ms", "decode_b1_ms"}}."""
    out: dict = {key: {} for key in contenders}
    for batch in batches:
        tokens = random_tokens(rng, cfg.vocab_size, batch, cfg.seg_len)
        for contender in contenders.values():
            contender.fill(batch, fill_tokens(rng, cfg, batch))
            contender.segment(tokens)  # warm-up
        runs = interleave({k: (lambda c=c: timed(c, lambda: c.segment(tokens)))
                           for k, c in contenders.items()}, repeats)
        for key, rows in runs.items():
            out[key][f"segment_b{batch}_ms"] = summarize(rows)["median_ms"]
    decoders = {k: c for k, c in contenders.items() if c.decode_kind == "cached"}
    token = random_tokens(rng, cfg.vocab_size, 1, 1)[:, 0]
    for contender in decoders.values():
        contender.fill(1, fill_tokens(rng, cfg, 1))
        contender.decode(token)  # warm-up
    runs = interleave({k: (lambda c=c: timed(c, lambda: c.decode(token)))
                       for k, c in decoders.items()}, max(1, min(2 * repeats, cfg.seg_len - 2)))
    for key, rows in runs.items():
        out[key]["decode_b1_ms"] = summarize(rows)["median_ms"]
    return out
