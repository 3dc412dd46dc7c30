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
    "compressive_rt.cli.run", "compressive_rt.cli.serve", "compressive_rt.cli.store",
    "compressive_rt.cli.bench"]


class VersionAction(argparse.Action):
    """`ctrt --version`: the package and the versions of what it reads and writes (imported only
    when asked, so building the parser stays cheap)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="print the package version, the engine contract's, the snapshot "
                      "format's and the sampling version, and exit") -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(version_text())
        parser.exit()


def version_text() -> str:
    from importlib.metadata import version

    from compressive_rt.runtime.manifest import FORMAT_VERSION
    from compressive_rt.runtime.sampling import SAMPLING_VERSION
    from compressive_rt.runtime.snapshot import SNAPSHOT_FORMAT_VERSION

    return (f"ctrt {version('compressive-rt')} (engine contract v{FORMAT_VERSION}, snapshot "
            f"format {SNAPSHOT_FORMAT_VERSION}, sampling version {SAMPLING_VERSION})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctrt", description="Compressive Transformer: train, export, run, benchmark.")
    parser.add_argument("--version", action=VersionAction)
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
