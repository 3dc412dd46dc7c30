"""`ctrt score` and `ctrt generate`: thin shells over runtime.score and runtime.generate.

Only argparse at import time: these commands never import torch."""

from __future__ import annotations

import argparse
import sys


def _add_engine_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("engine_dir", help="directory written by `ctrt export` (manifest.json)")
    parser.add_argument("--backend", default="auto",
                        help="auto (best available, printed), onnxruntime-cpu, "
                             "onnxruntime-cuda, onnxruntime-tensorrt, tensorrt")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for the engine (default: all cores)")


def register(subparsers: argparse._SubParsersAction) -> None:
    score = subparsers.add_parser(
        "score", help="bits per byte of documents through the compiled engine",
        description="Stream each document (any length) through the engine with memory and "
                    "print bits per byte per document and in total.")
    _add_engine_args(score)
    score.add_argument("files", nargs="+", help="documents to score (read as bytes)")
    score.add_argument("--streams", type=int, default=4,
                       help="documents scored at once, one stream each (default 4)")
    score.add_argument("--json", action="store_true", help="print one JSON object, no bar")
    score.set_defaults(handler=run_score)

    gen = subparsers.add_parser(
        "generate", help="generate text after a prompt with the compiled engine",
        description="Absorb the prompt segment by segment, then decode one byte per step "
                    "(keys/values of the memory are cached, never recomputed) and stream the "
                    "text to stdout.")
    _add_engine_args(gen)
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="prompt text")
    source.add_argument("--prompt-file", help="file whose bytes are the prompt")
    gen.add_argument("--max-new-tokens", type=int, default=200, help="default 200")
    gen.add_argument("--greedy", action="store_true", help="argmax decoding")
    gen.add_argument("--temperature", type=float, default=1.0, help="default 1.0")
    gen.add_argument("--top-k", type=int, default=0, help="keep the k most likely (0: off)")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus mass (1.0: off)")
    gen.add_argument("--seed", type=int, default=None, help="sampling seed")
    gen.add_argument("--stop", action="append", default=[],
                     help="stop after this string is generated (repeatable)")
    gen.set_defaults(handler=run_generate)


def _open_session(args: argparse.Namespace, max_streams: int):
    from runtime.session import RuntimeInputError, Session

    if args.threads is not None and args.threads < 1:
        raise RuntimeInputError(f"--threads must be >= 1, got {args.threads}")

    session = Session(args.engine_dir, backend=args.backend, max_streams=max_streams,
                      threads=args.threads)
    print(f"backend: {session.backend.name}", file=sys.stderr)
    return session


def run_score(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from tqdm import tqdm

    from runtime.score import score_documents, total_bits_per_byte
    from runtime.session import RuntimeInputError

    if args.streams < 1:
        raise RuntimeInputError(f"--streams must be >= 1, got {args.streams}")
    documents = []
    for name in args.files:
        path = Path(name)
        if not path.is_file():
            raise RuntimeInputError(f"{path} is not a readable file")
        documents.append((name, path.read_bytes()))
    session = _open_session(args, max(1, min(args.streams, len(documents))))
    total = sum(len(data) for _, data in documents)
    with tqdm(total=total, unit="B", unit_scale=True, disable=args.json or None,
              file=sys.stderr) as bar:
        scores = score_documents(session, documents, on_tokens=bar.update)
    overall = total_bits_per_byte(scores)
    if args.json:
        print(json.dumps({"backend": session.backend.name, "bits_per_byte": overall,
                          "documents": [{"file": s.name, "bytes": s.n_bytes, "bits": s.bits,
                                         "bits_per_byte": s.bits_per_byte} for s in scores]}))
    else:
        for s in scores:
            print(f"{s.bits_per_byte:8.4f} bpb  {s.n_bytes:>10} bytes  {s.name}")
        print(f"{overall:8.4f} bpb  {total:>10} bytes  total")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from runtime.generate import Sampling, generate
    from runtime.session import RuntimeInputError

    if args.prompt_file:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise RuntimeInputError(f"prompt file {path} is not a readable file")
        prompt = path.read_bytes()
    else:
        prompt = args.prompt.encode()
    sampling = Sampling(greedy=args.greedy, temperature=args.temperature, top_k=args.top_k,
                        top_p=args.top_p, seed=args.seed)
    session = _open_session(args, 1)

    def emit(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    generate(session, prompt, args.max_new_tokens, sampling, stop=args.stop, on_text=emit)
    sys.stdout.write("\n")
    return 0
