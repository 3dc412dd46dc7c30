"""The benchmark's outputs: a terminal table, bench.json and bench.png.

bench.json (times in ms; "row" = median_ms, p10_ms, p90_ms, min_ms, max_ms, mean_ms, n over
interleaved repeats, plus tokens_per_s, gflops, gemm_fraction; session contenders add
outside_engine_ms; decode rows add amortized_ms (= median_ms), step_ms, commit_token_ms;
"ratio" = median, min, max, p10, p90, n of a per-repeat ratio):
  profile, threads, experiments, thread_note, model, config, settings, platform,
  load_average_start/end, machine {cpu {model, machine, isa_flags}, gemm {torch_gflops,
  numpy_gflops, ort {"<segment batch>": {rows, fp32_gflops, int8_gops}}, gflops (the limit:
  ort's fp32 rate at the largest segment batch)}, memory {copy_gbps, read_gbps, bytes}}, flops,
  decode_bytes_b<batch> {weights, pos_table, kv_state, total, runtime_gbps,
  fraction_of_read_bandwidth, fraction_of_copy_bandwidth},
  export_seconds, check {max_abs_logit_error, logit_scale},
  contenders {key: {name, first_segment: row, segment {batch: row}, decode {batch: row},
             compile_seconds?, error?}},
  ratios {"<workload> b<batch>: <fast> vs <other>": ratio}  (speed-up: other's time / fast's),
  loop_overhead {"<workload> b<batch>": {step_ms, outside_engine_ms, fraction}},
  native_loop_overhead (the same, measured inside the native loop), skipped {key: why},
  scheduler_overhead {contender, requests, top_k, steps, step_ms, outside_engine_ms, fraction,
                      fraction_quartiles},
  lucidrains {arguments, config, check, contenders, ratios}  (the same shapes as above),
  serving {prompt_bytes, new_tokens, sampling, keys (runtime, runtime_top40, cached), rows
           [{concurrency, generated_tokens, <key>: row + tokens_per_s, tokens_per_s_min,
             tokens_per_s_max, runtime_vs_cached}]},
  capacity {contender, max_streams [1, S], decode_step {"1": row, "S": row}, ratio},
  scaling, xl_comparison, ort, quantization (extras; its cpu: runtime.cpu.CpuFeatures.to_dict;
  segment_b1_int8_gemm_fraction: of machine.gemm.ort["1"].int8_gops),
  targets [{target, want ">= x", measured, spread (ratio or null), met, note}], total_seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

from compressive_rt.runtime.cpu import CpuFeatures

JSON_NAME = "bench.json"
PLOT_NAME = "bench.png"
COLORS = {"eager": "tab:blue", "eager+compile": "tab:orange", "eager cached": "tab:green",
          "runtime (ORT)": "tab:red", "compressive-transformer-pytorch": "tab:purple",
          "native (C++)": "tab:brown"}
SERVING_NAMES = {"runtime": "runtime (ORT)", "runtime_top40": "runtime (ORT) top-k 40",
                 "cached": "eager cached"}


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _contender_rows(group: dict) -> list[str]:
    """The per-contender table of one compare() result (median and p10..p90 over repeats)."""
    lines = [f"{'workload':<22}{'contender':<32}{'median ms':>11}{'p10':>9}{'p90':>9}"
             f"{'tok/s':>10}{'GFLOP/s':>9}{'%GEMM':>7}"]
    contenders = group.get("contenders", {})
    for workload in ("segment", "decode"):
        batches = sorted({b for res in contenders.values() for b in res.get(workload, {})},
                         key=int)
        for batch in batches:
            for res in contenders.values():
                row = res.get(workload, {}).get(batch)
                if not row:
                    continue
                label = f"{workload} b{batch}" + (" (amort.)" if workload == "decode" else "")
                lines.append(
                    f"{label:<22}{res['name']:<32}{row['median_ms']:>11.2f}{row['p10_ms']:>9.2f}"
                    f"{row['p90_ms']:>9.2f}{row.get('tokens_per_s', 0):>10.1f}"
                    f"{row.get('gflops', 0):>9.1f}{100 * row.get('gemm_fraction', 0):>6.0f}%")
    for res in contenders.values():
        if "first_segment" in res:
            row = res["first_segment"]
            lines.append(f"{'first segment b1':<22}{res['name']:<32}{row['median_ms']:>11.2f}"
                         f"{row['p10_ms']:>9.2f}{row['p90_ms']:>9.2f}")
        if "error" in res:
            lines.append(f"{res['name']}: {res['error'][:300]}")
        if res.get("compile_seconds"):
            lines.append(f"{res['name']}: compile seconds "
                         + ", ".join(f"b{b} {s:.0f}s" for b, s in res["compile_seconds"].items()))
    if group.get("ratios"):
        lines.append("speed-ups (per-repeat ratio: median [min, max] over n repeats):")
        for name, ratio in group["ratios"].items():
            lines.append(f"  {name:<44} {ratio['median']:6.2f}x [{ratio['min']:.2f}, "
                         f"{ratio['max']:.2f}] n={ratio['n']}")
    return lines


def _experiment_rows(results: dict) -> list[str]:
    """The compressive-transformer-pytorch comparison, the serving curve, capacity."""
    lines = []
    lucid = results.get("lucidrains")
    if lucid:
        args = lucid["arguments"]
        lines += ["", f"compressive-transformer-pytorch 0.4.0, the same model imported "
                      f"(dim {args['dim']}, depth {args['depth']}, seq_len {args['seq_len']}, "
                      f"mem_len {args['mem_len']}, cmem_len {args['cmem_len']}); max |logit "
                      f"error| runtime vs the package {lucid['check']['max_abs_logit_error']:.2e}"]
        lines += _contender_rows(lucid)
    serving = results.get("serving")
    if serving:
        lines += ["", f"serving: {serving['new_tokens']} generated tokens per request, prompts "
                      f"of {serving['prompt_bytes']} bytes, {serving['sampling']}; tokens/s:"]
        for row in serving["rows"]:
            parts = [f"{SERVING_NAMES.get(k, k)} {row[k]['tokens_per_s']:.0f} "
                     f"[{row[k]['tokens_per_s_min']:.0f}, {row[k]['tokens_per_s_max']:.0f}]"
                     for k in serving["keys"] if k in row]
            lines.append(f"  {row['concurrency']:>3} requests: " + ", ".join(parts))
    capacity = results.get("capacity")
    if capacity:
        small, large = capacity["max_streams"]
        ratio = capacity["ratio"]
        lines += ["", f"capacity: decode step of 1 stream, max_streams={large} vs {small}: "
                      f"{capacity['decode_step'][str(large)]['median_ms']:.2f} vs "
                      f"{capacity['decode_step'][str(small)]['median_ms']:.2f} ms, ratio "
                      f"{ratio['median']:.2f} [{ratio['min']:.2f}, {ratio['max']:.2f}]"]
    return lines


def quantization_rows(q: dict) -> list[str]:
    """The int8 experiment's line and, beside it, the CPU features that chose its kernels."""
    if "error" in q:
        return [f"int8 dynamic quantization: error {q['error'][:200]}"]
    bpb = q["bits_per_byte"]
    fraction = q.get("segment_b1_int8_gemm_fraction")
    of_gemm = f" ({100 * fraction:.0f}% of ORT's int8 GEMM)" if fraction is not None else ""
    return [f"  int8 dynamic quantization          segment {q['segment_b1_ms']:8.1f}{of_gemm}"
            f"  decode {q['decode_b1_ms']:7.2f}  bits/byte fp32 {bpb['fp32']:.4f} "
            f"int8 {bpb['int8']:.4f} (delta {q['bpb_delta']:+.4f}) on {q['text']}",
            f"    int8 ISA: {CpuFeatures.from_dict(q['cpu']).describe()}"]


