"""`ctrt bench`: eager reference vs torch.compile vs eager cached steps vs the ONNX Runtime engine.

One process, one model (random weights with a fixed seed, or --checkpoint), the same inputs and
the same thread count for every contender (torch.set_num_threads(T), ORT intra_op threads T).
Workloads run with mem and cmem full (warm-up segments first): segment scoring, per-token
decoding, first-segment latency. Beside them: the machine's fp32 GEMM rate and copy bandwidth
(the physical limits), the runtime's time outside engine calls, a scaling grid, a
Transformer-XL comparison, ONNX Runtime option variants and int8 quantization.
"""

from __future__ import annotations

import gc
import os
import platform
import signal
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from benchmarks import measure
from benchmarks.measure import stats

CONTENDERS = ("eager", "compile", "cached", "runtime")
SEED = 0


@dataclass(frozen=True)
class Settings:
    config: dict = field(default_factory=dict)  # ModelConfig overrides of the default config
    segment_batches: tuple[int, ...] = (1, 4, 8)
    decode_batches: tuple[int, ...] = (1, 8)
    compile_batches: tuple[int, ...] = (1, 8)
    segment_repeats: int = 5  # timed repeats at batch 1 (3 above batch 2)
    decode_tokens: int = 16  # consecutive tokens per cycle, the last one commits
    decode_cycles: int = 2
    nocache_positions: int = 8  # partial-segment positions timed for eager without cache
    compile_budget_s: float = 240.0  # per torch.compile call; beyond it the contender is skipped
    scaling_layers: int = 2  # the grid's models: per-layer cost does not depend on N
    scaling_mem: tuple[int, ...] = (128, 256, 512)
    scaling_cmem: tuple[int, ...] = (32, 64, 128)
    scaling_seg: tuple[int, ...] = (32, 64, 128)
    scaling_batches: tuple[int, ...] = (1, 2, 4, 8)
    xl_seg_len: int = 64  # M + C must be a multiple of L for the same-span Transformer-XL
    variant_repeats: int = 5
    quant_text_bytes: int = 16384
    quant_streams: int = 8


FULL = Settings()
QUICK = Settings(
    config=dict(n_layers=2, d_model=256, n_heads=4, d_ff=1024, seg_len=64, mem_len=64,
                cmem_len=32),
    segment_batches=(1, 4, 8), segment_repeats=5, decode_tokens=12, decode_cycles=1,
    nocache_positions=4, compile_budget_s=60.0, scaling_layers=1, scaling_mem=(64, 128),
    scaling_cmem=(16, 32), scaling_seg=(32, 64), scaling_batches=(1, 8), xl_seg_len=32,
    variant_repeats=3, quant_text_bytes=2048, quant_streams=4)
SMOKE = Settings(
    config=dict(n_layers=1, d_model=64, n_heads=2, d_ff=128, seg_len=16, mem_len=16,
                cmem_len=8, compress_rate=2),
    segment_batches=(1, 2), decode_batches=(1, 2), compile_batches=(1,), segment_repeats=3,
    decode_tokens=4, decode_cycles=1, nocache_positions=2, compile_budget_s=45.0,
    scaling_layers=1, scaling_mem=(16, 32), scaling_cmem=(8,), scaling_seg=(16,),
    scaling_batches=(1, 2), xl_seg_len=8, variant_repeats=2, quant_text_bytes=512,
    quant_streams=2)
PROFILES = {"full": FULL, "quick": QUICK, "smoke": SMOKE}


class CompileTimeout(Exception):
    pass


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def random_model(config):
    import torch

    from ct_reference.model import CompressiveTransformer

    torch.manual_seed(SEED)
    return CompressiveTransformer(config).eval()


def _tokens(rng: np.random.Generator, vocab: int, batch: int, length: int) -> np.ndarray:
    return rng.integers(0, vocab, (batch, length)).astype(np.int64)


