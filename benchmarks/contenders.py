"""The contenders, one interface, and the one registry that names and builds them.

- eager: `CompressiveTransformer.forward`, which re-projects keys and values of the whole memory
  every call; decoding without a KV cache re-scores the partial segment per token.
- compile: the same module through `torch.compile` (inductor, static shapes).
- cached: the engine's entry points (`export.step`) run eagerly by `export.torch_backend`
  under `runtime.Session`, the same scheduler as the engine.
- runtime: `runtime.Session` on ONNX Runtime CPU.
- native: the C++ runtime (native/) on the same engine, through its C API
  (benchmarks/native_contender.py); skipped with the reason when the library is not built.
- lucidrains: compressive-transformer-pytorch 0.4.0, the package's forward per segment and its
  `AutoregressiveWrapper.generate` per token (only with a model built in that package).

Every contender keeps memory full (`fill`), so a step does the steady-state amount of work.
`decode_kind` says how it decodes: "cached" (consecutive one-token steps), "rescore" (no cache:
timed at chosen partial-segment positions with `decode_at`), "generate" (the package's loop) or
"none" (not timed decoding).
Session contenders count the seconds inside engine calls in `engine_seconds` (TimedBackend).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compressive_rt.benchmarks.settings import SEED, BenchError
from compressive_rt.benchmarks.timed_backend import TimedBackend
from compressive_rt.ct_reference.config import ModelConfig
from compressive_rt.ct_reference.model import CompressiveTransformer
from compressive_rt.runtime.backends.base import Backend
from compressive_rt.runtime.manifest import Manifest
from compressive_rt.runtime.session import Session


def fill_segments(cfg: ModelConfig) -> int:
    """Full segments until mem and cmem are both full: M/L to fill mem, then C/(L/c)."""
    fill_cmem = -(-cfg.cmem_len // cfg.cmem_per_segment) if cfg.cmem_len else 0
    return cfg.mem_len // cfg.seg_len + fill_cmem


def random_model(config: ModelConfig) -> CompressiveTransformer:
    """The benchmark's model without a checkpoint: random weights from a fixed seed."""
    torch.manual_seed(SEED)
    return CompressiveTransformer(config).eval()


@dataclass(frozen=True)
class Bench:
    """What contenders are built from: one model, its exported engine, the thread count, and
    for the lucidrains contender the package's own model that `model` was imported from."""

    model: CompressiveTransformer
    engine_dir: Path
    threads: int
    their_net: Any = None


class EagerReference:
    name = "eager"
    decode_kind = "rescore"
    compiles = False  # compiled per batch (within a time budget) before it is timed

    def __init__(self, model: CompressiveTransformer) -> None:
        self.model = model
        self.forward = model

    def fill(self, batch: int, tokens: np.ndarray) -> None:
        """tokens [B, k*L]: score them segment by segment; the result is the steady memory."""
        self.memory = self.model.score(torch.from_numpy(tokens))[1]

    def segment(self, tokens: np.ndarray) -> None:
        """Score one full segment against the (kept) full memory."""
        with torch.inference_mode():
            self.forward(torch.from_numpy(tokens), self.memory)

    def first_segment(self, tokens: np.ndarray) -> None:
        with torch.inference_mode():
            self.forward(torch.from_numpy(tokens), self.model.init_memory(tokens.shape[0]))

    def decode_at(self, tokens: np.ndarray, position: int) -> float:
        """Seconds to get the logits of partial-segment position `position` without a cache:
        re-score tokens[:, :position + 1] (a full segment also rotates memory)."""
        prefix = torch.from_numpy(np.ascontiguousarray(tokens[:, :position + 1]))
        with torch.inference_mode():
            started = time.perf_counter()
            self.forward(prefix, self.memory)
            return time.perf_counter() - started


class CompiledReference(EagerReference):
    """Timed on segments only: an empty memory or a partial segment is a new graph to
    compile (first segment, decoding)."""

    name = "eager+compile"
    decode_kind = "none"
    compiles = True

    def __init__(self, model: CompressiveTransformer) -> None:
        super().__init__(model)
        self.forward = torch.compile(model, dynamic=False)


