"""Argument checks shared by the commands: each refuses a bad value before any work starts."""

from __future__ import annotations

import argparse
from pathlib import Path

from compressive_rt.errors import CtrtError, RuntimeInputError


def check_options(args: argparse.Namespace, at_least: dict[str, float],
                  positive: tuple[str, ...] = ()) -> None:
    """Refuse option values out of range before any work starts: `at_least` maps an option
    (its argparse dest) to its smallest value, `positive` lists options that must be > 0;
    unset (None) options are skipped."""
    for dest, smallest in at_least.items():
        value = getattr(args, dest)
        if value is not None and value < smallest:
            raise CtrtError(f"--{dest.replace('_', '-')} must be >= {smallest}, got {value:g}")
    for dest in positive:
        value = getattr(args, dest)
        if value is not None and not value > 0:
            raise CtrtError(f"--{dest.replace('_', '-')} must be > 0, got {value:g}")


def check_output_directory(path: str | None) -> None:
    """A directory to be written must not be an existing file (checked before hours of work)."""
    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise CtrtError(f"{path} exists and is not a directory: choose another output path")


def read_file_argument(path_name: str, what: str) -> bytes:
    """The bytes of a file named on the command line; `what` names it in the error."""
    path = Path(path_name)
    if not path.is_file():
        raise RuntimeInputError(f"{what} {path} is not a readable file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise RuntimeInputError(f"{what} {path} cannot be read: {exc.strerror}") from None
