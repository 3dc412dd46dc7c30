"""The project's error root: one type means "a user error", printed as `error: ...`, exit 2.

Pure Python, importing nothing from the project, so every layer (the torch-free runtime
included) raises these and the command line catches one type.
"""

from __future__ import annotations


class CtrtError(Exception):
    """A user error: printed as `error: ...`, exit 2, no traceback. The message says what is
    wrong, where (file, tensor, option) and what to change."""


class ConfigError(CtrtError, ValueError):
    """A configuration that cannot describe a valid model; the message says what to change."""


class RuntimeInputError(CtrtError, ValueError):
    """Bad input from the caller (tokens, stream ids, snapshots); no stream was changed."""


class EngineError(CtrtError):
    """An engine directory that cannot be used; the message says which file and why."""


class BackendUnavailable(CtrtError):
    """The backend cannot run here; the message says what to install or which device is missing."""