def machine_rows(machine: dict) -> list[str]:
    """The CPU and the limits the fractions are taken against (benchmarks/limits.py)."""
    cpu, gemm, memory = machine["cpu"], machine["gemm"], machine["memory"]
    flags = " ".join(cpu["isa_flags"]) if cpu["isa_flags"] is not None else "flags unknown"
    at_shapes = ", ".join(f"b{batch} ({rate['rows']} rows) fp32 {rate['fp32_gflops']:.1f} "
                          f"GFLOP/s, int8 {rate['int8_gops']:.1f} GOP/s"
                          for batch, rate in gemm["ort"].items())
    return [f"machine: {cpu['machine']} {cpu['model']}: {flags}",
            f"  limits: ONNX Runtime MatMul at the engine's segment shapes: {at_shapes}",
            f"  (square GEMM beside them: torch {gemm['torch_gflops']:.1f}, numpy "
            f"{gemm['numpy_gflops']:.1f} GFLOP/s); streaming read of the weights' size "
            f"{memory['read_gbps']:.1f} GB/s (copy {memory['copy_gbps']:.1f} GB/s)"]


def decode_bandwidth_rows(results: dict) -> list[str]:
    lines = []
    for key in sorted(k for k in results if k.startswith("decode_bytes_b")):
        db = results[key]
        lines.append(f"decode {key.removeprefix('decode_bytes_')} reads {db['total'] / 1e6:.1f} "
                     f"MB/step (weights {db['weights'] / 1e6:.1f}, K/V state "
                     f"{db['kv_state'] / 1e6:.1f}, position table {db['pos_table'] / 1e6:.1f}): "
                     f"runtime {db['runtime_gbps']:.1f} GB/s = "
                     f"{100 * db['fraction_of_read_bandwidth']:.0f}% of the streaming read "
                     f"({100 * db['fraction_of_copy_bandwidth']:.0f}% of copy)")
    return lines


