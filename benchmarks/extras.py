"""Experiments on other models and engines than the main table's: a scaling grid over M, C, L
and batch, compression vs Transformer-XL, ONNX Runtime option and graph variants, int8."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from compressive_rt.benchmarks import measure
from compressive_rt.benchmarks.contenders import Bench, SessionContender, build, random_model
from compressive_rt.benchmarks.experiments import session_logits
from compressive_rt.benchmarks.settings import SEED, Settings, log
from compressive_rt.benchmarks.timed_backend import TimedBackend
from compressive_rt.benchmarks.workloads import fill_tokens, random_tokens, step_costs


def _model_step_costs(cfg, threads: int, work: Path, batches: tuple[int, ...],
                      keys: tuple[str, ...] = ("eager", "cached", "runtime")) -> dict:
    """Segment steps and decode step (batch 1) of a random model of `cfg`, each contender."""
    from compressive_rt.benchmarks.engines import export_engine, remove_engine

    model = random_model(cfg)
    engine = export_engine(model, work / f"engine_{abs(hash(str(cfg.to_dict())))}")
    try:
        bench = Bench(model, engine, threads)
        return step_costs({key: build(key, bench) for key in keys}, cfg, batches, 3,
                          np.random.default_rng(SEED + 3))
    finally:
        remove_engine(engine)


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
        log(f"scaling {label}")
        costs = _model_step_costs(cfg, threads, work, batches)
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
        log(f"XL comparison: {label}")
        costs = _model_step_costs(cfg, threads, work, (1,), keys=("cached", "runtime"))
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


def _time_runtime(engine_dir: Path, threads: int, cfg, repeats: int, backend_factory=None) -> dict:
    """Segment and decode step at batch 1 of one engine through the Session (its own ORT
    session options when backend_factory is given)."""
    from compressive_rt.runtime.backends.ort import OrtCpuBackend
    from compressive_rt.runtime.manifest import load_manifest

    open_inner = backend_factory or (lambda manifest: OrtCpuBackend(manifest, threads=threads))
    runtime = SessionContender("runtime (ORT)", engine_dir,
                               lambda: TimedBackend(open_inner(load_manifest(engine_dir))))
    costs = step_costs({"runtime": runtime}, cfg, (1,), repeats,
                       np.random.default_rng(SEED + 4))["runtime"]
    return {**costs, "session_open_ms": runtime.open_seconds * 1e3}


def ort_experiments(engine_dir: Path, threads: int, cfg, work: Path, settings: Settings) -> dict:
    from compressive_rt.benchmarks import engines

    out: dict = {"session_options": {}, "graphs": {}}
    for name, tune in engines.ort_option_variants(threads).items():
        log(f"ORT option variant: {name}")

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
        log(f"graph variant: {name}")
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
    rng = np.random.default_rng(SEED + 5)
    fill = fill_tokens(rng, cfg, 1)
    tokens = random_tokens(rng, cfg.vocab_size, 1, cfg.seg_len)
    logits = [session_logits(engine, threads, fill, tokens) for engine in (engine_a, engine_b)]
    return {"max_abs_logit_diff": float(np.abs(logits[0] - logits[1]).max())}


def quantization(engine_dir: Path, threads: int, cfg, work: Path, settings: Settings) -> dict:
    """int8 dynamic quantization, as `ctrt export --precision int8` makes it: speed, and bits
    per byte on real text (this Python's os.py, split into `quant_streams` documents scored with
    fresh memory) against fp32, with the CPU features that select ONNX Runtime's int8 kernels."""
    import json
    import shutil

    from compressive_rt.benchmarks import engines
    from compressive_rt.benchmarks.memory import directory_bytes
    from compressive_rt.export.onnx_export import QUANT_OPTIONS
    from compressive_rt.export.pipeline import convert_engine
    from compressive_rt.runtime.cpu import cpu_features
    from compressive_rt.runtime.manifest import MANIFEST_NAME
    from compressive_rt.runtime.score import score_documents, total_bits_per_byte
    from compressive_rt.runtime.session import Session

    derived = work / "engine_int8"
    try:
        shutil.copytree(engine_dir, derived)
        convert_engine(derived, json.loads((derived / MANIFEST_NAME).read_text()), "int8")
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
                "bpb_delta": bpb["int8"] - bpb["fp32"], "quantization": QUANT_OPTIONS,
                "cpu": cpu_features().to_dict(), "engine_bytes": directory_bytes(derived)}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:400]}
    finally:
        engines.remove_engine(derived)
