"""`ctrt bench`: the report driver. One process, one model (random weights with a fixed seed, or
--checkpoint), the same inputs and thread count for every contender (torch.set_num_threads(T),
ORT intra_op threads T), contenders interleaved round-robin within each repeat.

Experiments (EXPERIMENTS, in this order): the main table (eager, torch.compile, eager cached
steps and the ORT engine, the latter two under the same Session), the same model built in
compressive-transformer-pytorch and imported, the serving curve, the scheduler's own time per
step, capacity independence, sizes and peak RSS (benchmarks/memory.py, each in a fresh
process), and the extras (scaling grid,
Transformer-XL comparison, ORT variants, int8). Beside them: the machine's limits, measured in
the same run with the engine's own kernels (benchmarks/limits.py: ONNX Runtime's MatMul at the
engine's shapes, fp32 and int8, and a streaming read of the weights' size; torch's and numpy's
GEMM and a copy beside them), its CPU model and ISA flags, and the runtime's loop overhead.
"""

from __future__ import annotations

import gc
import os
import platform
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from compressive_rt.benchmarks import limits, measure
from compressive_rt.benchmarks.contenders import MAIN_CONTENDERS, Bench, build, random_model
from compressive_rt.benchmarks.native_contender import ContenderUnavailable
from compressive_rt.benchmarks.settings import PROFILES, SEED, BenchError, log

EXTRAS = ("scaling", "xl", "ort", "quantization")
EXPERIMENTS = ("main", "lucidrains", "serving", "scheduler", "capacity", "memory", *EXTRAS)


def add_efficiency(contenders: dict, cfg, gemm: dict) -> None:
    """Achieved GFLOP/s of useful work (the cached algorithm's FLOPs) and its fraction of the
    GEMM limit: a segment row's, ONNX Runtime's fp32 rate at that batch's shapes where it was
    measured (gemm["ort"]), else gemm["gflops"]."""
    for res in contenders.values():
        for workload, flops_of, time_of in (
                ("segment", measure.segment_flops, "median_ms"),
                ("decode", measure.decode_flops, "amortized_ms")):
            for batch, row in res.get(workload, {}).items():
                seconds = row[time_of] / 1e3
                tokens = int(batch) * (cfg.seg_len if workload == "segment" else 1)
                row["tokens_per_s"] = tokens / seconds
                row["gflops"] = flops_of(cfg, int(batch))["total"] / seconds / 1e9
                at_shapes = gemm.get("ort", {}).get(batch) if workload == "segment" else None
                limit = at_shapes["fp32_gflops"] if at_shapes else gemm["gflops"]
                row["gemm_fraction"] = row["gflops"] / limit


def add_bandwidth(results: dict, runtime: dict, weight_bytes: int, cfg) -> None:
    """decode_bytes_b<batch>: bytes a decode step reads, the runtime's GB/s and its fraction of
    the streaming-read and the copy bandwidth."""
    memory = results["machine"]["memory"]
    for batch, row in runtime.get("decode", {}).items():
        read = measure.decode_bytes(cfg, weight_bytes, int(batch))
        gbps = read["total"] / (row["amortized_ms"] / 1e3) / 1e9
        results[f"decode_bytes_b{batch}"] = {
            **read, "runtime_gbps": gbps, "fraction_of_read_bandwidth": gbps / memory["read_gbps"],
            "fraction_of_copy_bandwidth": gbps / memory["copy_gbps"]}


def loop_overhead(runtime: dict) -> dict:
    """Median time per step outside `backend.run` (host copies, bookkeeping) vs the step."""
    rows = {}
    for workload, step_key in (("segment", "median_ms"), ("decode", "step_ms")):
        for batch, row in runtime.get(workload, {}).items():
            if "outside_engine_ms" in row:
                rows[f"{workload} b{batch}"] = {
                    "step_ms": row[step_key], "outside_engine_ms": row["outside_engine_ms"],
                    "fraction": row["outside_engine_ms"] / row[step_key]}
    return rows