# ---- workloads -------------------------------------------------------------------------------
def _segment_workload(contender, cfg, batch: int, repeats: int, rng) -> dict:
    fill = _tokens(rng, cfg.vocab_size, batch, _fill_len(cfg))
    contender.fill(batch, fill)
    tokens = _tokens(rng, cfg.vocab_size, batch, cfg.seg_len)
    contender.segment(tokens)  # warm-up
    times, outside = [], []
    for _ in range(repeats):
        engine_before = getattr(contender, "engine_seconds", 0.0)
        started = time.perf_counter()
        contender.segment(tokens)
        times.append(time.perf_counter() - started)
        outside.append(times[-1] - (getattr(contender, "engine_seconds", 0.0) - engine_before))
    result = stats(times)
    if hasattr(contender, "engine_seconds"):
        result["outside_engine_ms"] = float(np.median(outside)) * 1e3
    return result


def _fill_len(cfg) -> int:
    from benchmarks.contenders import fill_segments

    return fill_segments(cfg) * cfg.seg_len


def _decode_cached(contender, cfg, batch: int, settings: Settings, rng) -> dict:
    """Consecutive one-token steps ending with the one that commits; amortised cost per token
    over a whole segment cycle = ((L-1) * median plain step + commit step) / L."""
    n = min(settings.decode_tokens, cfg.seg_len)
    contender.fill(batch, _tokens(rng, cfg.vocab_size, batch, _fill_len(cfg)))
    plain, commits, outside = [], [], []
    for _ in range(settings.decode_cycles):
        if cfg.seg_len - n:
            contender.advance(_tokens(rng, cfg.vocab_size, batch, cfg.seg_len - n))
        tokens = _tokens(rng, cfg.vocab_size, batch, n)
        for i in range(n):
            before = getattr(contender, "engine_seconds", 0.0)
            started = time.perf_counter()
            contender.decode(tokens[:, i])
            elapsed = time.perf_counter() - started
            (commits if i == n - 1 else plain).append(elapsed)
            if hasattr(contender, "engine_seconds") and i < n - 1:
                outside.append(elapsed - (contender.engine_seconds - before))
    result = stats(plain[1:] if len(plain) > 2 else plain)  # the first step is a warm-up
    result["commit_token_ms"] = float(np.median(commits)) * 1e3
    result["amortized_ms"] = ((cfg.seg_len - 1) * result["median_ms"] +
                              result["commit_token_ms"]) / cfg.seg_len
    if outside:
        result["outside_engine_ms"] = float(np.median(outside)) * 1e3
    return result


def _decode_nocache(contender, cfg, batch: int, settings: Settings, rng) -> dict:
    """Eager reference without a KV cache: the logits of position p need the whole partial
    segment re-scored. Timed at evenly spaced midpoints p; their mean is the cost per token
    averaged over a segment cycle (the rotation at p = L-1 is left out, in eager's favour)."""
    contender.fill(batch, _tokens(rng, cfg.vocab_size, batch, _fill_len(cfg)))
    tokens = _tokens(rng, cfg.vocab_size, batch, cfg.seg_len)
    k = settings.nocache_positions
    positions = [max(0, int((i + 0.5) * cfg.seg_len / k) - 1) for i in range(k)]
    contender.decode_at(tokens, positions[0])  # warm-up
    times = [contender.decode_at(tokens, p) for p in positions]
    result = stats(times)
    result["amortized_ms"] = result["mean_ms"]
    result["positions"] = positions
    return result


