"""`ctrt bench`: a thin shell over benchmarks.bench (torch and onnxruntime imported lazily)."""

from __future__ import annotations

import argparse
import os

from compressive_rt.cli.options import check_output_directory

DEFAULT_OUT = "bench_out"


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser(
        "bench", help="eager vs torch.compile vs cached steps vs the ONNX Runtime engine vs "
                      "compressive-transformer-pytorch",
        description="In one process, with the same model, inputs and thread count for every "
                    "contender, interleaved round-robin within each repeat: segment scoring, "
                    "per-token decoding and first-segment latency with full memory, against the "
                    "machine's measured GEMM rate and bandwidth; the same model built in "
                    "compressive-transformer-pytorch and imported; a serving curve (tokens/s "
                    "against concurrent requests); capacity independence; runtime loop "
                    "overhead; a scaling grid, a Transformer-XL comparison, ONNX Runtime option "
                    "variants and int8 quantization. Writes bench.json and bench.png to --out, "
                    "prints a table and each target as met or missed.")
    bench.add_argument("--quick", action="store_true",
                       help="small config and grid, few repeats")
    bench.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    bench.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                       help="threads for torch and ONNX Runtime alike (default: all cores)")
    bench.add_argument("--checkpoint", metavar="DIR",
                       help="benchmark this checkpoint instead of random weights")
    bench.add_argument("--quality", action="store_true",
                       help="instead of speed: the quality experiment (benchmarks/quality.py), "
                            "held-out bits/byte of each compression function vs Transformer-XL "
                            "at equal span, written to <--out>/quality")
    bench.add_argument("--recall", action="store_true",
                       help="instead of speed: the recall experiment (benchmarks/recall.py), "
                            "value recall against distance for the Compressive Transformer, "
                            "a pooling variant and Transformer-XLs of equal span and range, "
                            "eager and through the engine, written to <--out>/recall "
                            "(--quick: seconds, a pipeline check)")
    bench.add_argument("--serve", action="store_true",
                       help="instead of the engine's speed: ctrt serve on loopback beside the "
                            "in-process scheduler (concurrent streaming clients, a long-lived "
                            "stream's spill and resume, a burst against a small queue), "
                            "written to <--out>/serve.json (benchmarks/serve.py)")
    bench.add_argument("--ray", action="store_true",
                       help="instead of the engine's speed: the shared Redis store (the cost "
                            "of appendfsync always), moving a stream between servers, failover "
                            "and 1 vs 2 replicas on a local Ray cluster, written to "
                            "<--out>/ray.json (benchmarks/ray_serve.py; needs the ray extra and "
                            "redis-server)")
    training = bench.add_argument_group("training experiments (--quality, --recall)")
    training.add_argument("--steps", type=int, help="training steps per run (default: quality "
                          "60, recall 8000, recall --quick 12)")
    training.add_argument("--seeds", type=int, help="seeds per model (default: quality 1, "
                          "recall 2, recall --quick 1)")
    training.add_argument("--jobs", type=int, default=1,
                          help="runs trained at once, one process and one torch thread each "
                               "(default 1)")
    training.add_argument("--distances", type=_distances, metavar="D,D,...",
                          help="recall: the distances scored (default: one per regime of the "
                               "model's reach, see benchmarks/recall.py)")
    bench.set_defaults(handler=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    if args.quality:
        from compressive_rt.benchmarks.quality import QualitySettings, run_quality

        defaults = QualitySettings()
        run_quality(QualitySettings(steps=defaults.steps if args.steps is None else args.steps,
                                    seeds=defaults.seeds if args.seeds is None else args.seeds,
                                    jobs=args.jobs), Path(args.out) / "quality")
        return 0
    if args.recall:
        from compressive_rt.benchmarks.recall import recall_settings, run_recall

        settings, base = recall_settings(args.quick, args.steps, args.seeds, args.jobs,
                                         args.distances)
        run_recall(settings, Path(args.out) / "recall", base)
        return 0
    check_output_directory(args.out)
    if args.ray:
        from compressive_rt.benchmarks.ray_serve import run_ray_benchmark

        run_ray_benchmark(Path(args.out), args.threads, "quick" if args.quick else "full")
        return 0
    if args.serve:
        from compressive_rt.benchmarks.serve import run_serve_benchmark

        run_serve_benchmark(Path(args.out), args.threads, "quick" if args.quick else "full")
        return 0
    from compressive_rt.benchmarks.bench import run_benchmark

    run_benchmark(quick=args.quick, out_dir=Path(args.out), threads=args.threads,
                  checkpoint=Path(args.checkpoint) if args.checkpoint else None)
    return 0


def _distances(text: str) -> tuple[int, ...]:
    try:
        distances = tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") \
            from None
    if not distances or min(distances) < 1:
        raise argparse.ArgumentTypeError(f"distances must be positive, got {text!r}")
    return distances
