"""`ctrt train`, `ctrt eval`, `ctrt demo`: thin shells over ct_reference (torch imported lazily);
the demo's later stages run export and the runtime."""

from __future__ import annotations

import argparse

from compressive_rt.cli.options import check_options, check_output_directory
from compressive_rt.ct_reference.config import (
    AUX_LOSSES,  # pure Python: the parser stays torch-free
)
from compressive_rt.errors import CtrtError

DEFAULT_DEMO_OUT = "demo_out/checkpoint"


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train", help="train a Compressive Transformer on bytes and save a checkpoint",
        description="Train on a byte-level corpus (default: this Python's standard library .py "
                    "files) with memory carried across segments, validate periodically in bits "
                    "per byte, stop at --steps or --minutes (whichever comes first) and save a "
                    "checkpoint directory. --resume restores weights, optimizer, step and data "
                    "position; the carried memory restarts empty.")
    add_data_arguments(train)
    train.add_argument("--out", default="checkpoints/ct", help="checkpoint directory to write "
                       "(replaced atomically; default checkpoints/ct)")
    train.add_argument("--preset", default="default", help="model preset: default or tiny")
    train.add_argument("--config", help="JSON file or inline JSON object of ModelConfig fields "
                       "that override the preset, e.g. '{\"compress_fn\": \"mean_pool\"}'")
    train.add_argument("--steps", type=int, default=20000,
                       help="optimizer steps; also the length of the learning-rate schedule "
                            "(default 20000)")
    train.add_argument("--minutes", type=float, help="stop after this many minutes")
    train.add_argument("--batch", type=int, default=8, help="streams per batch (default 8)")
    train.add_argument("--seed", type=int, default=0, help="initialisation seed (default 0)")
    train.add_argument("--resume", metavar="DIR", help="continue from this checkpoint (its "
                       "config wins; memory restarts empty)")
    train.add_argument("--val-every", type=int, default=100,
                       help="validate every K steps (default 100; 0: only at the end)")
    train.add_argument("--val-segments", type=int, default=16,
                       help="validation length in segments per stream (default 16, 4 streams)")
    train.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (default 3e-4)")
    train.add_argument("--warmup", type=int, help="warm-up steps (default 5%% of --steps, "
                       "at most 1000)")
    train.add_argument("--aux-weight", type=float, default=1.0,
                       help="weight of the compression losses (default 1.0)")
    train.add_argument("--aux-loss", choices=AUX_LOSSES,
                       help="compression loss that trains f_c: attention reconstruction, "
                            "auto-encoding (conv/dilated_conv; adds a learned decoder that is "
                            "saved but never exported), both summed, or none (default: the "
                            "preset's, attention, the paper's best)")
    train.set_defaults(handler=run_train)

    evaluate = subparsers.add_parser(
        "eval", help="bits per byte of a checkpoint on a document",
        description="Stream FILE (default: the held-out validation split of the default "
                    "corpus) through the model segment by segment with memory and report bits "
                    "per byte.")
    evaluate.add_argument("checkpoint", help="checkpoint directory")
    evaluate.add_argument("file", nargs="?", help="text file to score")
    evaluate.add_argument("--max-segments", type=int,
                          help="score at most this many segments (default: all)")
    evaluate.set_defaults(handler=run_eval)

    demo = subparsers.add_parser(
        "demo", help="train a tiny model, export it, score and generate with the runtime",
        description="Stages: train (preset tiny on the default corpus), evaluate on held-out "
                    "data, export to ONNX next to the checkpoint (verified, with the "
                    "checkpoint's SHA-256 in the manifest), score a held-out file that no "
                    "earlier stage read with the eager model and the runtime, generate a "
                    "sample. Prints the numbers of every stage.")
    demo.add_argument("--minutes", type=float, default=3.0, help="training time (default 3)")
    demo.add_argument("--out", default=DEFAULT_DEMO_OUT,
                      help=f"checkpoint directory (default {DEFAULT_DEMO_OUT})")
    demo.add_argument("--data", help="text file or folder (default: standard library .py files)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=run_demo)


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="PATH", help="text file or folder (all files, "
                        "recursively); default: the standard library's .py files")


def parse_config(preset: str, override: str | None):
    """The ModelConfig of a preset name plus JSON overrides (a file path or an inline object)."""
    import json
    from pathlib import Path

    from compressive_rt.ct_reference.config import PRESETS

    if preset not in PRESETS:
        raise CtrtError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    config = PRESETS[preset]
    if override is None:
        return config
    text, source = override, "--config"
    if not override.lstrip().startswith("{"):
        path = Path(override)
        if not path.exists():
            raise CtrtError(f"config file {path} does not exist")
        if not path.is_file():
            raise CtrtError(f"config file {path} is not a file")
        text, source = path.read_bytes(), str(path)
    try:
        fields = json.loads(text)
    except ValueError as exc:
        raise CtrtError(f"{source} is not valid JSON ({exc})") from exc
    if not isinstance(fields, dict):
        raise CtrtError(f"{source} must be a JSON object of ModelConfig fields")
    return config.from_dict({**config.to_dict(), **fields})