def _with_compile_budget(budget_s: float, call):
    """Run call(); raise CompileTimeout when it takes longer than budget_s (SIGALRM, main
    thread only: inductor compiles in Python, so the alarm lands between its steps)."""
    def on_alarm(signum, frame):
        raise CompileTimeout(f"torch.compile took longer than the {budget_s:.0f}s budget")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, budget_s)
    try:
        return call()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_contender(key: str, model, engine_dir: Path, threads: int, settings: Settings,
                  cfg) -> dict:
    from benchmarks import contenders as ct

    rng = np.random.default_rng(SEED + 1)
    result: dict = {"segment": {}, "decode": {}}
    if key == "eager":
        contender = ct.EagerReference(model)
    elif key == "compile":
        contender = ct.CompiledReference(model)
    elif key == "cached":
        contender = ct.EagerCached(model)
    else:
        contender = ct.Runtime(engine_dir, threads)
        result["session_open_ms"] = contender.open_seconds * 1e3
    result["name"] = contender.name
    if key == "compile":
        batches = [b for b in settings.segment_batches if b in settings.compile_batches]
        result["compile_seconds"] = {}
        for batch in batches:
            tokens = _tokens(rng, cfg.vocab_size, batch, cfg.seg_len)
            contender.fill(batch, _tokens(rng, cfg.vocab_size, batch, _fill_len(cfg)))
            started = time.perf_counter()
            try:
                _with_compile_budget(settings.compile_budget_s, lambda: contender.segment(tokens))
            except Exception as exc:  # report any compile failure as text, keep benchmarking
                result["error"] = f"{type(exc).__name__}: {str(exc).strip()[:600]}"
                _log(f"torch.compile failed at batch {batch}: {result['error'][:200]}")
                return result
            result["compile_seconds"][str(batch)] = time.perf_counter() - started
            _log(f"torch.compile batch {batch}: {result['compile_seconds'][str(batch)]:.1f}s")
    else:
        batches = list(settings.segment_batches)
    first = _tokens(rng, cfg.vocab_size, 1, cfg.seg_len)
    if key != "compile" or 1 in batches:
        if key == "runtime":
            contender.fill(1, first)
        result["first_segment"] = stats(measure.repeat(lambda: contender.first_segment(first), 1,
                                                       settings.segment_repeats))
    for batch in batches:
        repeats = settings.segment_repeats if batch <= 2 else max(3, settings.segment_repeats - 2)
        result["segment"][str(batch)] = _segment_workload(contender, cfg, batch, repeats, rng)
        _log(f"{contender.name}: segment batch {batch}: "
             f"{result['segment'][str(batch)]['median_ms']:.1f} ms")
    if key == "compile":
        return result  # decoding compiled would recompile for every partial length
    for batch in settings.decode_batches:
        if contender.caches_kv:
            result["decode"][str(batch)] = _decode_cached(contender, cfg, batch, settings, rng)
        else:
            result["decode"][str(batch)] = _decode_nocache(contender, cfg, batch, settings, rng)
        _log(f"{contender.name}: decode batch {batch}: "
             f"{result['decode'][str(batch)]['amortized_ms']:.1f} ms/token amortized")
    return result


def check_engine(model, engine_dir: Path, threads: int) -> dict:
    """Runtime vs eager logits on one full-memory segment (the benchmark's own correctness)."""
    import torch

    from benchmarks.contenders import EagerReference, Runtime

    cfg = model.config
    rng = np.random.default_rng(SEED + 2)
    fill = _tokens(rng, cfg.vocab_size, 2, _fill_len(cfg))
    tokens = _tokens(rng, cfg.vocab_size, 2, cfg.seg_len)
    eager = EagerReference(model)
    eager.fill(2, fill)
    with torch.inference_mode():
        want = model(torch.from_numpy(tokens), eager.memory).logits.numpy()
    runtime = Runtime(engine_dir, threads, max_streams=2)
    runtime.fill(2, fill)
    got = runtime.session.feed({s: tokens[i] for i, s in enumerate(runtime.streams)})
    err = max(float(np.abs(got[s] - want[i]).max()) for i, s in enumerate(runtime.streams))
    return {"max_abs_logit_error": err, "logit_scale": float(np.abs(want).max())}


# ---- derived figures -------------------------------------------------------------------------
def add_efficiency(results: dict, cfg, gemm_gflops: float) -> None:
    """Achieved GFLOP/s of useful work (the cached algorithm's FLOPs) and fraction of GEMM."""
    for res in results["contenders"].values():
        for batch, row in res.get("segment", {}).items():
            flops = measure.segment_flops(cfg, int(batch))["total"]
            row["tokens_per_s"] = int(batch) * cfg.seg_len / (row["median_ms"] / 1e3)
            row["gflops"] = flops / (row["median_ms"] / 1e3) / 1e9
            row["gemm_fraction"] = row["gflops"] / gemm_gflops
        for batch, row in res.get("decode", {}).items():
            flops = measure.decode_flops(cfg, int(batch))["total"]
            row["tokens_per_s"] = int(batch) / (row["amortized_ms"] / 1e3)
            row["gflops"] = flops / (row["amortized_ms"] / 1e3) / 1e9
            row["gemm_fraction"] = row["gflops"] / gemm_gflops


