"""`ctrt bench`'s native contender: timed beside the Python runtime on the same engine, with its
time outside engine calls measured inside the native loop."""

import numpy as np
import pytest
from support.native import native_library

from compressive_rt.benchmarks.contenders import Bench, build
from compressive_rt.benchmarks.settings import SMOKE
from compressive_rt.benchmarks.workloads import compare

pytestmark = [pytest.mark.native, pytest.mark.slow]


def test_native_contender_runs_interleaved_with_the_python_runtime(bench_engine):
    native_library()
    model, engine_dir = bench_engine
    bench = Bench(model, engine_dir, threads=1)
    contenders = {key: build(key, bench) for key in ("runtime", "native")}
    out = compare(contenders, model.config, SMOKE, np.random.default_rng(0), (1, 2), (1, 2))
    native = out["contenders"]["native"]
    for batch in ("1", "2"):
        assert native["segment"][batch]["median_ms"] > 0
        row = native["decode"][batch]
        assert 0 <= row["outside_engine_ms"] < row["step_ms"]
        ratio = out["ratios"][f"decode b{batch}: native vs runtime"]
        assert ratio["n"] == SMOKE.decode_cycles and ratio["min"] <= ratio["median"]
