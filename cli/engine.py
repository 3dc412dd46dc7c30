"""`ctrt export`, `ctrt inspect`, `ctrt build-engine`: thin shells over the export library."""

from __future__ import annotations

import argparse

from compressive_rt.errors import CtrtError


def register(subparsers: argparse._SubParsersAction) -> None:
    exp = subparsers.add_parser(
        "export", help="checkpoint -> verified ONNX engine directory",
        description="Write one ONNX graph per entry point (segment, extend, commit) and "
                    "manifest.json to OUT_DIR, after checking the graphs in ONNX Runtime "
                    "against the eager model (refuses, writing nothing, when they differ).")
    exp.add_argument("checkpoint", help="checkpoint directory (from `ctrt train`)")
    exp.add_argument("out_dir", help="engine directory to write (replaced if it holds one)")
    exp.add_argument("--verify-segments", type=int, default=20,
                     help="segments compared with the eager model (default 20, minimum 20)")
    exp.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32",
                     help="fp32 (default; max |logit error| <= 1e-4 of the logit scale), "
                          "fp16 weights and activations for GPU targets (fp32 inputs/outputs, "
                          "LayerNorm and Softmax in fp32; verified to 3e-2 of the logit scale "
                          "and 1e-2 bits per byte), "
                          "or int8 MatMul weights for CPUs (ONNX Runtime dynamic quantization; "
                          "verified to 1e-1 of the logit scale and 0.02 bits per byte)")
    exp.set_defaults(handler=run_export)

    build = subparsers.add_parser(
        "build-engine", help="build TensorRT plans from an exported engine directory (GPU)",
        description="Build one serialized TensorRT engine per entry point with a batch "
                    "profile (min 1, opt, max) and record it in manifest.json. Needs an NVIDIA "
                    "GPU and pip install 'compressive-rt[gpu]'.")
    build.add_argument("engine_dir")
    build.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default=None,
                       help="plan precision (default: the graphs' own, fp32 or fp16; TensorRT "
                            "11 builds only that, TensorRT 10 also fp16/bf16 from fp32 graphs)")
    build.add_argument("--max-batch", type=int, default=8, help="largest batch (default 8)")
    build.add_argument("--opt-batch", type=int, default=1, help="batch tuned for (default 1)")
    build.add_argument("--workspace", type=int, default=4096, help="workspace MiB (4096)")
    build.add_argument("--timing-cache", default=None, help="timing cache file to reuse/update")
    build.set_defaults(handler=run_build_engine)

    ins = subparsers.add_parser(
        "inspect", help="manifest, op histogram, parameters and TensorRT lint of an engine dir")
    ins.add_argument("engine_dir")
    ins.set_defaults(handler=run_inspect)


def run_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from compressive_rt.ct_reference.checkpoint import checkpoint_sha256, load_model
    from compressive_rt.export.pipeline import export_model

    if args.verify_segments < 20:
        raise CtrtError(f"--verify-segments must be >= 20, got {args.verify_segments}")
    model, _ = load_model(args.checkpoint)
    checkpoint = {"path": str(Path(args.checkpoint).resolve()),
                  "sha256": checkpoint_sha256(args.checkpoint)}
    manifest = export_model(model, args.out_dir, checkpoint=checkpoint,
                            verify_segments=args.verify_segments, precision=args.precision)
    check = manifest["verification"]
    print(f"wrote {args.out_dir} ({manifest['precision']}): max |logit error| segment "
          f"{check['segment_max_abs_error']:.2e}"
          f", extend {check['extend_max_abs_error']:.2e} (tolerance {check['tolerance']:.2e}, "
          f"logit scale {check['logit_scale']:.2f})")
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from compressive_rt.export.inspection import inspect_engine_dir

    print(inspect_engine_dir(args.engine_dir))
    return 0


def run_build_engine(args: argparse.Namespace) -> int:
    from compressive_rt.export.tensorrt_build import build_engines

    if args.max_batch < 1:
        raise CtrtError(f"--max-batch must be >= 1, got {args.max_batch}")
    if not 1 <= args.opt_batch <= args.max_batch:
        raise CtrtError(f"--opt-batch must be in [1, --max-batch={args.max_batch}], got "
                        f"{args.opt_batch}")
    if args.workspace < 1:
        raise CtrtError(f"--workspace must be >= 1 MiB, got {args.workspace}")

    build_engines(args.engine_dir, precision=args.precision, max_batch=args.max_batch,
                  opt_batch=args.opt_batch, workspace_mib=args.workspace,
                  timing_cache=args.timing_cache)
    return 0