def loop_overhead(runtime: dict) -> dict:
    """Median time per step outside `backend.run` (host copies, bookkeeping) vs the step."""
    rows = {}
    for workload in ("segment", "decode"):
        for batch, row in runtime.get(workload, {}).items():
            if "outside_engine_ms" in row:
                rows[f"{workload} b{batch}"] = {
                    "step_ms": row["median_ms"], "outside_engine_ms": row["outside_engine_ms"],
                    "fraction": row["outside_engine_ms"] / row["median_ms"]}
    return rows


# ---- scaling, Transformer-XL comparison ------------------------------------------------------
def _step_costs(cfg, threads: int, work: Path, batches: tuple[int, ...], settings: Settings,
                keys=("eager", "cached", "runtime")) -> dict:
    """Segment step and decode step (batch 1) for one config, each contender, few repeats."""
    from benchmarks import contenders as ct
    from benchmarks.engines import export_engine, remove_engine

    model = random_model(cfg)
    engine = export_engine(model, work / f"engine_{abs(hash(str(cfg.to_dict())))}")
    rng = np.random.default_rng(SEED + 3)
    out: dict = {}
    try:
        for key in keys:
            contender = {"eager": lambda: ct.EagerReference(model),
                         "cached": lambda: ct.EagerCached(model),
                         "runtime": lambda: ct.Runtime(engine, threads)}[key]()
            row = {}
            for batch in batches:
                seg = _segment_workload(contender, cfg, batch, 3, rng)
                row[f"segment_b{batch}_ms"] = seg["median_ms"]
            if contender.caches_kv:
                contender.fill(1, _tokens(rng, cfg.vocab_size, 1, _fill_len(cfg)))
                token = _tokens(rng, cfg.vocab_size, 1, 1)[:, 0]
                row["decode_b1_ms"] = stats(measure.repeat(lambda: contender.decode(token), 1,
                                                           5))["median_ms"]
            out[key] = row
    finally:
        remove_engine(engine)
    return out


def scaling_grid(base_cfg, threads: int, work: Path, settings: Settings) -> list[dict]:
    """Vary M, C, L (one at a time) and batch on a model with `scaling_layers` layers."""
    base = base_cfg.replace(n_layers=settings.scaling_layers)
    points = [("base", base, settings.scaling_batches)]
    for mem in settings.scaling_mem:
        if mem != base.mem_len and mem % base.seg_len == 0:
            points.append((f"M={mem}", base.replace(mem_len=mem), (1,)))
    for cmem in settings.scaling_cmem:
        if cmem != base.cmem_len:
            points.append((f"C={cmem}", base.replace(cmem_len=cmem), (1,)))
    for seg in settings.scaling_seg:
        if seg != base.seg_len and base.mem_len % seg == 0 and seg % base.compress_rate == 0:
            points.append((f"L={seg}", base.replace(seg_len=seg), (1,)))
    rows = []
    for label, cfg, batches in points:
        _log(f"scaling {label}")
        costs = _step_costs(cfg, threads, work, batches, settings)
        rows.append({"point": label, "n_layers": cfg.n_layers, "mem_len": cfg.mem_len,
                     "cmem_len": cfg.cmem_len, "seg_len": cfg.seg_len, "batches": list(batches),
                     "segment_flops_b1": measure.segment_flops(cfg, 1)["total"],
                     "costs": costs})
    return rows


