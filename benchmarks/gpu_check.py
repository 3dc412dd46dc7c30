"""One GPU check: export the default model, build fp32/fp16 TensorRT plans, compare with eager
PyTorch on CUDA, and time eager PyTorch, ONNX Runtime CUDA and TensorRT side by side.

    python -m benchmarks.gpu_check OUT_DIR [--checkpoint DIR] [--skip-build]

Checks (exit status 1 if any fails):
  - fp32 TensorRT and ONNX Runtime CUDA logits vs eager PyTorch on CUDA (TF32 off everywhere):
    max |error| <= 1e-3 * max(1, logit scale), over 4 segments + a partial one, 2 streams;
  - fp16 TensorRT: max |error| <= 5e-2 * max(1, logit scale), and greedy decoding of a test
    prompt picks the same 32 tokens as eager PyTorch (fp32 TensorRT too).
Latency (medians, CUDA-synchronized): segment scoring (one call scores L tokens per stream and
rotates memory) and per-token decoding (extend, T=1) at batch 1 and 8. Eager PyTorch is timed
through export.step's SegmentStep/ExtendStep, the same cached computation as the engines.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ct_reference.config import ModelConfig
from ct_reference.generate import greedy_generate
from ct_reference.model import CompressiveTransformer
from export.inspect import inspect_engine_dir
from export.onnx_export import example_tensor
from export.pipeline import export_model
from export.step import build_steps
from export.tensorrt_build import build_engines
from runtime.backends.ort_gpu import OrtCudaBackend
from runtime.backends.tensorrt import TensorRTBackend
from runtime.manifest import load_manifest
from runtime.session import Session

FP32_RELATIVE = 1e-3
FP16_RELATIVE = 5e-2
BATCHES = (1, 8)
PROMPT = b"The Compressive Transformer keeps a compressed memory of the past. "
NEW_TOKENS = 32


def load_or_make_model(checkpoint: str | None) -> CompressiveTransformer:
    if checkpoint:
        from ct_reference.checkpoint import load_model

        model, _ = load_model(checkpoint)
        return model.eval()
    torch.manual_seed(0)
    return CompressiveTransformer(ModelConfig()).eval()


def test_tokens(vocab: int, seg_len: int, streams: int = 2) -> np.ndarray:
    """[streams, 4 L + 37]: not a multiple of L, so the last segment stays partial."""
    return np.random.default_rng(0).integers(0, vocab, (streams, 4 * seg_len + 37))


def eager_cuda_logits(model: CompressiveTransformer, tokens: np.ndarray) -> np.ndarray:
    return model.score(torch.from_numpy(tokens).cuda())[0].float().cpu().numpy()


def session_logits(engine_dir: Path, backend, tokens: np.ndarray) -> np.ndarray:
    session = Session(engine_dir, backend=backend, max_streams=tokens.shape[0])
    ids = [session.add_stream() for _ in range(tokens.shape[0])]
    out = session.feed({s: tokens[i] for i, s in enumerate(ids)})
    return np.stack([out[s] for s in ids])


def session_greedy(engine_dir: Path, backend, prompt: np.ndarray, count: int) -> list[int]:
    session = Session(engine_dir, backend=backend, max_streams=1)
    stream = session.add_stream()
    logits = session.feed({stream: prompt})[stream]
    tokens = []
    for _ in range(count):
        tokens.append(int(logits[-1].argmax()))
        logits = session.feed({stream: np.array(tokens[-1:], dtype=np.int32)})[stream]
    return tokens


def compare(name: str, got: np.ndarray, want: np.ndarray, relative: float) -> bool:
    scale = max(1.0, float(np.abs(want).max()))
    err = float(np.abs(got - want).max())
    ok = err <= relative * scale
    print(f"  {name:<24} max |error| {err:.2e}  (limit {relative * scale:.2e}, logit scale "
          f"{scale:.2f})  {'ok' if ok else 'FAIL'}")
    return ok


def median_ms(fn, repeats: int, warmup: int = 3, sync=torch.cuda.synchronize) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def eager_latency(model: CompressiveTransformer, batch: int) -> tuple[float, float]:
    from runtime.contract import entry_points

    steps = {name: step.cuda() for name, step in build_steps(model).items()}
    contract = entry_points(model.config)

    def inputs(entry: str, tokens: int) -> tuple:
        return tuple(example_tensor(spec, batch, tokens).cuda()
                     for spec in contract[entry].inputs)

    segment_in, extend_in = inputs("segment", 1), inputs("extend", 1)
    with torch.no_grad():
        segment = median_ms(lambda: steps["segment"](*segment_in), repeats=20)
        decode = median_ms(lambda: steps["extend"](*extend_in), repeats=50)
    return segment, decode


def runtime_latency(engine_dir: Path, make_backend, batch: int,
                    seg_len: int) -> tuple[float, float]:
    session = Session(engine_dir, backend=make_backend(), max_streams=batch)
    ids = [session.add_stream() for _ in range(batch)]
    rng = np.random.default_rng(1)
    segment_tokens = {s: rng.integers(0, 256, seg_len).astype(np.int32) for s in ids}
    segment = median_ms(lambda: session.feed(segment_tokens), repeats=20, sync=lambda: None)
    one = {s: np.array([7], dtype=np.int32) for s in ids}
    decode = median_ms(lambda: session.feed(one), repeats=100, sync=lambda: None)
    return segment, decode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--skip-build", action="store_true",
                        help="reuse the engine directory and plans already in OUT_DIR")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    engine_dir = args.out_dir / "engine"
    model = load_or_make_model(args.checkpoint)
    cfg = model.config
    if not args.skip_build:
        export_model(model, engine_dir, verify_segments=2)
        print(inspect_engine_dir(engine_dir))
        for precision in ("fp32", "fp16"):
            build_engines(engine_dir, precision=precision, max_batch=max(BATCHES), opt_batch=1,
                          workspace_mib=8192, timing_cache=args.out_dir / "timing.cache")
    print(f"[{time.perf_counter() - started:.0f}s] engines ready in {engine_dir}")
    manifest = load_manifest(engine_dir)
    model = model.cuda()

    def trt(precision: str):
        return lambda: TensorRTBackend(manifest, precision=precision)

    def ort_cuda():
        return OrtCudaBackend(manifest, max_batch=max(BATCHES))

    print("equality with eager PyTorch (CUDA, fp32):")
    tokens = test_tokens(cfg.vocab_size, cfg.seg_len)
    want = eager_cuda_logits(model, tokens)
    passed = compare("TensorRT fp32", session_logits(engine_dir, trt("fp32")(), tokens), want,
                     FP32_RELATIVE)
    passed &= compare("ONNX Runtime CUDA fp32", session_logits(engine_dir, ort_cuda(), tokens),
                      want, FP32_RELATIVE)
    passed &= compare("TensorRT fp16", session_logits(engine_dir, trt("fp16")(), tokens), want,
                      FP16_RELATIVE)
    prompt = np.frombuffer(PROMPT, dtype=np.uint8).astype(np.int32) % cfg.vocab_size
    with torch.no_grad():
        eager_tokens = greedy_generate(model, torch.from_numpy(prompt[None].astype(np.int64))
                                       .cuda(), NEW_TOKENS)[0].tolist()
    for precision in ("fp32", "fp16"):
        got = session_greedy(engine_dir, trt(precision)(), prompt, NEW_TOKENS)
        same = sum(a == b for a, b in zip(got, eager_tokens, strict=True))
        ok = got == eager_tokens
        passed &= ok
        print(f"  greedy {NEW_TOKENS} tokens, TensorRT {precision}: {same}/{NEW_TOKENS} equal "
              f"to eager  {'ok' if ok else 'FAIL'}")
    print(f"[{time.perf_counter() - started:.0f}s] latency, median ms per call "
          f"(segment: L={cfg.seg_len} tokens per stream; decode: 1 token per stream)")
    print(f"  {'backend':<24} {'batch':>5} {'segment':>10} {'decode':>10}")
    for batch in BATCHES:
        rows = [("eager PyTorch CUDA", lambda b=batch: eager_latency(model, b)),
                ("ONNX Runtime CUDA", lambda b=batch: runtime_latency(
                    engine_dir, ort_cuda, b, cfg.seg_len)),
                ("TensorRT fp32", lambda b=batch: runtime_latency(
                    engine_dir, trt("fp32"), b, cfg.seg_len)),
                ("TensorRT fp16", lambda b=batch: runtime_latency(
                    engine_dir, trt("fp16"), b, cfg.seg_len))]
        for name, measure in rows:
            segment, decode = measure()
            print(f"  {name:<24} {batch:>5} {segment:>10.3f} {decode:>10.3f}")
    print(f"[{time.perf_counter() - started:.0f}s] {'all checks passed' if passed else 'FAILED'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
