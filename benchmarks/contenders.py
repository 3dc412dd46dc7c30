"""The contenders, one interface: fill memory, score a segment, decode one token per stream.

- EagerReference: `CompressiveTransformer.forward`, which re-projects keys and values of the
  whole memory every call; decoding without a KV cache re-scores the partial segment per token.
- CompiledReference: the same module through `torch.compile` (inductor, static shapes).
- EagerCached: the engine's own entry points (`export.step`) run eagerly with the runtime's
  state handling (memory K/V cached; `extend` T=1 then `commit` when the segment is full).
- Runtime: `runtime.Session.feed` on ONNX Runtime CPU.

Every contender keeps memory full (`fill`), so a step does the steady-state amount of work.
`decode` runs consecutive tokens; a stateless contender (no cache) may instead be timed at
chosen partial-segment positions (`decode_at`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ct_reference.config import ModelConfig
from ct_reference.model import CompressiveTransformer
from runtime.contract import Dims, state_specs
from runtime.session import Session


def fill_segments(cfg: ModelConfig) -> int:
    """Full segments until mem and cmem are both full: M/L to fill mem, then C/(L/c)."""
    fill_cmem = -(-cfg.cmem_len // cfg.cmem_per_segment) if cfg.cmem_len else 0
    return cfg.mem_len // cfg.seg_len + fill_cmem


class EagerReference:
    name = "eager"
    caches_kv = False

    def __init__(self, model: CompressiveTransformer) -> None:
        self.model = model
        self.forward = model

    def fill(self, batch: int, tokens: np.ndarray) -> None:
        """tokens [B, k*L]: score them segment by segment; the result is the steady memory."""
        self.memory = self.model.score(torch.from_numpy(tokens))[1]
        self.batch = batch

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
    name = "eager+compile"

    def __init__(self, model: CompressiveTransformer) -> None:
        super().__init__(model)
        self.forward = torch.compile(model, dynamic=False)


class EagerCached:
    """The export.step modules driven like the runtime drives its graphs (torch tensors)."""

    name = "eager cached"
    caches_kv = True

    def __init__(self, model: CompressiveTransformer) -> None:
        from export.step import build_steps
        from runtime.contract import entry_points

        self.model = model
        self.steps = build_steps(model)
        self.contract = entry_points(model.config)
        self.dims = Dims.from_config(model.config)
        self.memory_names = [n for n in ("mem", "cmem", "mem_k", "mem_v", "mem_len", "cmem_len",
                                         "usage") if n in state_specs(self.dims)]

    def _zeros(self, name: str, batch: int) -> torch.Tensor:
        spec = state_specs(self.dims)[name]
        dtype = {"float32": torch.float32, "int32": torch.int32}[spec.dtype]
        return torch.zeros(spec.concrete_shape(batch), dtype=dtype)

    def _empty_state(self, batch: int) -> dict[str, torch.Tensor]:
        return {n: self._zeros(n, batch) for n in self.memory_names}

    def _segment(self, tokens: np.ndarray, state: dict) -> tuple[torch.Tensor, dict]:
        logits, *rest = self.steps["segment"](torch.from_numpy(tokens.astype(np.int32)),
                                              *(state[n] for n in self.memory_names))
        return logits, dict(zip(self.memory_names, rest))

    def fill(self, batch: int, tokens: np.ndarray) -> None:
        seg_len = self.dims.seg_len
        state = self._empty_state(batch)
        with torch.inference_mode():
            for start in range(0, tokens.shape[1], seg_len):
                _, state = self._segment(tokens[:, start:start + seg_len], state)
        self.state, self.batch = state, batch
        self.partial = {n: self._zeros(n, batch) for n in ("seg_h", "seg_k", "seg_v")}
        self.seg_len = 0

    def segment(self, tokens: np.ndarray) -> None:
        with torch.inference_mode():
            self._segment(tokens, self.state)

    def first_segment(self, tokens: np.ndarray) -> None:
        with torch.inference_mode():
            self._segment(tokens, self._empty_state(tokens.shape[0]))

    def decode(self, tokens: np.ndarray) -> None:
        """One token per stream (tokens [B]): extend T=1, commit when the segment is full."""
        self.advance(tokens[:, None])

    def advance(self, tokens: np.ndarray) -> None:
        """tokens [B, T] per stream in one extend call (T <= L - partial length)."""
        batch, count = tokens.shape
        state, partial = self.state, self.partial
        with torch.inference_mode():
            seg_len = torch.full((batch,), self.seg_len, dtype=torch.int32)
            readonly = [state[n] for n in ("mem_k", "mem_v", "mem_len", "cmem_len") if n in state]
            extras = [state["usage"]] if self.dims.most_used else []
            out = self.steps["extend"](torch.from_numpy(tokens.astype(np.int32)),
                                       seg_len, *readonly, partial["seg_k"], partial["seg_v"],
                                       *extras)
            _, new_h, new_k, new_v = out[:4]
            if self.dims.most_used:
                state["usage"] = out[4]
            offset = self.seg_len
            for name, new in (("seg_h", new_h), ("seg_k", new_k), ("seg_v", new_v)):
                partial[name][..., offset:offset + count, :] = new  # batch-first
            self.seg_len += count
            if self.seg_len == self.dims.seg_len:
                rest = self.steps["commit"](partial["seg_h"], partial["seg_k"], partial["seg_v"],
                                            *(state[n] for n in self.memory_names))
                self.state = dict(zip(self.memory_names, rest))
                self.seg_len = 0


class Runtime:
    """runtime.Session on an engine dir; `engine_seconds` accumulates time inside engine calls.

    Each batch size gets its own Session sized to it, as a user would size it (a Session runs
    only the rows that take part in a call, so a larger one would cost the same)."""

    name = "runtime (ORT)"
    caches_kv = True

    def __init__(self, engine_dir: Path, threads: int, backend=None, max_streams: int = 1) -> None:
        self.engine_dir, self.threads, self.backend = engine_dir, threads, backend
        self.sessions: dict[int, Session] = {}
        self.engine_seconds = 0.0
        started = time.perf_counter()
        self.session = self._session(max_streams)
        self.open_seconds = time.perf_counter() - started
        self.dims = self.session.dims
        self.streams: list[int] = []

    def _session(self, batch: int) -> Session:
        if batch not in self.sessions:
            session = Session(self.engine_dir, backend=self.backend or "auto",
                              max_streams=batch, threads=self.threads)
            run = session.backend.run

            def timed_run(*args, **kwargs):
                started = time.perf_counter()
                run(*args, **kwargs)
                self.engine_seconds += time.perf_counter() - started

            session.backend.run = timed_run
            self.sessions[batch] = session
        return self.sessions[batch]

    def _open(self, batch: int) -> None:
        for stream in self.session.streams:
            self.session.remove_stream(stream)
        self.session = self._session(batch)
        self.streams = [self.session.add_stream() for _ in range(batch)]

    def fill(self, batch: int, tokens: np.ndarray) -> None:
        self._open(batch)
        self.session.feed({s: tokens[i] for i, s in enumerate(self.streams)}, want_logits=False)

    def segment(self, tokens: np.ndarray) -> None:
        self.session.feed({s: tokens[i] for i, s in enumerate(self.streams)})

    def first_segment(self, tokens: np.ndarray) -> None:
        for stream in self.streams:
            self.session.reset_stream(stream)
        self.session.feed({s: tokens[i] for i, s in enumerate(self.streams)})

    def decode(self, tokens: np.ndarray) -> None:
        self.advance(tokens[:, None])

    def advance(self, tokens: np.ndarray) -> None:
        """tokens [B, T] per stream in one feed."""
        self.session.feed({s: tokens[i] for i, s in enumerate(self.streams)}, want_logits=False)

    @property
    def partial_len(self) -> int:
        return int(self.session.seg_len[self.session.rows[self.streams[0]]])