def xl_comparison(base_cfg, threads: int, work: Path, settings: Settings) -> list[dict]:
    """CT vs Transformer-XL with the same attention span (M + C) and the same temporal range
    (M + c*C), all at seg_len = xl_seg_len, runtime and eager cached, batch 1."""
    seg = settings.xl_seg_len
    ct_cfg = base_cfg.replace(n_layers=settings.scaling_layers, seg_len=seg)
    span = ct_cfg.mem_len + ct_cfg.cmem_len
    reach = ct_cfg.mem_len + ct_cfg.compress_rate * ct_cfg.cmem_len
    models = [("compressive", ct_cfg),
              ("XL same span", ct_cfg.replace(compress_fn="none", cmem_len=0, mem_len=span)),
              ("XL same range", ct_cfg.replace(compress_fn="none", cmem_len=0, mem_len=reach))]
    rows = []
    for label, cfg in models:
        _log(f"XL comparison: {label}")
        costs = _step_costs(cfg, threads, work, (1,), settings, keys=("cached", "runtime"))
        span_keys = cfg.mem_len + cfg.cmem_len
        reach_tokens = cfg.mem_len + cfg.compress_rate * cfg.cmem_len
        run = costs["runtime"]
        rows.append({
            "model": label, "mem_len": cfg.mem_len, "cmem_len": cfg.cmem_len, "seg_len": seg,
            "attention_span": span_keys, "temporal_range_per_layer": reach_tokens,
            "segment_ms_per_token": run["segment_b1_ms"] / seg,
            "decode_ms_per_token": run["decode_b1_ms"],
            "segment_us_per_token_per_range_token": run["segment_b1_ms"] * 1e3 / seg / reach_tokens,
            "costs": costs})
    return rows


# ---- ORT options, offline fusions, int8 ------------------------------------------------------
def _time_runtime(engine_dir: Path, threads: int, cfg, repeats: int, backend_factory=None) -> dict:
    from benchmarks.contenders import Runtime
    from runtime.manifest import load_manifest

    backend = backend_factory(load_manifest(engine_dir)) if backend_factory else None
    runtime = Runtime(engine_dir, threads, backend=backend, max_streams=1)
    rng = np.random.default_rng(SEED + 4)
    seg = _segment_workload(runtime, cfg, 1, repeats, rng)
    runtime.fill(1, _tokens(rng, cfg.vocab_size, 1, _fill_len(cfg)))
    token = _tokens(rng, cfg.vocab_size, 1, 1)[:, 0]
    dec = stats(measure.repeat(lambda: runtime.decode(token), 2, max(repeats * 2, 6)))
    return {"segment_b1_ms": seg["median_ms"], "decode_b1_ms": dec["median_ms"],
            "session_open_ms": runtime.open_seconds * 1e3}


def ort_experiments(engine_dir: Path, threads: int, cfg, work: Path, settings: Settings) -> dict:
    from benchmarks import engines

    out: dict = {"session_options": {}, "graphs": {}}
    for name, tune in engines.ort_option_variants(threads).items():
        _log(f"ORT option variant: {name}")

        def factory(manifest, tune=tune):
            return engines.TunedOrtBackend(manifest, threads, tune)

        try:
            out["session_options"][name] = _time_runtime(engine_dir, threads, cfg,
                                                         settings.variant_repeats, factory)
        except Exception as exc:
            out["session_options"][name] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
    graph_variants = {
        "ORT offline BASIC (standard ops)": engines.ort_offline("basic"),
        "ORT offline EXTENDED": engines.ort_offline("extended"),
        "transformers optimizer (bert)": engines.transformer_optimizer(cfg.n_heads, cfg.d_model),
    }
    for name, transform in graph_variants.items():
        _log(f"graph variant: {name}")
        path = work / f"variant_{len(out['graphs'])}"
        try:
            derived = engines.derive_engine(engine_dir, path, transform)
            row = _time_runtime(derived, threads, cfg, settings.variant_repeats)
            row["non_standard_ops"] = engines.non_standard_ops(derived)
            row["tensorrt_compatible_ops"] = not row["non_standard_ops"]
            row["check"] = check_engine_equal(engine_dir, derived, threads, cfg)
            out["graphs"][name] = row
        except Exception as exc:
            out["graphs"][name] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
        finally:
            engines.remove_engine(path)
    return out


def check_engine_equal(engine_a: Path, engine_b: Path, threads: int, cfg) -> dict:
    """Max |logit difference| of two engines on the same tokens (fill + one segment)."""
    from benchmarks.contenders import Runtime

    rng = np.random.default_rng(SEED + 5)
    fill = _tokens(rng, cfg.vocab_size, 1, _fill_len(cfg))
    tokens = _tokens(rng, cfg.vocab_size, 1, cfg.seg_len)
    logits = []
    for engine in (engine_a, engine_b):
        runtime = Runtime(engine, threads, max_streams=1)
        runtime.fill(1, fill)
        logits.append(runtime.session.feed({runtime.streams[0]: tokens[0]})[runtime.streams[0]])
    return {"max_abs_logit_diff": float(np.abs(logits[0] - logits[1]).max())}


