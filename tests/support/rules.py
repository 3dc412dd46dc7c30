"""The tests' shared rules (tests/ is on sys.path under pytest's default import mode): what a
missing prerequisite does, and the equality rule for logits (tiny models and their engines:
engines.py; fixtures: conftest.py)."""

from __future__ import annotations

import os

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


def fp32_bound(reference) -> float:
    """The largest |error| the fp32 rule allows against `reference` (logits, or a figure in
    bits: the rule applied to the figure's own scale)."""
    import numpy as np

    return FP32 * max(1.0, float(np.abs(np.asarray(reference)).max()))
