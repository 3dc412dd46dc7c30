"""`ctrt`: one console command, a thin shell over the subcommand modules.

Each module in COMMAND_MODULES imports only argparse at top level and exposes
`register(subparsers)`, which adds its subcommands with a `handler(args) -> int`. Heavy
imports (torch, onnxruntime) happen inside handlers, so `ctrt --help` is fast and runtime
commands never import torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from compressive_rt.errors import CtrtError

# What only the `train` extra installs: a command that needs one of these in a plain install
# says so instead of a traceback.
TRAIN_EXTRA = {"torch", "safetensors", "matplotlib", "onnxconverter_common", "onnxslim",
               "compressive_transformer_pytorch"}

COMMAND_MODULES = [
    "compressive_rt.cli.train", "compressive_rt.cli.import_checkpoint", "compressive_rt.cli.engine",
    "compressive_rt.cli.run", "compressive_rt.cli.serve", "compressive_rt.cli.bench"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctrt", description="Compressive Transformer: train, export, run, benchmark.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except CtrtError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in TRAIN_EXTRA:
            raise
        print(f"error: ctrt {args.command} needs {exc.name}, which a plain install leaves out: "
              f"pip install 'compressive-rt[train]'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