def table(results: dict) -> str:
    lines = [
        f"compressive-rt bench ({results['profile']}), {results['thread_note']}",
        f"model: {results['model']}; N={results['config']['n_layers']} "
        f"d={results['config']['d_model']} L={results['config']['seg_len']} "
        f"M={results['config']['mem_len']} C={results['config']['cmem_len']} "
        f"c={results['config']['compress_rate']} ({results['config']['compress_fn']})",
        *machine_rows(results["machine"]),
        f"engine check: max |logit error| runtime vs eager "
        f"{results['check']['max_abs_logit_error']:.2e} (logit scale "
        f"{results['check']['logit_scale']:.2f})",
        "",
    ]
    lines += _contender_rows(results)
    lines += _experiment_rows(results)
    lines += decode_bandwidth_rows(results)
    if results.get("memory"):
        from compressive_rt.benchmarks.memory import format_report

        lines += ["", format_report(results["memory"], results["memory"]["parameter_mib"])]
    if results.get("loop_overhead"):
        lines.append("")
        lines.append("runtime loop overhead (time outside engine calls per step):")
        for name, row in results["loop_overhead"].items():
            lines.append(f"  {name:<12} step {row['step_ms']:.2f} ms, outside "
                         f"{row['outside_engine_ms']:.3f} ms ({100 * row['fraction']:.2f}%)")
    scheduler = results.get("scheduler_overhead")
    if scheduler:
        low, high = scheduler["fraction_quartiles"]
        lines.append(f"  Scheduler.step, {scheduler['requests']} requests top-k "
                     f"{scheduler['top_k']}: step {scheduler['step_ms']:.2f} ms, outside "
                     f"{scheduler['outside_engine_ms']:.3f} ms ({100 * scheduler['fraction']:.2f}%"
                     f" of {scheduler['steps']} steps; quartiles {100 * low:.2f}-"
                     f"{100 * high:.2f}%)")
    if results.get("native_loop_overhead"):
        lines.append("")
        lines.append("native loop overhead (time outside engine calls per step, measured inside "
                     "the C++ loop):")
        for name, row in results["native_loop_overhead"].items():
            lines.append(f"  {name:<12} step {row['step_ms']:.2f} ms, outside "
                         f"{row['outside_engine_ms']:.3f} ms ({100 * row['fraction']:.2f}%)")
    for key, why in results.get("skipped", {}).items():
        lines.append(f"{key} skipped: {why}")
    if results.get("scaling"):
        lines.append("")
        lines.append("scaling (N={} layers; batch 1 unless noted; ms):".format(
            results["scaling"][0]["n_layers"]))
        for row in results["scaling"]:
            parts = []
            for key, costs in row["costs"].items():
                seg = " ".join(f"b{b}:{costs[f'segment_b{b}_ms']:.1f}" for b in row["batches"])
                dec = f" dec {costs['decode_b1_ms']:.2f}" if "decode_b1_ms" in costs else ""
                parts.append(f"{key} seg {seg}{dec}")
            lines.append(f"  {row['point']:<7} M={row['mem_len']:<4} C={row['cmem_len']:<4} "
                         f"L={row['seg_len']:<4} " + " | ".join(parts))
    if results.get("xl_comparison"):
        lines.append("")
        lines.append("compression vs Transformer-XL (runtime, batch 1):")
        for row in results["xl_comparison"]:
            lines.append(
                f"  {row['model']:<15} M={row['mem_len']:<4} C={row['cmem_len']:<3} span "
                f"{row['attention_span']:<4} range {row['temporal_range_per_layer']:<4}/layer: "
                f"segment {1e3 * row['segment_ms_per_token']:.0f} us/token, decode "
                f"{row['decode_ms_per_token']:.2f} ms/token, "
                f"{row['segment_us_per_token_per_range_token']:.3f} us/token per range token")
    if results.get("ort"):
        lines.append("")
        lines.append("ONNX Runtime variants (runtime, batch 1; ms):")
        for group in ("session_options", "graphs"):
            for name, row in results["ort"][group].items():
                if "error" in row:
                    lines.append(f"  {name:<34} error: {row['error'][:120]}")
                    continue
                extra = ""
                if "non_standard_ops" in row:
                    extra = (f"  ops TRT-ok: {row['tensorrt_compatible_ops']}"
                             f" {','.join(row['non_standard_ops'])[:60]}"
                             f"  max|dlogit| {row['check']['max_abs_logit_diff']:.1e}")
                lines.append(f"  {name:<34} segment {row['segment_b1_ms']:8.1f}  decode "
                             f"{row['decode_b1_ms']:7.2f}{extra}")
    if results.get("quantization"):
        lines += quantization_rows(results["quantization"])
    lines.append("")
    lines.append("targets:")
    for t in results["targets"]:
        measured = t["measured"]
        shown = f"{measured:.2f}" if isinstance(measured, float) else _fmt(measured)
        spread = t.get("spread")
        shown += f" [{spread['min']:.2f}, {spread['max']:.2f}]" if spread else ""
        status = "met" if t["met"] else "MISSED" if measured is not None else "not run"
        lines.append(f"  [{status}] {t['target']}: {shown} "
                     f"(want {t['want']})")
    lines.append(f"total {results['total_seconds']:.0f}s")
    return "\n".join(lines)


