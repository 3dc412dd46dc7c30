"""The tests' shared rules: what a missing prerequisite does (`skip_or_fail`, and the checks
built on it), and the equality rule for logits, read from export/tolerances.py."""

from __future__ import annotations

import os
import shutil

import pytest

from compressive_rt.export.tolerances import RELATIVE_TOLERANCE

# export/tolerances.py's fp32 rule: max |error| <= FP32 * max(1, max |logit|)
FP32 = RELATIVE_TOLERANCE["fp32"]


def skip_or_fail(reason: str) -> None:
    """A prerequisite a fresh machine lacks: the test skips with the reason on a developer
    machine and fails under CI=true (`.ci/run` installs every prerequisite)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (under CI=true a missing prerequisite fails: .ci/run provides it)")
    pytest.skip(reason)


def need_binary(name: str, package: str) -> None:
    """A program on PATH, from the Debian package `package` (`.ci/run` installs it)."""
    if shutil.which(name) is None:
        skip_or_fail(f"{name} is not installed (Debian: apt-get install {package})")


def need_ray() -> None:
    """Ray Serve (the `ray` extra)."""
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError as exc:
        skip_or_fail(f"Ray Serve is not installed ({exc}): pip install -e '.[ray]'")


def fp32_bound(reference) -> float:
    """The largest |error| the fp32 rule allows against `reference` (logits, or a figure in
    bits: the rule applied to the figure's own scale)."""
    import numpy as np

    return FP32 * max(1.0, float(np.abs(np.asarray(reference)).max()))
