"""The GPU check: every GPU path held to the CPU contract, then timed like with like.

    python -m compressive_rt.benchmarks.gpu_check OUT_DIR [--checkpoint DIR] [--train-minutes 1]
        [--json PATH]

Model: a checkpoint, or the demo preset (`tiny`) trained here for --train-minutes (CPU, as
`ctrt demo` trains it), so that fp16 is judged on a model with real, not near-tied, logits.
It is exported twice: fp32 graphs and fp16 graphs (`ctrt export --precision fp16`); TensorRT
plans are built from each (fp32 plans with TF32 off; fp16 plans strongly typed from the fp16
graphs, the one way TensorRT 11 builds them).

Equality (exit status 1 if any check fails), all through export.verify.verify_engine, which
`ctrt export` uses: >= 20 segments on two streams (real text and random ids), scored whole and
in irregular chunks with the streams one token apart (different positions in one batch);
logits, memory contents and counts against the fp32 eager model on the CPU, and bits per byte
on the text stream; tolerances from export/tolerances.py (fp32: 1e-4 of the logit scale; fp16:
3e-2 of it and 1e-2 bits per byte). Eager PyTorch on CUDA (TF32 off) is compared with eager on
the CPU by the fp32 rule too.

Timing, median ms per call over interleaved repeats, CUDA-synchronized, at batch 1 and 8:
  - engine call: one `segment` call (L tokens per stream, memory rotation) and one `extend`
    call with T = 1 (a decode step). Eager PyTorch runs export.step's cached steps (the same
    computation the graphs were traced from) on CUDA tensors; the runtime backends run
    `Backend.run` on device buffers. Both leave every output on the device and include no
    host copy and no runtime scheduling.
  - session feed: `Session.feed` of one segment per stream, including the runtime's
    scheduling and the copy of the logits to the host; eager: the segment step plus `.cpu()`
    of its logits.
Backends run when importable: ONNX Runtime CUDA (onnxruntime-gpu), native TensorRT (10.x or
11.x with cuda-python). What was skipped, and why, is printed and written to the JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from compressive_rt.errors import BackendUnavailable, EngineError
from compressive_rt.export.onnx_export import example_tensor
from compressive_rt.export.pipeline import export_model
from compressive_rt.export.step import build_steps
from compressive_rt.export.tolerances import RELATIVE_TOLERANCE
from compressive_rt.export.verify import verify_engine
from compressive_rt.runtime.backends.base import Backend
from compressive_rt.runtime.contract import entry_points
from compressive_rt.runtime.manifest import load_manifest
from compressive_rt.runtime.session import Session

BATCHES = (1, 8)
SEGMENTS = 20
REPEATS = 30


def train_or_load(checkpoint: str | None, out_dir: Path, minutes: float):
    """(model in eval mode on the CPU, where it came from)."""
    if checkpoint:
        from compressive_rt.ct_reference.checkpoint import load_model

        model, _ = load_model(checkpoint)
        return model.eval(), f"checkpoint {checkpoint}"
    from compressive_rt.ct_reference.config import PRESETS
    from compressive_rt.ct_reference.train import TrainOptions, train

    outcome = train(TrainOptions(config=PRESETS["tiny"], out=str(out_dir / "checkpoint"),
                                 minutes=minutes, steps=100_000, batch=8, warmup_steps=100,
                                 lr=1e-3, val_every=200, progress=False), log=lambda *_: None)
    last = outcome.history[-1]["val_bpb"] if outcome.history else float("nan")
    return outcome.model.eval(), (f"preset tiny trained {minutes:g} min on the CPU: "
                                  f"{outcome.step} steps, validation {last:.3f} bits per byte")


def environment() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
        info["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        info["onnxruntime"] = None
    try:
        import tensorrt

        info["tensorrt"] = tensorrt.__version__
    except ImportError:
        info["tensorrt"] = None
    return info


def backend_factories(fp32_dir: Path, fp16_dir: Path, skipped: dict) -> dict:
    """name -> (engine dir, precision, factory) for every GPU backend that can start here."""
    from compressive_rt.runtime.backends.ort_gpu import OrtCudaBackend
    from compressive_rt.runtime.backends.tensorrt import TensorRTBackend

    candidates = {
        "onnxruntime-cuda fp32": (fp32_dir, "fp32", lambda: OrtCudaBackend(
            load_manifest(fp32_dir), max_batch=max(BATCHES))),
        "tensorrt fp32": (fp32_dir, "fp32", lambda: TensorRTBackend(
            load_manifest(fp32_dir), precision="fp32")),
        "tensorrt fp16": (fp16_dir, "fp16", lambda: TensorRTBackend(
            load_manifest(fp16_dir), precision="fp16")),
    }
    ready = {}
    for name, (engine_dir, precision, make) in candidates.items():
        try:
            make().close()
        except (BackendUnavailable, EngineError) as exc:
            skipped[name] = str(exc)
            continue
        ready[name] = (engine_dir, precision, make)
    return ready


def build_plans(fp32_dir: Path, fp16_dir: Path, out_dir: Path, skipped: dict) -> None:
    from compressive_rt.export.tensorrt_build import build_engines

    cache = out_dir / "timing.cache"
    for engine_dir, precision in ((fp32_dir, "fp32"), (fp16_dir, "fp16")):
        try:
            build_engines(engine_dir, precision=precision, max_batch=max(BATCHES), opt_batch=1,
                          workspace_mib=8192, timing_cache=cache)
        except BackendUnavailable as exc:
            skipped[f"tensorrt {precision} build"] = str(exc)
            return


def eager_cuda_check(model, segments: int) -> dict:
    """Eager PyTorch on CUDA (TF32 off) against eager on the CPU: logits of two streams."""
    from compressive_rt.export.verify import verification_tokens

    tokens = torch.from_numpy(verification_tokens(model.config.vocab_size,
                                                  segments * model.config.seg_len))
    with torch.no_grad():
        want = model.score(tokens)[0].numpy()
        got = model.cuda().score(tokens.cuda())[0].cpu().numpy()
    model.cpu()
    scale = float(np.abs(want).max())
    error = float(np.abs(got - want).max())
    tolerance = RELATIVE_TOLERANCE["fp32"] * max(1.0, scale)
    return {"max_abs_error": error, "tolerance": tolerance, "logit_scale": scale,
            "passed": error <= tolerance}


def eager_calls(model, batch: int) -> dict[str, Callable[[], object]]:
    steps = {name: step.cuda() for name, step in build_steps(model).items()}
    contract = entry_points(model.config)

    def inputs(entry: str) -> tuple:
        return tuple(example_tensor(spec, batch, 1).cuda() for spec in contract[entry].inputs)

    segment_in, extend_in = inputs("segment"), inputs("extend")
    return {"segment call": lambda: steps["segment"](*segment_in),
            "decode call": lambda: steps["extend"](*extend_in),
            "segment feed": lambda: steps["segment"](*segment_in)[0].cpu()}


def runtime_calls(engine_dir: Path, backend: Backend, batch: int,
                  seg_len: int) -> dict[str, Callable[[], object]]:
    contract = load_manifest(engine_dir).contract

    def bound(entry: str) -> object:
        spec = contract[entry]
        feeds = {s.name: backend.allocate(s, batch, 1) for s in spec.inputs}
        fetches = {s.name: backend.allocate(s, batch, 1) for s in spec.outputs}
        return backend.bind(entry, feeds, fetches, 1 if entry == "extend" else None)

    segment, extend = bound("segment"), bound("extend")
    session = Session(engine_dir, backend=backend, max_streams=batch)
    rng = np.random.default_rng(1)
    tokens = {session.add_stream(): rng.integers(0, 256, seg_len) for _ in range(batch)}
    return {"segment call": lambda: backend.run(segment),
            "decode call": lambda: backend.run(extend),
            "segment feed": lambda: session.feed(tokens)}


def timings(model, ready: dict) -> list[dict]:
    """Median ms of each contender, the contenders interleaved within each batch size."""
    rows = []
    for batch in BATCHES:
        contenders = {"eager PyTorch CUDA": (eager_calls(model, batch), torch.cuda.synchronize)}
        backends = []
        for name, (engine_dir, _, make) in ready.items():
            backend = make()
            backends.append(backend)
            stream = getattr(backend, "stream", None)
            contenders[name] = (runtime_calls(engine_dir, backend, batch, model.config.seg_len),
                                stream.synchronize if stream is not None else (lambda: None))
        for kind in ("segment call", "decode call", "segment feed"):
            samples: dict[str, list[float]] = {name: [] for name in contenders}
            for repeat in range(REPEATS + 1):  # round-robin; repeat 0 is the warm-up
                for name, (calls, sync) in contenders.items():
                    begun = time.perf_counter()
                    calls[kind]()
                    sync()
                    if repeat:
                        samples[name].append((time.perf_counter() - begun) * 1e3)
            rows += [{"batch": batch, "what": kind, "contender": name,
                      "median_ms": statistics.median(ms), "min_ms": min(ms),
                      "max_ms": max(ms)} for name, ms in samples.items()]
        for backend in backends:
            backend.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--checkpoint", default=None, help="use this model instead of training")
    parser.add_argument("--train-minutes", type=float, default=1.0)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    args.out_dir.mkdir(parents=True, exist_ok=True)
    result: dict = {"environment": environment(), "checks": {}, "skipped": {}, "timings": []}
    print(json.dumps(result["environment"], indent=1))

    def stage(text: str) -> None:
        print(f"[{time.perf_counter() - started:.0f}s] {text}", flush=True)

    stage("model")
    model, origin = train_or_load(args.checkpoint, args.out_dir, args.train_minutes)
    result["model"] = origin
    print(f"  {origin}")
    fp32_dir, fp16_dir = args.out_dir / "engine_fp32", args.out_dir / "engine_fp16"
    stage("export fp32 and fp16 graphs (each verified on ONNX Runtime CPU)")
    export_model(model, fp32_dir, verify_segments=SEGMENTS, log=lambda *_: None)
    export_model(model, fp16_dir, verify_segments=SEGMENTS, precision="fp16",
                 log=lambda *_: None)
    stage("TensorRT plans")
    build_plans(fp32_dir, fp16_dir, args.out_dir, result["skipped"])
    if torch.cuda.is_available():
        result["checks"]["eager PyTorch CUDA fp32"] = eager_cuda_check(model, SEGMENTS)
    else:
        result["skipped"]["eager PyTorch CUDA"] = "torch sees no CUDA device"
    ready = backend_factories(fp32_dir, fp16_dir, result["skipped"])
    stage(f"equality over {SEGMENTS} segments, 2 streams: {', '.join(ready) or 'no GPU backend'}")
    for name, (engine_dir, precision, make) in ready.items():
        check = verify_engine(model, engine_dir, segments=SEGMENTS, precision=precision,
                              make_backend=make)
        result["checks"][name] = check.to_dict()
    for name, check in result["checks"].items():
        print(f"  {name:<26} {'ok' if check['passed'] else 'FAIL'}  "
              + ", ".join(f"{k} {v:.3g}" for k, v in check.items()
                          if isinstance(v, float)))
    for name, why in result["skipped"].items():
        print(f"  skipped {name}: {why}")
    if torch.cuda.is_available():
        stage("timings (median ms; see the module docstring for what each includes)")
        result["timings"] = timings(model, ready)
        for row in result["timings"]:
            print(f"  batch {row['batch']}  {row['what']:<13} {row['contender']:<26} "
                  f"{row['median_ms']:8.3f}")
    passed = bool(result["checks"]) and all(c["passed"] for c in result["checks"].values())
    result["passed"] = passed
    result["seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    stage("all checks passed" if passed else "FAILED (or nothing could be checked)")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