def _check_request(threads: int, profile: str, backends: tuple[str, ...],
                   experiments: tuple[str, ...]) -> None:
    if threads < 1:
        raise BenchError(f"--threads must be >= 1, got {threads}")
    if profile not in PROFILES:
        raise BenchError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    unknown = sorted(set(backends) - set(MAIN_CONTENDERS))
    if unknown:
        raise BenchError(f"unknown contender(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(MAIN_CONTENDERS)}")
    unknown = sorted(set(experiments) - set(EXPERIMENTS))
    if unknown:
        raise BenchError(f"unknown experiment(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(EXPERIMENTS)}")


def _load_model(checkpoint: Path | None, settings):
    from compressive_rt.ct_reference.config import ModelConfig

    if checkpoint:
        from compressive_rt.ct_reference.checkpoint import load_model

        return load_model(checkpoint)[0], str(checkpoint)
    model = random_model(ModelConfig().replace(**settings.config))
    return model, f"random weights, torch.manual_seed({SEED})"


def run_benchmark(quick: bool, out_dir: Path, threads: int, checkpoint: Path | None,
                  backends: tuple[str, ...] = MAIN_CONTENDERS, profile: str | None = None,
                  experiments: tuple[str, ...] = EXPERIMENTS) -> dict:
    """Run `experiments` with the main-table contenders `backends`; write bench.json and
    bench.png to out_dir and print the table. `profile` ("full", "quick", "smoke") overrides
    `quick`."""
    import numpy as np
    import torch

    from compressive_rt.benchmarks import experiments as exp
    from compressive_rt.benchmarks import extras, report
    from compressive_rt.benchmarks.engines import export_engine
    from compressive_rt.benchmarks.targets import evaluate_targets
    from compressive_rt.benchmarks.workloads import compare

    profile = profile or ("quick" if quick else "full")
    _check_request(threads, profile, tuple(backends), tuple(experiments))
    settings = PROFILES[profile]
    started = time.perf_counter()
    torch.set_num_threads(threads)
    model, model_source = _load_model(checkpoint, settings)  # a bad checkpoint writes nothing
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"cannot create the output folder {out_dir}: {exc.strerror}") from None
    cfg = model.config
    results: dict = {
        "profile": profile, "threads": threads, "experiments": list(experiments),
        "thread_note": f"torch.set_num_threads({threads}); ORT intra_op_num_threads={threads}, "
                       f"inter_op 1, sequential",
        "model": model_source, "config": cfg.to_dict(), "settings": asdict(settings),
        "platform": {"python": platform.python_version(), "torch": torch.__version__,
                     "machine": platform.machine(), "cpus": os.cpu_count()},
        "load_average_start": os.getloadavg(),
    }
    log(f"profile {profile}, {threads} threads, config {cfg.to_dict()}")
    weight_bytes = sum(p.numel() * 4 for n, p in model.named_parameters()
                       if not n.startswith("compressors"))
    # numpy's GEMM runs last: OpenBLAS worker threads would compete with torch's afterwards.
    results["machine"] = {
        "cpu": limits.cpu_description(),
        "gemm": {**measure.gemm_rate(threads, libs=("torch",)),
                 "ort": limits.ort_gemm_rates(cfg, settings.segment_batches, threads)},
        "memory": {**measure.memory_bandwidth(), **limits.streaming_read(weight_bytes, threads)}}
    machine = results["machine"]
    widest = machine["gemm"]["ort"][str(max(settings.segment_batches))]
    machine["gemm"]["gflops"] = widest["fp32_gflops"]  # the limit: the engine's own GEMM
    log(f"ONNX Runtime MatMul at the engine's shapes (segment b{max(settings.segment_batches)}):"
        f" fp32 {widest['fp32_gflops']:.1f} GFLOP/s, int8 {widest['int8_gops']:.1f} GOP/s; "
        f"torch {machine['gemm']['torch_gflops']:.1f} GFLOP/s; streaming read "
        f"{machine['memory']['read_gbps']:.1f} GB/s, copy {machine['memory']['copy_gbps']:.1f}"
        f" GB/s")
    results["flops"] = {f"segment_b{b}": measure.segment_flops(cfg, b)
                        for b in settings.segment_batches}
    results["flops"].update({f"decode_b{b}": measure.decode_flops(cfg, b)
                             for b in settings.decode_batches})
    results["flops"]["eager_reference_extra_per_segment_b1"] = measure.reference_extra_flops(
        cfg, 1, cfg.seg_len)
    with tempfile.TemporaryDirectory(prefix="ctrt-bench-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        engine_dir = export_engine(model, work / "engine")
        results["export_seconds"] = time.perf_counter() - t0
        log(f"exported engine in {results['export_seconds']:.1f}s")
        results["check"] = exp.check_engine(model, engine_dir, threads)
        bench = Bench(model, engine_dir, threads)
        rng = np.random.default_rng(SEED + 1)
        if "main" in experiments:
            contenders = {}
            for key in (k for k in MAIN_CONTENDERS if k in backends):
                try:
                    contenders[key] = build(key, bench)
                except ContenderUnavailable as exc:
                    results.setdefault("skipped", {})[key] = str(exc)
                    log(f"{key} skipped: {exc}")
            results.update(compare(contenders, cfg, settings, rng, settings.segment_batches,
                                   settings.decode_batches))
            del contenders
            gc.collect()  # close ORT sessions: their idle threads must not compete
        if "lucidrains" in experiments:
            results["lucidrains"] = exp.lucidrains_comparison(cfg, threads, work, settings)
            gc.collect()
        if "serving" in experiments:
            results["serving"] = exp.serving_curve(bench, settings)
            gc.collect()
        if "scheduler" in experiments:
            results["scheduler_overhead"] = exp.scheduler_overhead(bench, settings)
            gc.collect()
        if "capacity" in experiments:
            results["capacity"] = exp.capacity_independence(bench, settings)
            gc.collect()
        if "memory" in experiments:
            from compressive_rt.benchmarks.memory import memory_report

            log("sizes and peak RSS (fresh processes)")
            results["memory"] = memory_report(engine_dir, threads)
            results["memory"]["parameter_mib"] = sum(  # what inference needs: no AE decoder
                p.numel() * 4 for n, p in model.named_parameters()
                if not n.startswith("ae_decoders")) / 2**20
        gemm = results["machine"]["gemm"]
        gemm["numpy_gflops"] = measure.gemm_rate(threads, libs=("numpy",))["numpy_gflops"]
        add_efficiency(results.get("contenders", {}), cfg, gemm)
        if "lucidrains" in results:
            from compressive_rt.ct_reference.config import ModelConfig

            add_efficiency(results["lucidrains"]["contenders"],  # another config: no "ort"
                           ModelConfig.from_dict(results["lucidrains"]["config"]),
                           {"gflops": gemm["gflops"]})
        native = results.get("contenders", {}).get("native")
        if native:  # measured inside the native loop
            results["native_loop_overhead"] = loop_overhead(native)
        runtime = results.get("contenders", {}).get("runtime")
        if runtime:
            results["loop_overhead"] = loop_overhead(runtime)
            add_bandwidth(results, runtime, weight_bytes, cfg)
        if "scaling" in experiments:
            results["scaling"] = extras.scaling_grid(cfg, threads, work, settings)
        if "xl" in experiments:
            results["xl_comparison"] = extras.xl_comparison(cfg, threads, work, settings)
        if "ort" in experiments:
            results["ort"] = extras.ort_experiments(engine_dir, threads, cfg, work, settings)
        if "quantization" in experiments:
            log("int8 quantization")
            results["quantization"] = extras.quantization(engine_dir, threads, cfg, work,
                                                          settings)
            int8_limit = results["machine"]["gemm"]["ort"].get("1")
            if "segment_b1_ms" in results["quantization"] and int8_limit:
                int8_gops = measure.segment_flops(cfg, 1)["total"] / (
                    results["quantization"]["segment_b1_ms"] / 1e3) / 1e9
                results["quantization"]["segment_b1_int8_gemm_fraction"] = (
                    int8_gops / int8_limit["int8_gops"])
    results["load_average_end"] = os.getloadavg()
    results["targets"] = evaluate_targets(results)
    results["total_seconds"] = time.perf_counter() - started
    report.write(results, out_dir)
    print(report.table(results))
    return results
