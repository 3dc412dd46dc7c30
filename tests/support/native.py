"""The native runtime for the tests: built once per test session with CMake into build/.

`.ci/run` builds (and runs ctest) before pytest, so in CI this only finds the library up to
date; on a developer machine the first native test builds it (a minute or two). When the build
prerequisites are missing (cmake, a C++ compiler, nlohmann-json3-dev, libssl-dev, libzip-dev,
libgtest-dev) the native tests skip with the reason, except under CI=true, where they fail:
`.ci/run` installs them. CTRT_NATIVE_LIBRARY points the tests at a library built elsewhere.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from compressive_rt.benchmarks.launchers.native import (
    CHECKOUT,
    LIBRARY_ENV,
    default_library,
    point_at_onnxruntime,
)
from support.rules import skip_or_fail

BUILD_DIR = CHECKOUT / "build"
HEADERS = {"nlohmann-json3-dev": "/usr/include/nlohmann/json.hpp",
           "libssl-dev": "/usr/include/openssl/evp.h", "libzip-dev": "/usr/include/zip.h",
           "libgtest-dev": "/usr/include/gtest/gtest.h"}


def _missing_prerequisites() -> list[str]:
    missing = [tool for tool in ("cmake", "c++") if shutil.which(tool) is None]
    missing += [package for package, header in HEADERS.items() if not Path(header).is_file()]
    return missing


@functools.cache
def _build() -> tuple[Path | None, str, bool]:
    """(library, "", _) or (None, why not, whether prerequisites are missing); cached: the
    build runs once per test session."""
    if os.environ.get(LIBRARY_ENV):
        return default_library(), "", False
    missing = _missing_prerequisites()
    if missing:
        return None, f"missing build prerequisites: {', '.join(missing)}", True
    env = {**os.environ, "VIRTUAL_ENV": os.environ.get("VIRTUAL_ENV", sys.prefix)}
    steps = [["cmake", "--build", str(BUILD_DIR), "--target", "ctrt", "ctrt-native",
              "--parallel", "2"]]
    if not (BUILD_DIR / "CMakeCache.txt").is_file():
        steps.insert(0, ["cmake", "-S", str(CHECKOUT), "-B", str(BUILD_DIR),
                         f"-DPython3_EXECUTABLE={sys.executable}"])
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, env=env)
        if done.returncode:
            return None, (f"`{' '.join(step)}` failed:\n{done.stdout[-3000:]}"
                          f"{done.stderr[-3000:]}"), False
    return default_library(), "", False


def native_library() -> Path:
    """The built library's path (skips or fails the calling test when it cannot be built)."""
    library, why, prerequisites_missing = _build()
    if prerequisites_missing:
        skip_or_fail(f"native runtime: {why}")
    if library is None:
        pytest.fail(f"native runtime: {why}")
    return library


def native_tool() -> Path:
    native_library()
    point_at_onnxruntime()  # for the ctrt-native processes the tests start
    return default_library().parent / "ctrt-native"