class SessionContender:
    """runtime.Session on an engine dir through any backend, wrapped in a TimedBackend.

    Each batch size gets its own Session sized to it, as a user would size it."""

    decode_kind = "cached"
    compiles = False

    def __init__(self, name: str, engine_dir: Path,
                 new_backend: Callable[[], TimedBackend]) -> None:
        self.name, self.engine_dir, self.new_backend = name, engine_dir, new_backend
        self.sessions: dict[int, tuple[Session, TimedBackend]] = {}
        self.streams: list[int] = []
        started = time.perf_counter()
        self.session = self._session(1)
        self.open_seconds = time.perf_counter() - started

    @property
    def engine_seconds(self) -> float:
        return sum(timed.engine_seconds for _, timed in self.sessions.values())

    def _session(self, batch: int) -> Session:
        if batch not in self.sessions:
            timed = self.new_backend()
            self.sessions[batch] = Session(self.engine_dir, backend=timed, max_streams=batch), \
                timed
        return self.sessions[batch][0]

    def fill(self, batch: int, tokens: np.ndarray) -> None:
        for stream in self.session.streams:
            self.session.remove_stream(stream)
        self.session = self._session(batch)
        self.streams = [self.session.add_stream() for _ in range(batch)]
        self.advance(tokens)

    def segment(self, tokens: np.ndarray) -> None:
        self.session.feed({s: tokens[i] for i, s in enumerate(self.streams)})

    def first_segment(self, tokens: np.ndarray) -> None:
        for stream in self.streams:
            self.session.reset_stream(stream)
        self.segment(tokens)

    def decode(self, tokens: np.ndarray) -> None:
        """One token per stream (tokens [B])."""
        self.advance(tokens[:, None])

    def advance(self, tokens: np.ndarray) -> None:
        """tokens [B, T] per stream in one feed."""
        self.session.feed({s: tokens[i] for i, s in enumerate(self.streams)}, want_logits=False)


class PackageModel:
    """compressive-transformer-pytorch's own model: forward per segment, generate per token."""

    name = "compressive-transformer-pytorch"
    decode_kind = "generate"
    compiles = False

    def __init__(self, net: Any) -> None:
        from compressive_transformer_pytorch import AutoregressiveWrapper

        self.net = net.eval()
        self.wrapper = AutoregressiveWrapper(self.net)

    def fill(self, batch: int, tokens: np.ndarray) -> None:
        memory = None
        with torch.inference_mode():
            for start in range(0, tokens.shape[1], self.net.seq_len):
                chunk = torch.from_numpy(tokens[:, start:start + self.net.seq_len])
                _, memory, _ = self.net(chunk, memories=memory)
        self.memory = memory

    def segment(self, tokens: np.ndarray) -> None:
        with torch.inference_mode():
            self.net(torch.from_numpy(tokens), memories=self.memory)

    def first_segment(self, tokens: np.ndarray) -> None:
        with torch.inference_mode():
            self.net(torch.from_numpy(tokens))

    def generate(self, prompt: np.ndarray, new_tokens: int) -> float:
        """Seconds of `AutoregressiveWrapper.generate(prompt [B, P], new_tokens)`."""
        start_tokens = torch.from_numpy(prompt)
        started = time.perf_counter()
        self.wrapper.generate(start_tokens, new_tokens)
        return time.perf_counter() - started


def _ort_backend(bench: Bench) -> Callable[[Manifest], Backend]:
    from compressive_rt.runtime.backends.ort import OrtCpuBackend

    return lambda manifest: OrtCpuBackend(manifest, threads=bench.threads)


def _torch_backend(bench: Bench) -> Callable[[Manifest], Backend]:
    from compressive_rt.export.torch_backend import TorchBackend

    return lambda manifest: TorchBackend(manifest, bench.model)


def _package_model(bench: Bench) -> PackageModel:
    if bench.their_net is None:
        raise BenchError("the lucidrains contender needs the compressive-transformer-pytorch "
                         "model that the benchmarked model was imported from")
    return PackageModel(bench.their_net)


def _native(bench: Bench) -> Any:
    from compressive_rt.benchmarks.native_contender import NativeContender

    return NativeContender(bench.engine_dir, bench.threads)


# Session contenders: key -> (name, backend opener). The serving and capacity experiments
# open their own Sessions through the same openers.
SESSION_BACKENDS: dict[str, tuple[str, Callable[[Bench], Callable[[Manifest], Backend]]]] = {
    "cached": ("eager cached", _torch_backend),
    "runtime": ("runtime (ORT)", _ort_backend),
}
CONTENDERS: dict[str, Callable[[Bench], Any]] = {
    "eager": lambda bench: EagerReference(bench.model),
    "compile": lambda bench: CompiledReference(bench.model),
    **{key: (lambda bench, key=key: SessionContender(
        SESSION_BACKENDS[key][0], bench.engine_dir, lambda: open_backend(key, bench)))
       for key in SESSION_BACKENDS},
    "lucidrains": _package_model,
    "native": _native,
}
MAIN_CONTENDERS = ("eager", "compile", "cached", "runtime", "native")


def build(key: str, bench: Bench) -> Any:
    """The contender registered under `key`."""
    if key not in CONTENDERS:
        raise BenchError(f"unknown contender {key!r}; choose from {', '.join(CONTENDERS)}")
    return CONTENDERS[key](bench)


def open_backend(key: str, bench: Bench) -> TimedBackend:
    """A timed backend of session contender `key` on bench.engine_dir."""
    from compressive_rt.runtime.manifest import load_manifest

    return TimedBackend(SESSION_BACKENDS[key][1](bench)(load_manifest(bench.engine_dir)))
