"""The tests' one tiny config, random models and their engines (exported once per session by
conftest.py's `engine`) and copies of them as re-exports, and a recording backend.
native/tests/export_engines.py exports the C++ tests' engines from here too."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from compressive_rt.ct_reference.config import ModelConfig
from compressive_rt.ct_reference.model import CompressiveTransformer
from compressive_rt.runtime.backends.ort import OrtCpuBackend
from compressive_rt.runtime.manifest import load_manifest

COMPRESS_FNS = ("conv", "dilated_conv", "max_pool", "mean_pool", "most_used", "none")
# The inner loop (`pytest -m "not slow"`) exports engines of these only.
INNER_LOOP_FNS = ("conv", "mean_pool", "most_used", "none")


def each_compress_fn() -> list:
    """COMPRESS_FNS as test parameters, those outside INNER_LOOP_FNS marked slow."""
    return [fn if fn in INNER_LOOP_FNS else pytest.param(fn, marks=pytest.mark.slow)
            for fn in COMPRESS_FNS]


def tiny_config(compress_fn: str = "conv", **changes) -> ModelConfig:
    """N=2, d=32, H=4, L=8, M=16, C=4, c=2: every behaviour shows within a few segments."""
    fields = dict(n_layers=2, d_model=32, n_heads=4, d_ff=64, seg_len=8, mem_len=16,
                  cmem_len=0 if compress_fn == "none" else 4, compress_rate=2,
                  compress_fn=compress_fn, dilation_rates=(1, 2))
    return ModelConfig(**{**fields, **changes})


# The reference tests' model: the tiny config with parameter-free compression.
TINY = tiny_config("mean_pool")


def random_model(config: ModelConfig, seed: int = 0, std: float = 0.3) -> CompressiveTransformer:
    """Random weights large enough that attention is far from uniform (so masks matter)."""
    torch.manual_seed(seed)
    model = CompressiveTransformer(config)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, std)
    return model.eval()


def export_tiny(compress_fn: str, out_dir: Path, precision: str = "fp32",
                **changes) -> tuple[CompressiveTransformer, Path]:
    from compressive_rt.export.pipeline import export_model

    model = random_model(tiny_config(compress_fn, **changes))
    export_model(model, out_dir, verify_segments=20, precision=precision, log=lambda *_: None)
    return model, out_dir


class RecordingBackend(OrtCpuBackend):
    """Real ONNX Runtime that remembers (entry, batch, tokens) of every call, raises instead of
    running the calls whose 1-based numbers are in `fail_on` (a failed call is not recorded
    and does not count), and can be told to wait inside a call."""

    def __init__(self, engine_dir: Path, fail_on: set[int] = frozenset()) -> None:
        super().__init__(load_manifest(engine_dir), threads=1)
        self.calls: list[tuple[str, int, int | None]] = []
        self.attempts = 0
        self.fail_on = set(fail_on)
        self.inside = threading.Event()
        self.release: threading.Event | None = None

    def bind(self, entry, feeds, fetches, tokens=None):
        signature = (entry, next(iter(feeds.values())).shape[0], tokens)
        return signature, super().bind(entry, feeds, fetches, tokens)

    def run(self, handle):
        signature, inner = handle
        self.attempts += 1
        if self.attempts in self.fail_on:
            raise RuntimeError(f"injected failure in {signature[0]}")
        self.calls.append(signature)
        if self.release is not None:
            self.inside.set()
            self.release.wait(timeout=30)
        super().run(inner)


def copy_engine(engine_dir: Path, out: Path, checkpoint: str,
                doc_string: str | None = None) -> Path:
    """A copy of an engine as if exported from `checkpoint` (its SHA-256, recorded in the
    manifest); with `doc_string`, its segment graph's bytes differ: a re-export of the same
    checkpoint (same numerics, another engine identity)."""
    import json
    import shutil

    import onnx

    from compressive_rt.runtime.manifest import file_entry

    shutil.copytree(engine_dir, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["checkpoint"] = {"path": "tiny", "sha256": checkpoint}
    if doc_string is not None:
        entry = manifest["entry_points"]["segment"]
        graph = out / entry["file"]
        model = onnx.load(graph, load_external_data=False)
        model.doc_string = doc_string
        onnx.save(model, graph)
        entry.update(file_entry(graph))
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out