def write(results: dict, out_dir: Path) -> None:
    (out_dir / JSON_NAME).write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out_dir / PLOT_NAME)



def _batch_panel(ax, results: dict, workload: str, value, title: str, ylabel: str) -> None:
    """One line per contender of value(row, batch) against batch, log-log."""
    from matplotlib.ticker import NullFormatter

    if not results.get("contenders"):
        ax.set_axis_off()
        return
    for res in results["contenders"].values():
        rows = res.get(workload, {})
        if rows:
            batches = sorted(rows, key=int)
            ax.plot([int(b) for b in batches], [value(rows[b], int(b)) for b in batches],
                    marker="o", label=res["name"], color=COLORS.get(res["name"]))
    ax.set(title=title, xlabel="batch (streams)", ylabel=ylabel, xscale="log", yscale="log")
    ticks = results["settings"][f"{workload}_batches"]
    ax.set_xticks([int(b) for b in ticks], [str(b) for b in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.legend()
    ax.grid(alpha=0.3, which="both")


def _serving_panel(ax, serving: dict | None) -> None:
    """Generated tokens/s against concurrent requests, median with min..max over repeats."""
    from matplotlib.ticker import NullFormatter

    if not serving:
        ax.set_axis_off()
        return
    rows = serving["rows"]
    levels = [row["concurrency"] for row in rows]
    for key in serving["keys"]:
        name = SERVING_NAMES.get(key, key)
        median = [row[key]["tokens_per_s"] for row in rows]
        low = [row[key]["tokens_per_s_min"] for row in rows]
        high = [row[key]["tokens_per_s_max"] for row in rows]
        ax.plot(levels, median, marker="o", label=name, color=COLORS.get(name))
        ax.fill_between(levels, low, high, alpha=0.2, color=COLORS.get(name))
    ax.set(title=f"serving: {serving['new_tokens']} new tokens per request",
           xlabel="concurrent requests", ylabel="generated tokens/s (higher is better)",
           xscale="log", yscale="log")
    ax.set_xticks(levels, [str(n) for n in levels])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.legend()
    ax.grid(alpha=0.3, which="both")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(21, 4.8))
    _batch_panel(axes[0], results, "segment", lambda row, batch: row["median_ms"] / batch,
                 "segment step, full memory", "ms per segment per stream (lower is better)")
    _batch_panel(axes[1], results, "decode", lambda row, batch: row["amortized_ms"],
                 "decoding one token per stream, full memory",
                 "ms per step, amortised over a segment")

    ax = axes[2]
    scaling = results.get("scaling") or []
    base = next((r for r in scaling if r["point"] == "base"), None)
    if base:
        points = [r for r in scaling if r["point"] == "base" or r["point"].startswith("M=")]
        points.sort(key=lambda r: r["mem_len"] + r["cmem_len"])
        names = {"eager": "eager", "cached": "eager cached", "runtime": "runtime (ORT)"}
        for key, label in names.items():
            xs = [r["mem_len"] + r["cmem_len"] for r in points if key in r["costs"]]
            ys = [r["costs"][key]["segment_b1_ms"] for r in points if key in r["costs"]]
            if xs:
                ax.plot(xs, ys, marker="o", label=f"{label}: segment", color=COLORS[label])
            dec = [r["costs"][key].get("decode_b1_ms") for r in points if key in r["costs"]]
            if xs and all(d is not None for d in dec):
                ax.plot(xs, dec, marker="s", linestyle="--", label=f"{label}: decode token",
                        color=COLORS[label])
        ax.set(title=f"vs memory size (N={base['n_layers']}, L={base['seg_len']}, batch 1)",
               xlabel="memory slots per layer (C + M)", ylabel="ms per step", yscale="log")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, which="both")
    else:
        ax.set_axis_off()
    _serving_panel(axes[3], results.get("serving"))
    fig.suptitle(f"compressive-rt bench ({results['profile']}): {results['thread_note']}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