def quantization(engine_dir: Path, threads: int, cfg, work: Path, settings: Settings) -> dict:
    """int8 dynamic quantization: speed, and bits per byte on real text (this Python's os.py,
    split into `quant_streams` documents scored with fresh memory) against fp32."""
    from benchmarks import engines
    from runtime.score import score_documents, total_bits_per_byte
    from runtime.session import Session

    path = work / "engine_int8"
    try:
        derived = engines.derive_engine(engine_dir, path, engines.quantize_int8, precision="int8")
        timing = _time_runtime(derived, threads, cfg, settings.variant_repeats)
        text = Path(os.__file__).read_bytes()[:settings.quant_text_bytes]
        size = len(text) // settings.quant_streams
        docs = [(f"os.py[{i * size}:{(i + 1) * size}]", text[i * size:(i + 1) * size])
                for i in range(settings.quant_streams)]
        bpb = {}
        for label, engine in (("fp32", engine_dir), ("int8", derived)):
            session = Session(engine, max_streams=settings.quant_streams, threads=threads)
            started = time.perf_counter()
            bpb[label] = total_bits_per_byte(score_documents(session, docs))
            bpb[f"{label}_seconds"] = time.perf_counter() - started
        return {**timing, "bits_per_byte": bpb, "text": f"{os.__file__} first {len(text)} bytes",
                "bpb_delta": bpb["int8"] - bpb["fp32"],
                "graph_bytes": sum(p.stat().st_size for p in derived.glob("*.onnx"))}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:400]}
    finally:
        engines.remove_engine(path)


# ---- targets ---------------------------------------------------------------------------------
def evaluate_targets(results: dict) -> list[dict]:
    con = results["contenders"]
    gemm = results["machine"]["gemm"]["gflops"]
    targets = []

    def add(name, want, value, note=""):
        met = value is not None and value >= want
        targets.append({"target": name, "want": want, "measured": value, "met": bool(met),
                        "note": note})

    def ratio(a, b, workload, batch, field_name):
        try:
            return con[a][workload][batch][field_name] / con[b][workload][batch][field_name]
        except (KeyError, ZeroDivisionError):
            return None

    add("segment b1: runtime speed-up vs eager", 1.5, ratio("eager", "runtime", "segment", "1",
                                                            "median_ms"))
    add("segment b8: runtime speed-up vs eager", 1.3, ratio("eager", "runtime", "segment", "8",
                                                            "median_ms"))
    best = max((row.get("gflops", 0.0) for row in con.get("runtime", {}).get("segment", {})
                .values()), default=0.0)
    add("segment step: runtime fraction of GEMM rate", 0.70, best / gemm,
        "best batch; useful FLOPs of the cached algorithm")
    add("decode b1: runtime speed-up vs eager without KV cache", 3.0,
        ratio("eager", "runtime", "decode", "1", "amortized_ms"))
    add("decode b1: runtime speed-up vs eager cached", 1.5,
        ratio("cached", "runtime", "decode", "1", "amortized_ms"))
    overhead = results.get("loop_overhead", {}).get("decode b1", {}).get("fraction")
    targets.append({"target": "loop overhead decode b1 (fraction of step)", "want": "< 0.03",
                    "measured": overhead, "met": overhead is not None and overhead < 0.03,
                    "note": ""})
    return targets


