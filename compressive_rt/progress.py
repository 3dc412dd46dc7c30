"""Progress bars that suit where their output goes: tqdm's bar redrawn in place on a terminal,
and one line per interval on a file or a pipe. A bar redrawn with carriage returns is one
line in a log: a three-minute training run wrote one line of about 25 KB."""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm

# Not a terminal: at most one line per this many seconds, and the last state when it closes.
LINE_INTERVAL_S = 30.0


class LineWriter:
    """A file for tqdm that writes each redraw as a line of its own instead of over the last."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(file: TextIO | None = None, interval_s: float = LINE_INTERVAL_S,
                 **options) -> tqdm:
    """tqdm(**options) on `file` (default stderr): a bar on a terminal, else a line every
    `interval_s` seconds."""
    stream = sys.stderr if file is None else file
    if stream.isatty():
        return tqdm(file=stream, dynamic_ncols=True, **options)
    return tqdm(file=LineWriter(stream), mininterval=interval_s, maxinterval=interval_s,
                **options)
