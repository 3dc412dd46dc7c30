"""The suite's shared fixtures (engines exported once per session), the hypothesis profiles, and
the rule that keeps the native tests from configuring CMake themselves. Helpers the tests
import: the support package (tests/support/: the tiny config and engines, skip_or_fail, FP32)."""

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings
from support.rules import skip_or_fail

# Property tests (tests/test_properties.py): "ci" keeps them under two minutes on two cores;
# HYPOTHESIS_PROFILE=long tries twenty times as many, freshly random cases. "ci" is derandomized
# so that a run on a clean clone is repeatable. No deadline: timings here are noisy.
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=500, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


CHECKOUT = Path(__file__).resolve().parents[1]
NATIVE_NOT_CONFIGURED = (
    "native runtime: build/ is not configured. Run `cmake -S . -B build` once: it downloads "
    "ONNX Runtime's C++ headers (Debian's libonnxruntime-dev) into build/_deps (README, "
    "\"Native runtime (C++)\"); the native tests then compile the library themselves. Or set "
    "CTRT_NATIVE_LIBRARY to a built libctrt.so")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked `native` never start the download that configuring CMake does: that is a
    separate step (CI's `.ci/run` takes it before pytest)."""
    if (item.get_closest_marker("native") and not os.environ.get("CTRT_NATIVE_LIBRARY")
            and not (CHECKOUT / "build" / "CMakeCache.txt").is_file()):
        skip_or_fail(NATIVE_NOT_CONFIGURED)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def engine(tmp_path_factory):
    """engine(compress_fn, precision="fp32", **config changes) -> (eager model, engine dir),
    exported once per session (read only: a test that changes an engine copies it)."""
    from support.engines import export_tiny

    cache = {}

    def get(compress_fn: str, precision: str = "fp32", **changes):
        key = (compress_fn, precision, tuple(sorted(changes.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp(f"engine_{compress_fn}_{precision}") / "engine"
            cache[key] = export_tiny(compress_fn, out, precision, **changes)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def engine_dir(engine):
    """The session's tiny conv engine (read only: a test that changes an engine copies it)."""
    return engine("conv")[1]


@pytest.fixture(scope="session")
def bench_engine(tmp_path_factory):
    """(model, engine dir) of the benchmarks' smoke config (benchmarks/settings.py's SMOKE),
    exported as `ctrt bench` exports (no verification), once per session."""
    from compressive_rt.benchmarks.contenders import random_model
    from compressive_rt.benchmarks.engines import export_engine
    from compressive_rt.benchmarks.settings import SMOKE
    from compressive_rt.ct_reference.config import ModelConfig

    model = random_model(ModelConfig().replace(**SMOKE.config))
    return model, export_engine(model, tmp_path_factory.mktemp("bench_engine") / "engine")


@pytest.fixture
def served(engine_dir, tmp_path):
    """serve(**settings) -> a TestClient whose app (and engine thread) runs in-process until the
    test ends (model "tiny", 4 resident streams unless changed); the same store path unless
    `store` is given."""
    from starlette.testclient import TestClient

    from compressive_rt.serving.server import open_engine
    from compressive_rt.serving.settings import ServeSettings

    clients = []

    def serve(store=None, **changes):
        settings = ServeSettings(**{"model_name": "tiny", "streams": 4, **changes})
        app, _ = open_engine(engine_dir, settings, store or tmp_path / "store", threads=1)
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client

    yield serve
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def server(engine_dir, tmp_path):
    """server(*options, env=None) -> a started `ctrt serve` subprocess on 127.0.0.1
    (support.serving.Server); all are stopped at the end."""
    from support.serving import Server

    started = []

    def start(*options, env=None, store=None):
        started.append(Server(engine_dir, store or tmp_path / "store", *options, env=env))
        return started[-1].start()

    yield start
    for running in started:
        running.stop()