def run_train(args: argparse.Namespace) -> int:
    check_options(args, {"steps": 1, "batch": 1, "val_every": 0, "val_segments": 1,
                         "warmup": 0, "aux_weight": 0}, positive=("minutes", "lr"))
    check_output_directory(args.out)
    config = parse_config(args.preset, args.config)
    if args.aux_loss is not None:
        if args.resume:
            raise CtrtError(f"--aux-loss cannot change a resumed run ({args.resume} keeps the "
                            f"aux_loss of its config.json); drop --aux-loss or train afresh")
        config = config.replace(aux_loss=args.aux_loss)
    from compressive_rt.ct_reference.train import TrainOptions, train

    train(TrainOptions(config=config, data=args.data, out=args.out, steps=args.steps,
                       minutes=args.minutes, batch=args.batch, seed=args.seed,
                       resume=args.resume, lr=args.lr, warmup_steps=args.warmup,
                       aux_weight=args.aux_weight, val_every=args.val_every,
                       val_segments=args.val_segments))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    import numpy as np

    from compressive_rt.ct_reference.checkpoint import load_model
    from compressive_rt.ct_reference.data import bits_per_byte, read_documents, split_documents

    check_options(args, {"max_segments": 1})
    model, _ = load_model(args.checkpoint)
    if args.file:
        tokens = np.frombuffer(b"".join(read_documents(args.file)), dtype=np.uint8)
        source = args.file
    else:
        tokens = split_documents(read_documents(None))[1]
        source = "validation split of the default corpus"
    bpb = bits_per_byte(model, tokens, max_segments=args.max_segments)
    print(f"{source}: {bpb:.4f} bits/byte")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """The demo as named stages; each takes and extends a shared `results` dict."""
    check_options(args, {}, positive=("minutes",))
    check_output_directory(args.out)
    results: dict = {"args": args}
    for stage in DEMO_STAGES:
        stage(results)
    return 0


def demo_train(results: dict) -> None:
    from compressive_rt.ct_reference.config import PRESETS
    from compressive_rt.ct_reference.train import TrainOptions, train

    args = results["args"]
    print(f"== demo: train (preset tiny, {args.minutes:g} minutes)")
    options = TrainOptions(config=PRESETS["tiny"], data=args.data, out=args.out,
                           minutes=args.minutes, steps=100_000, batch=8, seed=args.seed,
                           warmup_steps=100, lr=1e-3, val_every=200)
    outcome = train(options)
    results["checkpoint"] = outcome.checkpoint
    results["train"] = outcome
    results["train_options"] = options


DEMO_EVAL_SEGMENTS = 64


def demo_evaluate(results: dict) -> None:
    from compressive_rt.ct_reference.data import bits_per_byte, read_documents, split_documents

    outcome = results["train"]
    validation = split_documents(read_documents(results["args"].data))[1]
    print("== demo: evaluate (held-out documents, one stream, memory carried)")
    bpb = bits_per_byte(outcome.model, validation, batch=1, max_segments=DEMO_EVAL_SEGMENTS)
    first = outcome.history[0]["val_bpb"]
    print(f"validation bits/byte: {first:.3f} before training -> {bpb:.3f} after "
          f"{outcome.step} steps ({outcome.tokens_seen} tokens); checkpoint {outcome.checkpoint}")
    results["val_bpb"] = bpb
    results["validation_bytes"] = len(validation)


def demo_export(results: dict) -> None:
    from pathlib import Path

    from compressive_rt.ct_reference.checkpoint import checkpoint_sha256
    from compressive_rt.export.pipeline import export_model

    engine_dir = Path(results["args"].out).parent / "engine"
    print(f"== demo: export to {engine_dir} (ONNX, verified against the eager model)")
    checkpoint = results["checkpoint"]
    manifest = export_model(results["train"].model, engine_dir, checkpoint={
        "path": str(Path(checkpoint).resolve()), "sha256": checkpoint_sha256(checkpoint)})
    check = manifest["verification"]
    print(f"max |logit error| over {check['segments']} segments: segment graph "
          f"{check['segment_max_abs_error']:.2e}, extend+commit "
          f"{check['extend_max_abs_error']:.2e}")
    results["engine_dir"] = engine_dir


def demo_score(results: dict) -> None:
    from compressive_rt.ct_reference.data import (
        bits_per_byte,
        scored_stream_length,
        unread_held_out_document,
    )
    from compressive_rt.runtime.score import score_documents
    from compressive_rt.runtime.session import Session

    model, options = results["train"].model, results["train_options"]
    seg_len = model.config.seg_len
    # what the earlier stages read of the validation split: training's periodic validation
    # (val_batch contiguous streams from its start) and the evaluate stage (one stream)
    n_validation = results["validation_bytes"]
    read_bytes = max(
        options.val_batch * scored_stream_length(n_validation, seg_len, options.val_batch,
                                                 options.val_segments),
        scored_stream_length(n_validation, seg_len, 1, DEMO_EVAL_SEGMENTS)) + 1
    name, document = unread_held_out_document(results["args"].data, read_bytes,
                                              min_bytes=16 * seg_len + 1)
    document = document[:DEMO_EVAL_SEGMENTS * seg_len + 1]
    print(f"== demo: score {name} ({len(document)} bytes), eager vs runtime: a held-out file "
          f"that neither training nor its validation nor the evaluate stage read")
    eager = bits_per_byte(model, document, batch=1)
    session = Session(results["engine_dir"])
    runtime = score_documents(session, [(name, document.tobytes())])[0].bits_per_byte
    print(f"bits/byte: eager PyTorch {eager:.6f}, runtime ({session.backend.name}) "
          f"{runtime:.6f}, difference {abs(eager - runtime):.2e}")


def demo_generate(results: dict) -> None:
    import sys

    from compressive_rt.runtime.generate import generate
    from compressive_rt.runtime.sampling import Sampling
    from compressive_rt.runtime.session import Session

    prompt = b"def "
    print("== demo: generate 300 bytes after 'def ' (runtime, top-k 20, seed 0)")
    sys.stdout.write(prompt.decode())
    generate(Session(results["engine_dir"]), prompt, 300, Sampling(top_k=20, seed=0),
             on_text=lambda text: (sys.stdout.write(text), sys.stdout.flush()))
    print()


DEMO_STAGES = [demo_train, demo_evaluate, demo_export, demo_score, demo_generate]