# ---- entry -----------------------------------------------------------------------------------
def run_benchmark(quick: bool, out_dir: Path, threads: int, checkpoint: Path | None,
                  backends: tuple[str, ...] = CONTENDERS, profile: str | None = None,
                  extras: bool = True) -> dict:
    """Run every workload for every contender in `backends`; write bench.json, bench.png and
    print the table. `profile` ("full", "quick", "smoke") overrides `quick`; extras=False skips
    the scaling grid, XL comparison, ORT variants and quantization."""
    import torch

    from benchmarks import report
    from benchmarks.engines import export_engine
    from ct_reference.config import ModelConfig

    settings = PROFILES[profile or ("quick" if quick else "full")]
    unknown = set(backends) - set(CONTENDERS)
    if unknown:
        raise ValueError(f"unknown contender(s) {sorted(unknown)}; choose from {CONTENDERS}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    torch.set_num_threads(threads)
    if checkpoint:
        from ct_reference.checkpoint import load_model

        model, _ = load_model(checkpoint)
        model_source = str(checkpoint)
    else:
        model = random_model(ModelConfig().replace(**settings.config))
        model_source = f"random weights, torch.manual_seed({SEED})"
    cfg = model.config
    results: dict = {
        "profile": profile or ("quick" if quick else "full"), "threads": threads,
        "thread_note": f"torch.set_num_threads({threads}); ORT intra_op_num_threads={threads}, "
                       f"inter_op 1, sequential",
        "model": model_source, "config": cfg.to_dict(), "settings": asdict(settings),
        "platform": {"python": platform.python_version(), "torch": torch.__version__,
                     "machine": platform.machine(), "cpus": os.cpu_count()},
    }
    _log(f"profile {results['profile']}, {threads} threads, config {cfg.to_dict()}")
    results["load_average_start"] = os.getloadavg()
    # numpy's GEMM runs last: OpenBLAS worker threads would compete with torch's afterwards.
    results["machine"] = {"gemm": measure.gemm_rate(threads, libs=("torch",)),
                          "memory": measure.memory_bandwidth()}
    _log(f"torch GEMM {results['machine']['gemm']['gflops']:.1f} GFLOP/s, copy "
         f"{results['machine']['memory']['copy_gbps']:.1f} GB/s, load average "
         f"{results['load_average_start'][0]:.2f}")
    weight_bytes = sum(p.numel() * 4 for n, p in model.named_parameters()
                       if not n.startswith("compressors"))
    results["flops"] = {f"segment_b{b}": measure.segment_flops(cfg, b)
                        for b in settings.segment_batches}
    results["flops"].update({f"decode_b{b}": measure.decode_flops(cfg, b)
                             for b in settings.decode_batches})
    results["flops"]["eager_reference_extra_per_segment_b1"] = measure.reference_extra_flops(
        cfg, 1, cfg.seg_len)
    results["decode_bytes_b1"] = measure.decode_bytes(cfg, weight_bytes)
    with tempfile.TemporaryDirectory(prefix="ctrt-bench-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        engine_dir = export_engine(model, work / "engine")
        results["export_seconds"] = time.perf_counter() - t0
        _log(f"exported engine in {results['export_seconds']:.1f}s")
        results["check"] = check_engine(model, engine_dir, threads)
        results["contenders"] = {}
        for key in CONTENDERS:
            if key in backends:
                _log(f"contender {key}")
                results["contenders"][key] = run_contender(key, model, engine_dir, threads,
                                                           settings, cfg)
                gc.collect()  # close ORT sessions: their idle threads must not compete
        results["machine"]["gemm"].update(measure.gemm_rate(threads, libs=("numpy",)))
        results["machine"]["gemm"]["gflops"] = max(results["machine"]["gemm"]["torch_gflops"],
                                                   results["machine"]["gemm"]["numpy_gflops"])
        add_efficiency(results, cfg, results["machine"]["gemm"]["gflops"])
        if "runtime" in results["contenders"]:
            results["loop_overhead"] = loop_overhead(results["contenders"]["runtime"])
            dec = results["contenders"]["runtime"]["decode"].get("1")
            if dec:
                gbps = results["decode_bytes_b1"]["total"] / (dec["amortized_ms"] / 1e3) / 1e9
                results["decode_bytes_b1"]["runtime_gbps"] = gbps
                results["decode_bytes_b1"]["fraction_of_copy_bandwidth"] = (
                    gbps / results["machine"]["memory"]["copy_gbps"])
        if extras:
            results["scaling"] = scaling_grid(cfg, threads, work, settings)
            results["xl_comparison"] = xl_comparison(cfg, threads, work, settings)
            results["ort"] = ort_experiments(engine_dir, threads, cfg, work, settings)
            _log("int8 quantization")
            results["quantization"] = quantization(engine_dir, threads, cfg, work, settings)
    results["load_average_end"] = os.getloadavg()
    results["targets"] = evaluate_targets(results)
    results["total_seconds"] = time.perf_counter() - started
    report.write(results, out_dir)
    print(report.table(results))
    return results
