"""User-facing errors: the CLI prints `error: <message>` for these and exits 2, no traceback.

Pure Python (no torch) so any part of the project, the runtime included, can raise them.
"""

from __future__ import annotations


class CtrtError(Exception):
    """A mistake the user can fix (a bad path, a corrupt file, a mismatched checkpoint);
    the message says what is wrong and where."""
