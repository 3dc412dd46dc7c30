"""`ctrt score` and `ctrt generate`: thin shells over runtime.score and runtime.generate.

Only argparse at import time: these commands never import torch."""

from __future__ import annotations

import argparse
import sys

from compressive_rt.cli.options import check_options, read_file_argument
from compressive_rt.errors import RuntimeInputError


def _add_engine_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("engine_dir", help="directory written by `ctrt export` (manifest.json)")
    parser.add_argument("--backend", default="auto",
                        help="auto (best available, printed), onnxruntime-cpu, "
                             "onnxruntime-cuda, onnxruntime-tensorrt, tensorrt")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for the engine (default: all cores)")
    parser.add_argument("--prepack", choices=("all", "decode", "none"), default="all",
                        help="ONNX Runtime CPU: which graphs re-lay their weights out for speed, "
                             "each in its own copy: all (default, fastest), decode (only the "
                             "decoding graph), none (one copy of the weights: least memory, "
                             "~1.2x slower steps)")


class _AppendPrompt(argparse.Action):
    """--prompt and --prompt-file append ("text" | "file", value) to one list, in order."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                  values: str, option_string: str | None = None) -> None:
        kind = "file" if option_string == "--prompt-file" else "text"
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest) or []), (kind, values)])


def register(subparsers: argparse._SubParsersAction) -> None:
    score = subparsers.add_parser(
        "score", help="bits per byte of documents through the compiled engine",
        description="Stream each document (any length) through the engine with memory and "
                    "print bits per byte per document and in total. The first byte of a "
                    "document has no prediction (there is no start token), so an empty or "
                    "one-byte document's bits per byte is undefined: n/a (JSON null).")
    _add_engine_args(score)
    score.add_argument("files", nargs="+", help="documents to score (read as bytes)")
    score.add_argument("--streams", type=int, default=4,
                       help="documents scored at once, one stream each (default 4)")
    score.add_argument("--json", action="store_true", help="print one JSON object, no bar")
    score.set_defaults(handler=run_score)

    gen = subparsers.add_parser(
        "generate", help="generate text after one or more prompts with the compiled engine",
        description="Absorb each prompt segment by segment, then decode one byte per step "
                    "(keys/values of the memory are cached, never recomputed). Several prompts "
                    "run at once with continuous batching: up to --streams share each engine "
                    "call, the rest wait and take the stream of the first that finishes. One "
                    "prompt streams its text to stdout; several print each text under a header "
                    "when it finishes; --json prints one object with every request in prompt "
                    "order. An empty prompt is refused: the model has no start-of-text token.")
    _add_engine_args(gen)
    gen.add_argument("--prompt", dest="prompts", action=_AppendPrompt, metavar="TEXT",
                     help="prompt text (repeatable; prompts run in the order given)")
    gen.add_argument("--prompt-file", dest="prompts", action=_AppendPrompt, metavar="PATH",
                     help="file whose bytes are a prompt (repeatable, mixes with --prompt)")
    gen.add_argument("--streams", type=int, default=None,
                     help="requests decoded at once, one stream each "
                          "(default: the number of prompts, at most 8)")
    gen.add_argument("--max-new-tokens", type=int, default=200,
                     help="bytes to generate per prompt (default 200)")
    gen.add_argument("--greedy", action="store_true", help="argmax decoding")
    gen.add_argument("--temperature", type=float, default=1.0, help="default 1.0")
    gen.add_argument("--top-k", type=int, default=0, help="keep the k most likely (0: off)")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus mass (1.0: off)")
    gen.add_argument("--seed", type=int, default=None,
                     help="sampling seed; each prompt samples with its own generator seeded "
                          "with it, so its text does not depend on the other prompts")
    gen.add_argument("--stop", action="append", default=[],
                     help="stop a request after this string is generated (repeatable)")
    gen.add_argument("--json", action="store_true",
                     help='print one JSON object: {"requests": [{"prompt", "text", "tokens", '
                          '"finish_reason"}, ...]} in prompt order, plus the settings')
    gen.set_defaults(handler=run_generate)


def _open_session(args: argparse.Namespace, max_streams: int):
    from compressive_rt.runtime.session import Session

    session = Session(args.engine_dir, backend=args.backend, max_streams=max_streams,
                      threads=args.threads, prepack=args.prepack)
    print(f"backend: {session.backend.name}", file=sys.stderr)
    return session


def _bpb_text(bits_per_byte: float | None) -> str:
    return "n/a" if bits_per_byte is None else f"{bits_per_byte:.4f}"


def run_score(args: argparse.Namespace) -> int:
    import json

    from compressive_rt.progress import progress_bar
    from compressive_rt.runtime.score import score_documents, total_bits_per_byte

    check_options(args, {"threads": 1, "streams": 1})
    documents = [(name, read_file_argument(name, "document")) for name in args.files]
    session = _open_session(args, max(1, min(args.streams, len(documents))))
    total = sum(len(data) for _, data in documents)
    with progress_bar(total=total, unit="B", unit_scale=True, disable=args.json) as bar:
        scores = score_documents(session, documents, on_tokens=bar.update)
    overall = total_bits_per_byte(scores)
    if args.json:
        print(json.dumps({"backend": session.backend.name, "bits_per_byte": overall,
                          "documents": [{"file": s.name, "bytes": s.n_bytes, "bits": s.bits,
                                         "bits_per_byte": s.bits_per_byte} for s in scores]}))
    else:
        for s in scores:
            print(f"{_bpb_text(s.bits_per_byte):>8} bpb  {s.n_bytes:>10} bytes  {s.name}")
        print(f"{_bpb_text(overall):>8} bpb  {total:>10} bytes  total")
        if any(s.bits_per_byte is None for s in scores):
            print("n/a: fewer than two bytes, so no byte is predicted (there is no start token)")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from compressive_rt.runtime.sampling import Sampling
    from compressive_rt.runtime.scheduler import Completion, Scheduler, TokenEvent

    prompts = [value.encode() if kind == "text" else read_file_argument(value, "prompt file")
               for kind, value in args.prompts or []]
    if not prompts:
        raise RuntimeInputError("no prompt given: add --prompt TEXT or --prompt-file PATH "
                                "(each repeatable)")
    check_options(args, {"threads": 1, "streams": 1})
    sampling = Sampling(greedy=args.greedy, temperature=args.temperature, top_k=args.top_k,
                        top_p=args.top_p, seed=args.seed)
    streams = args.streams or min(len(prompts), 8)
    session = _open_session(args, streams)
    one_streamed = len(prompts) == 1 and not args.json
    headers = len(prompts) > 1 and not args.json

    def show(number: int, completion: Completion) -> None:
        prompt = completion.prompt.decode("utf-8", errors="replace")
        print(f"=== request {number}/{len(prompts)}: {len(completion.tokens)} bytes "
              f"({completion.finish_reason}) after prompt {prompt[:60]!r} ===")
        print(completion.text, flush=True)

    def stream_text(event: TokenEvent) -> None:
        sys.stdout.write(event.text)
        sys.stdout.flush()

    with Scheduler(session) as scheduler:
        ids = []
        for prompt in prompts:
            try:
                ids.append(scheduler.submit(prompt, args.max_new_tokens, sampling, args.stop,
                                            on_token=stream_text if one_streamed else None))
            except RuntimeInputError as exc:
                raise RuntimeInputError(f"prompt {len(ids) + 1} of {len(prompts)}: {exc}") \
                    from None
        number = {request_id: i for i, request_id in enumerate(ids, 1)}
        for request_id in ids:  # finished at submission: nothing to generate
            if headers and scheduler.result(request_id).finish_reason:
                show(number[request_id], scheduler.result(request_id))
        for event in scheduler.run():
            if headers and event.finished:
                show(number[event.request_id], scheduler.result(event.request_id))
        results = [scheduler.result(request_id) for request_id in ids]
    if args.json:
        print(json.dumps({
            "backend": session.backend.name, "streams": streams,
            "max_new_tokens": args.max_new_tokens, "sampling": asdict(sampling),
            "stop": args.stop,
            "requests": [{"prompt": r.prompt.decode("utf-8", errors="replace"), "text": r.text,
                          "tokens": list(r.tokens), "finish_reason": r.finish_reason}
                         for r in results]}))
    elif one_streamed:
        sys.stdout.write("\n")
    return 0
