"""The performance targets (issues 10, 18 and 28, default config, 2 threads), each recorded as met
or missed with the measured value and, where it is a ratio, its spread over repeats. The limits
the fractions are taken against are measured in the same run (benchmarks/limits.py)."""

from __future__ import annotations

import operator

WANTS = {">=": operator.ge, "<=": operator.le, "<": operator.lt}


def _target(name: str, want: str, threshold: float, measured: float | None,
            spread: dict | None = None, note: str = "") -> dict:
    met = measured is not None and WANTS[want](measured, threshold)
    return {"target": name, "want": f"{want} {threshold:g}", "measured": measured,
            "spread": spread, "met": bool(met), "note": note}


def _ratio(group: dict, name: str) -> tuple[float | None, dict | None]:
    found = group.get("ratios", {}).get(name)
    return (found["median"], found) if found else (None, None)


def _get(tree: dict, *path: str):
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def evaluate_targets(results: dict) -> list[dict]:
    targets = []
    lucid = results.get("lucidrains", {})
    for name, group, ratio, threshold in (
            ("segment b1: runtime speed-up vs eager", results, "segment b1: runtime vs eager", 1.8),
            ("segment b1: runtime speed-up vs compressive-transformer-pytorch forward", lucid,
             "segment b1: runtime vs lucidrains", 1.6),
            ("segment b8: runtime speed-up vs eager", results, "segment b8: runtime vs eager", 1.5),
            ("decode b1: runtime speed-up vs eager cached steps", results,
             "decode b1: runtime vs cached", 2.5),
            ("decode b1: runtime speed-up vs compressive-transformer-pytorch generate per token",
             lucid, "decode b1: runtime vs lucidrains", 8.0)):
        targets.append(_target(name, ">=", threshold, *_ratio(group, ratio),
                               note="median over repeats of the per-repeat ratio"))
    for batch, threshold in (("8", 0.70), ("1", 0.60)):  # issue 28
        gemm_fraction = _get(results, "contenders", "runtime", "segment", batch, "gemm_fraction")
        targets.append(_target(f"segment b{batch}: runtime fraction of ONNX Runtime's fp32 GEMM "
                               f"rate at the engine's shapes", ">=", threshold, gemm_fraction,
                               note="useful FLOPs of the cached algorithm, measured in the run"))
    for batch, threshold in (("1", 0.80), ("8", 0.60)):
        read_fraction = _get(results, f"decode_bytes_b{batch}", "fraction_of_read_bandwidth")
        targets.append(_target(f"decode b{batch}: runtime fraction of the streaming-read "
                               f"bandwidth", ">=", threshold, read_fraction,
                               note="weights + K/V state + position table read per step"))
    targets.append(_target("int8 segment b1: fraction of ONNX Runtime's int8 GEMM rate at the "
                           "engine's shapes", ">=", 0.50,
                           _get(results, "quantization", "segment_b1_int8_gemm_fraction")))
    rows = {row["concurrency"]: row for row in _get(results, "serving", "rows") or []}
    for line, name in (("runtime", "runtime, greedy"), ("runtime_top40", "runtime, top-k 40")):
        scaling, spread = None, None
        if 1 in rows and 16 in rows and line in rows[1]:
            one, many = rows[1][line], rows[16][line]
            scaling = many["tokens_per_s"] / one["tokens_per_s"]
            spread = {"min": many["tokens_per_s_min"] / one["tokens_per_s_max"],
                      "max": many["tokens_per_s_max"] / one["tokens_per_s_min"]}
        targets.append(_target(f"serving: tokens/s at 16 concurrent requests vs 1 ({name})",
                               ">=", 3.0, scaling, spread))
    capacity = _get(results, "capacity", "ratio")
    streams = (_get(results, "capacity", "max_streams") or [1, "S"])[-1]
    targets.append(_target(f"capacity: decode step at 1 stream, max_streams={streams} vs 1", "<=",
                           1.3, capacity["median"] if capacity else None, capacity))
    if results.get("profile") == "full":
        # Only at the default config: the quick and smoke profiles' steps are so short that
        # the Python loop, run on caches an engine call has just evicted, takes a larger share
        # (issue 28: 13-14 us warm, 39-142 us after a real call); their targets were retired.
        for workload, threshold in (("decode b1", 0.03), ("segment b1", 0.02)):
            overhead = _get(results, "loop_overhead", workload, "fraction")
            targets.append(_target(f"loop overhead {workload}: time outside Backend.run in "
                                   f"Session.feed (fraction of step)", "<", threshold, overhead))
        targets.append(_target("Scheduler.step, 8 requests top-k 40: time outside Backend.run "
                               "(fraction of step)", "<", 0.03,
                               _get(results, "scheduler_overhead", "fraction")))
    for batch in ("1", "8"):
        native = _get(results, "native_loop_overhead", f"decode b{batch}", "fraction")
        targets.append(_target(f"native loop overhead decode b{batch} (fraction of step)", "<",
                               0.01, native, note="measured inside the C++ loop around Run"))
    return targets
