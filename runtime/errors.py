"""The runtime's user-error type, in a module of its own so every runtime module can raise it."""

from __future__ import annotations


class RuntimeInputError(ValueError):
    """Bad input from the caller (tokens, stream ids, snapshots); no stream was changed."""
