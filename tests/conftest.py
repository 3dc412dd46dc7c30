import pytest
import torch
from helpers import TINY

from ct_reference.config import ModelConfig


@pytest.fixture
def tiny_config() -> ModelConfig:
    return TINY


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def engine(tmp_path_factory):
    """engine(compress_fn, **config changes) -> (eager model, engine dir), exported once."""
    from engines import export_tiny

    cache = {}

    def get(compress_fn: str, **changes):
        key = (compress_fn, tuple(sorted(changes.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp(f"engine_{compress_fn}") / "engine"
            cache[key] = export_tiny(compress_fn, out, **changes)
        return cache[key]

    return get
