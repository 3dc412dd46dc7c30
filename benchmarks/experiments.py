"""The benchmark's experiments beyond the main table: the engine's own correctness check, the
compressive-transformer-pytorch comparison, the serving curve and capacity independence."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from compressive_rt.benchmarks.contenders import Bench, build, open_backend
from compressive_rt.benchmarks.engines import export_engine
from compressive_rt.benchmarks.measure import ratio_stats
from compressive_rt.benchmarks.settings import SEED, BenchError, Settings, log
from compressive_rt.benchmarks.workloads import (
    compare,
    fill_tokens,
    interleave,
    random_tokens,
    summarize,
)
from compressive_rt.runtime.sampling import Sampling
from compressive_rt.runtime.session import Session


def session_logits(engine_dir: Path, threads: int, fill: np.ndarray,
                    tokens: np.ndarray) -> np.ndarray:
    """Runtime logits [B, L, V] of `tokens` after `fill`, one stream per row."""
    session = Session(engine_dir, backend="onnxruntime-cpu", max_streams=len(tokens),
                      threads=threads)
    streams = [session.add_stream() for _ in tokens]
    session.feed({s: fill[i] for i, s in enumerate(streams)}, want_logits=False)
    got = session.feed({s: tokens[i] for i, s in enumerate(streams)})
    return np.stack([got[s] for s in streams])


def check_engine(model, engine_dir: Path, threads: int) -> dict:
    """Runtime vs eager logits on one full-memory segment (the benchmark's own correctness)."""
    cfg = model.config
    rng = np.random.default_rng(SEED + 2)
    fill = fill_tokens(rng, cfg, 2)
    tokens = random_tokens(rng, cfg.vocab_size, 2, cfg.seg_len)
    with torch.inference_mode():
        memory = model.score(torch.from_numpy(fill))[1]
        want = model(torch.from_numpy(tokens), memory).logits.numpy()
    got = session_logits(engine_dir, threads, fill, tokens)
    return {"max_abs_logit_error": float(np.abs(got - want).max()),
            "logit_scale": float(np.abs(want).max())}


def lucidrains_arguments(cfg) -> dict:
    """compressive-transformer-pytorch arguments of the same sizes as `cfg` (the rest of that
    architecture at the package's defaults; ct_reference.importers maps it)."""
    return dict(num_tokens=cfg.vocab_size, dim=cfg.d_model, depth=cfg.n_layers,
                seq_len=cfg.seg_len, mem_len=cfg.mem_len, cmem_len=cfg.cmem_len,
                cmem_ratio=cfg.compress_rate, heads=cfg.n_heads)


def lucidrains_comparison(cfg, threads: int, work: Path, settings: Settings,
                          keys: tuple[str, ...] = ("lucidrains", "eager", "cached", "runtime"),
                          ) -> dict:
    """One model both ways: built in compressive-transformer-pytorch, its state_dict imported
    with `ctrt import-checkpoint` and exported, so every contender computes the same function;
    the package's forward per segment and generate per token beside ours."""
    try:
        from compressive_transformer_pytorch import CompressiveTransformer as PackageNet
    except ImportError:
        raise BenchError("compressive-transformer-pytorch is not installed: pip install --no-deps "
                         "compressive-transformer-pytorch==0.4.0 mogrifier einops") from None
    from compressive_rt.ct_reference.checkpoint import load_model
    from compressive_rt.ct_reference.importers import LUCIDRAINS, import_checkpoint

    arguments = lucidrains_arguments(cfg)
    torch.manual_seed(SEED)
    net = PackageNet(**arguments).eval()
    state_path, args_path = work / "lucidrains_state.pt", work / "lucidrains_args.json"
    torch.save(net.state_dict(), state_path)
    args_path.write_text(json.dumps(arguments))
    checkpoint = import_checkpoint(LUCIDRAINS, state_path, args_path, work / "lucidrains_ckpt")
    model, _ = load_model(checkpoint)
    engine_dir = export_engine(model, work / "lucidrains_engine")
    model_cfg = model.config
    rng = np.random.default_rng(SEED + 6)
    fill = fill_tokens(rng, model_cfg, 1)
    tokens = random_tokens(rng, model_cfg.vocab_size, 1, model_cfg.seg_len)
    memory = None
    with torch.inference_mode():
        for start in range(0, fill.shape[1], model_cfg.seg_len):
            _, memory, _ = net(torch.from_numpy(fill[:, start:start + model_cfg.seg_len]),
                               memories=memory)
        want = net(torch.from_numpy(tokens), memories=memory)[0].numpy()
    got = session_logits(engine_dir, threads, fill, tokens)
    bench = Bench(model, engine_dir, threads, their_net=net)
    log(f"lucidrains comparison: {', '.join(keys)}")
    result = compare({key: build(key, bench) for key in keys}, model_cfg, settings, rng,
                     settings.lucidrains_batches, (1,))
    return {"arguments": arguments, "config": model_cfg.to_dict(),
            "check": {"max_abs_logit_error": float(np.abs(got - want).max()),
                      "logit_scale": float(np.abs(want).max())}, **result}


TOP_K = 40  # the sampled serving line and the scheduler-overhead row


def serving_contenders(keys: tuple[str, ...]) -> dict[str, tuple[str, Sampling | None]]:
    """Serving-curve lines: (session contender, sampling; None = top-k with a seed per
    request). The runtime serves greedy and top-k requests; other contenders greedy only."""
    lines = {key: (key, Sampling(greedy=True)) for key in keys}
    if "runtime" in keys:
        lines[f"runtime_top{TOP_K}"] = ("runtime", None)
    return lines


def serving_curve(bench: Bench, settings: Settings,
                  keys: tuple[str, ...] = ("runtime", "cached")) -> dict:
    """Generated tokens per second against concurrent requests, through runtime.scheduler on
    the engine (runtime: greedy and top-k 40 with a seed per request) and on the eager cached
    steps (cached), interleaved per repeat."""
    from compressive_rt.runtime.scheduler import Scheduler

    rng = np.random.default_rng(SEED + 7)
    prompts = [bytes(rng.integers(0, 256, settings.serving_prompt_bytes).astype(np.uint8))
               for _ in range(max(settings.serving_concurrency))]
    new_tokens = settings.serving_new_tokens
    lines = serving_contenders(keys)
    rows = []
    for concurrency in settings.serving_concurrency:
        sessions = {line: Session(bench.engine_dir, backend=open_backend(key, bench),
                                  max_streams=concurrency) for line, (key, _) in lines.items()}

        def serve(line: str, concurrency: int = concurrency) -> dict:
            scheduler = Scheduler(sessions[line])
            sampling = lines[line][1]
            for i, prompt in enumerate(prompts[:concurrency]):
                scheduler.submit(prompt, new_tokens, sampling or Sampling(top_k=TOP_K, seed=i))
            started = time.perf_counter()
            for _ in scheduler.run():
                pass
            return {"seconds": time.perf_counter() - started}

        for line in lines:
            serve(line)  # warm-up: first calls of each batch and token count
        runs = interleave({line: (lambda line=line: serve(line)) for line in lines},
                          settings.serving_repeats)
        generated = concurrency * new_tokens
        row: dict = {"concurrency": concurrency, "generated_tokens": generated}
        for line, repeats in runs.items():
            seconds = [r["seconds"] for r in repeats]
            row[line] = {**summarize(repeats),
                         "tokens_per_s": generated / float(np.median(seconds)),
                         "tokens_per_s_min": generated / max(seconds),
                         "tokens_per_s_max": generated / min(seconds)}
        if "runtime" in runs and "cached" in runs:
            row["runtime_vs_cached"] = ratio_stats([r["seconds"] for r in runs["cached"]],
                                                   [r["seconds"] for r in runs["runtime"]])
        rows.append(row)
        log(f"serving {concurrency} requests: " + ", ".join(
            f"{line} {row[line]['tokens_per_s']:.0f} tokens/s" for line in runs))
    return {"prompt_bytes": settings.serving_prompt_bytes, "new_tokens": new_tokens,
            "sampling": f"greedy; runtime_top{TOP_K}: top-k {TOP_K}, a seed per request",
            "keys": list(lines), "rows": rows}


def scheduler_overhead(bench: Bench, settings: Settings, requests: int = 8,
                       key: str = "runtime") -> dict:
    """Scheduler.step with `requests` running requests (top-k 40, distinct seeds, no
    callbacks): wall time minus the time inside Backend.run, over steps that cross commits."""
    from compressive_rt.runtime.scheduler import Scheduler

    cfg = bench.model.config
    backend = open_backend(key, bench)
    session = Session(bench.engine_dir, backend=backend, max_streams=requests)
    rng = np.random.default_rng(SEED + 9)
    scheduler = Scheduler(session)
    for i in range(requests):
        prompt = bytes(rng.integers(0, 256, settings.serving_prompt_bytes).astype(np.uint8))
        scheduler.submit(prompt, 1 << 30, Sampling(top_k=TOP_K, seed=i))
    for _ in range(cfg.seg_len + 2):  # warm-up: the prompts, every fill, a commit
        scheduler.step()
    walls, outside = [], []
    for _ in range(settings.scheduler_steps):
        engine_before = backend.engine_seconds
        started = time.perf_counter()
        scheduler.step()
        wall = time.perf_counter() - started
        walls.append(wall)
        outside.append(wall - (backend.engine_seconds - engine_before))
    scheduler.close()
    fractions = np.array(outside) / np.array(walls)
    return {"contender": key, "requests": requests, "top_k": TOP_K, "steps": len(walls),
            "step_ms": float(np.median(walls)) * 1e3,
            "outside_engine_ms": float(np.median(outside)) * 1e3,
            "fraction": float(np.sum(outside) / np.sum(walls)),
            "fraction_quartiles": [float(q) for q in np.percentile(fractions, (25, 75))]}


def capacity_independence(bench: Bench, settings: Settings, key: str = "runtime") -> dict:
    """A decode step of one active stream in a session opened for `capacity_streams` streams
    vs one opened for a single stream (full memory, no commit among the timed tokens)."""
    cfg = bench.model.config
    rng = np.random.default_rng(SEED + 8)
    fill = fill_tokens(rng, cfg, 1)[0]
    capacities = (1, settings.capacity_streams)
    sessions, streams = {}, {}
    for capacity in capacities:
        sessions[capacity] = Session(bench.engine_dir, backend=open_backend(key, bench),
                                     max_streams=capacity)
        streams[capacity] = sessions[capacity].add_stream()
        sessions[capacity].feed({streams[capacity]: fill}, want_logits=False)
    token = np.zeros(1, dtype=np.int32)

    def step(capacity: int) -> dict:
        started = time.perf_counter()
        sessions[capacity].feed({streams[capacity]: token}, want_logits=False)
        return {"seconds": time.perf_counter() - started}

    for capacity in capacities:
        step(capacity)  # warm-up
    repeats = max(1, min(settings.capacity_repeats, cfg.seg_len - 2))
    runs = interleave({c: (lambda c=c: step(c)) for c in capacities}, repeats)
    small, large = capacities
    return {"contender": key, "max_streams": list(capacities),
            "decode_step": {str(c): summarize(runs[c]) for c in capacities},
            "ratio": ratio_stats([r["seconds"] for r in runs[large]],
                                 [r["seconds"] for r in runs[small]])}
