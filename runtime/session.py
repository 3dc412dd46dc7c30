"""The lean loop: streams, memory rotation and scheduling around the compiled entry points.

A Session serves up to `max_streams` streams in one batch (one row each). It allocates every
buffer once: two sets of each memory-state tensor (ping-pong: a call reads set p and writes
set 1-p, then p flips), one set of partial-segment buffers written by slice, and scratch
outputs sized for the largest call. `feed` splits each stream's tokens at segment boundaries:
a stream at a segment boundary with >= L tokens waiting goes through `segment` (score and
rotate in one call); otherwise `extend` appends up to L - seg_len tokens and, when the partial
segment is full, `commit` rotates the memory. Streams at different positions share the batch;
rows that do not take part in a call are masked (commit/active False) and left untouched.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends.base import NUMPY_DTYPES, Backend
from runtime.contract import BATCH, MEMORY_STATE, OUT_SUFFIX, TOKENS, Dims, state_specs
from runtime.errors import RuntimeInputError
from runtime.manifest import Manifest, load_manifest
from runtime.snapshot import read_snapshot, write_snapshot

PARTIAL_STATE = ("seg_h", "seg_k", "seg_v")

BACKENDS = ("onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt")


def open_backend(name: str, manifest: Manifest, threads: int | None = None,
                 max_streams: int = 1) -> Backend:
    """A backend by name, or "auto": native TensorRT when the engine directory holds plans
    and a GPU with TensorRT is here, else ONNX Runtime CPU."""
    if name == "auto":
        from runtime.backends.tensorrt import tensorrt_available

        name = "tensorrt" if "tensorrt" in manifest.data and tensorrt_available() \
            else "onnxruntime-cpu"
    if name == "onnxruntime-cpu":
        from runtime.backends.ort import OrtCpuBackend

        return OrtCpuBackend(manifest, threads=threads)
    if name == "onnxruntime-cuda":
        from runtime.backends.ort_gpu import OrtCudaBackend

        return OrtCudaBackend(manifest, max_batch=max_streams)
    if name == "onnxruntime-tensorrt":
        from runtime.backends.ort_gpu import OrtTensorrtBackend

        return OrtTensorrtBackend(manifest, max_batch=max_streams)
    if name == "tensorrt":
        from runtime.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(manifest)
    raise RuntimeInputError(f"unknown backend {name!r}; choose auto or one of "
                            f"{', '.join(BACKENDS)}")


class Session:
    def __init__(self, engine_dir: str | Path, backend: str | Backend = "auto",
                 max_streams: int = 1, threads: int | None = None) -> None:
        if max_streams < 1:
            raise RuntimeInputError(f"max_streams must be >= 1, got {max_streams}")
        self.manifest = load_manifest(engine_dir)
        self.backend = backend if isinstance(backend, Backend) else open_backend(
            backend, self.manifest, threads, max_streams)
        self.dims = Dims.from_config(self.manifest.config)
        self.max_streams = batch = max_streams
        contract = self.manifest.contract
        specs = state_specs(self.dims)
        self.memory_names = [n for n in MEMORY_STATE if n in specs]
        self.specs = specs
        allocate = self.backend.allocate
        # [parity][name] -> buffer; parity[name] says which set holds the current value.
        self.memory = [{n: allocate(specs[n], batch) for n in self.memory_names} for _ in range(2)]
        self.parity = dict.fromkeys(self.memory_names, 0)
        self.partial = {n: allocate(specs[n], batch) for n in PARTIAL_STATE}
        self.seg_len_buf = allocate(specs["seg_len"], batch)
        self.seg_len = np.zeros(batch, dtype=np.int32)  # host copy of the partial lengths
        self.commit_mask = allocate(contract["commit"].inputs[-1], batch)
        self.active_mask = self.commit_mask  # shares the buffer: never needed at once
        seg_len = self.dims.seg_len
        self.segment_tokens = allocate(contract["segment"].inputs[0], batch)
        self.segment_logits = allocate(contract["segment"].outputs[0], batch)
        # extend scratch per token count, made on first use: views of one buffer per tensor
        # sized for T = L (Backend.allocate)
        self._extend_io: dict[int, dict[str, Any]] = {}
        self.host_tokens = np.zeros((batch, seg_len), dtype=np.int32)
        self.host_mask = np.zeros(batch, dtype=np.bool_)
        self._last_logits: dict[int, tuple[np.ndarray, int]] = {}  # row -> (host logits, index)
        self.rows: dict[int, int] = {}  # stream id -> batch row
        self.positions: dict[int, int] = {}  # stream id -> tokens consumed
        self._next_id = 0

    # ---- streams -------------------------------------------------------------------------
    def add_stream(self) -> int:
        free = sorted(set(range(self.max_streams)) - set(self.rows.values()))
        if not free:
            raise RuntimeInputError(
                f"all {self.max_streams} stream slots are in use: remove a stream or open the "
                f"session with a larger max_streams")
        stream_id, self._next_id = self._next_id, self._next_id + 1
        self.rows[stream_id] = free[0]
        self.positions[stream_id] = 0
        self._clear_row(free[0])
        return stream_id

    def remove_stream(self, stream_id: int) -> None:
        self._row(stream_id)
        del self.rows[stream_id], self.positions[stream_id]

    def reset_stream(self, stream_id: int) -> None:
        self._clear_row(self._row(stream_id))
        self.positions[stream_id] = 0

    @property
    def streams(self) -> list[int]:
        return list(self.rows)

    def position(self, stream_id: int) -> int:
        self._row(stream_id)
        return self.positions[stream_id]

    def _row(self, stream_id: int) -> int:
        try:
            return self.rows[stream_id]
        except (KeyError, TypeError):
            raise RuntimeInputError(
                f"no stream {stream_id!r} in this session (streams: {self.streams})") from None

    def _buffer(self, name: str) -> Any:
        """The buffer holding the current value of a state tensor."""
        if name in self.parity:
            return self.memory[self.parity[name]][name]
        return self.partial[name]

    def _batch_axis(self, name: str) -> int:
        return self.specs[name].shape.index(BATCH)

    def _row_shape(self, name: str) -> tuple[int, ...]:
        shape = list(self.specs[name].concrete_shape(1))
        del shape[self._batch_axis(name)]
        return tuple(shape)

    def _clear_row(self, row: int) -> None:
        # Only the current set matters: every call rewrites all rows of the other set.
        for name in (*self.memory_names, *PARTIAL_STATE):
            self.backend.set_row(self._buffer(name), row, self._batch_axis(name), 0)
        self.seg_len[row] = 0
        self._last_logits.pop(row, None)

    # ---- feeding ---------------------------------------------------------------------------
    def _check_tokens(self, tokens: Any) -> np.ndarray:
        array = np.asarray(tokens)
        if array.ndim != 1:
            raise RuntimeInputError(f"tokens must be a 1-D sequence, got shape {array.shape}")
        if array.size and not np.issubdtype(array.dtype, np.integer):
            raise RuntimeInputError(f"tokens must be integers, got dtype {array.dtype}")
        if array.size and (array.min() < 0 or array.max() >= self.dims.vocab_size):
            bad = array[(array < 0) | (array >= self.dims.vocab_size)][0]
            raise RuntimeInputError(
                f"token id {int(bad)} is out of range [0, {self.dims.vocab_size})")
        return array.astype(np.int32, copy=False)

    def feed(self, tokens_by_stream: Mapping[int, Iterable[int]],
             want_logits: bool = True) -> dict[int, np.ndarray]:
        """Append tokens to streams; returns each stream's logits [n_tokens, V] (float32).

        Every input is checked before any engine runs, so bad input changes no stream. With
        want_logits=False nothing is copied out (use `last_logits` to read the last position):
        the decoding path, which then allocates no arrays in steady state."""
        pending = {}
        for stream_id, tokens in tokens_by_stream.items():
            row = self._row(stream_id)
            array = self._check_tokens(tokens)
            if array.size:
                pending[row] = array
        ids = {self.rows[s]: s for s in tokens_by_stream}
        vocab = self.dims.vocab_size
        logits = {row: np.empty((len(t), vocab), dtype=np.float32) for row, t in pending.items()}\
            if want_logits else {}
        done = dict.fromkeys(pending, 0)
        seg_len = self.dims.seg_len
        while any(done[row] < len(t) for row, t in pending.items()):
            left = {row: len(t) - done[row] for row, t in pending.items() if done[row] < len(t)}
            rows = [row for row, n in left.items() if n >= seg_len and self.seg_len[row] == 0]
            if rows:
                count = seg_len
                for row in rows:
                    self.host_tokens[row] = pending[row][done[row]:done[row] + seg_len]
                out = self._run_segment(rows)
            else:
                count = min(min(left.values()), min(seg_len - int(self.seg_len[r]) for r in left))
                rows = list(left)
                for row in rows:
                    self.host_tokens[row, :count] = pending[row][done[row]:done[row] + count]
                out = self._run_extend(rows, count)
                full = [row for row in rows if self.seg_len[row] == seg_len]
                if full:
                    self._run_commit(full)
            for row in rows:
                if want_logits:
                    logits[row][done[row]:done[row] + count] = out[row, :count]
                self._last_logits[row] = (out, count - 1)
                done[row] += count
        for row, t in pending.items():
            self.positions[ids[row]] += len(t)
        return {ids[row]: value for row, value in logits.items()}

    def last_logits(self, stream_id: int) -> np.ndarray:
        """Logits [V] after the stream's last token: a view, valid until the next call."""
        row = self._row(stream_id)
        if row not in self._last_logits:
            raise RuntimeInputError(f"stream {stream_id} has not been fed any tokens yet")
        out, index = self._last_logits[row]
        return out[row, index]

    def _set_mask(self, rows: list[int]) -> None:
        self.host_mask[:] = False
        self.host_mask[rows] = True
        self.backend.from_host(self.commit_mask, self.host_mask)

    def _memory_io(self) -> tuple[dict[str, Any], dict[str, Any]]:
        feeds = {n: self.memory[self.parity[n]][n] for n in self.memory_names}
        fetches = {n + OUT_SUFFIX: self.memory[1 - self.parity[n]][n] for n in self.memory_names}
        return feeds, fetches

    def _flip(self, names: Iterable[str]) -> None:
        for name in names:
            self.parity[name] = 1 - self.parity[name]

    def _run_segment(self, rows: list[int]) -> np.ndarray:
        self.backend.from_host(self.segment_tokens, self.host_tokens)
        self._set_mask(rows)
        feeds, fetches = self._memory_io()
        self.backend.run("segment", {"tokens": self.segment_tokens, **feeds,
                                     "commit": self.commit_mask},
                         {"logits": self.segment_logits, **fetches})
        self._flip(self.memory_names)
        return self.backend.to_host(self.segment_logits)

    def _extend_buffers(self, count: int) -> dict[str, Any]:
        io = self._extend_io.get(count)
        if io is None:
            entry = self.manifest.contract["extend"]
            io = {spec.name: self.backend.allocate(spec, self.max_streams, count)
                  for spec in (entry.inputs[0], *entry.outputs)
                  if TOKENS in spec.shape}
            self._extend_io[count] = io
        return io

    def _run_extend(self, rows: list[int], count: int) -> np.ndarray:
        io = self._extend_buffers(count)
        self.backend.from_host(io["tokens"], self.host_tokens[:, :count])
        self.backend.from_host(self.seg_len_buf, self.seg_len)
        feeds = {"tokens": io["tokens"], "seg_len": self.seg_len_buf}
        for name in ("mem_k", "mem_v", "mem_len", "cmem_len"):
            if name in self.parity:
                feeds[name] = self.memory[self.parity[name]][name]
        feeds["seg_k"], feeds["seg_v"] = self.partial["seg_k"], self.partial["seg_v"]
        fetches = {name: io[name] for name in ("logits", "new_h", "new_k", "new_v")}
        if self.dims.most_used:
            self._set_mask(rows)
            feeds["usage"] = self.memory[self.parity["usage"]]["usage"]
            feeds["active"] = self.active_mask
            fetches["usage_out"] = self.memory[1 - self.parity["usage"]]["usage"]
        self.backend.run("extend", feeds, fetches, tokens=count)
        if self.dims.most_used:
            self._flip(["usage"])
        for row in rows:
            offset = int(self.seg_len[row])
            for name, new in (("seg_h", "new_h"), ("seg_k", "new_k"), ("seg_v", "new_v")):
                self.backend.write_rows(self.partial[name], io[new], row, offset, count)
            self.seg_len[row] += count
        return self.backend.to_host(io["logits"])

    def _run_commit(self, rows: list[int]) -> None:
        self._set_mask(rows)
        feeds, fetches = self._memory_io()
        self.backend.run("commit", {**{n: self.partial[n] for n in PARTIAL_STATE}, **feeds,
                                    "commit": self.commit_mask}, fetches)
        self._flip(self.memory_names)
        self.seg_len[rows] = 0

    # ---- state access, snapshots ----------------------------------------------------------
    def stream_state(self, stream_id: int) -> dict[str, np.ndarray]:
        """Host copies of one stream's whole state (memory, partial segment, counts)."""
        row = self._row(stream_id)
        state = {name: self.backend.get_row(self._buffer(name), row, self._batch_axis(name))
                 for name in (*self.memory_names, *PARTIAL_STATE)}
        state["seg_len"] = np.array(self.seg_len[row], dtype=np.int32)
        return state

    def snapshot(self, stream_id: int, path: str | Path) -> None:
        """Write one stream's full state to `path` atomically (runtime/snapshot.py)."""
        write_snapshot(path, self.manifest, self.stream_state(stream_id),
                       self.positions[stream_id])

    def restore(self, path: str | Path, stream_id: int | None = None) -> int:
        """Load a snapshot into a new stream (or over `stream_id`); returns the stream id.

        Every check (engine identity, names, shapes, dtypes, counts, position) runs before a
        slot is taken or a row written: a refused snapshot changes nothing. Restoring over a
        stream replaces all of it, its last logits included."""
        if stream_id is not None:
            self._row(stream_id)
        expected = {name: (self._row_shape(name), np.dtype(NUMPY_DTYPES[self.specs[name].dtype]))
                    for name in (*self.memory_names, *PARTIAL_STATE, "seg_len")}
        snapshot = read_snapshot(path, self.manifest, expected)
        if stream_id is None:
            stream_id = self.add_stream()
        row = self._row(stream_id)
        self._clear_row(row)
        for name in (*self.memory_names, *PARTIAL_STATE):
            self.backend.set_row(self._buffer(name), row, self._batch_axis(name),
                                 snapshot.state[name])
        self.seg_len[row] = snapshot.state["seg_len"]
        self.positions[stream_id] = snapshot.position
        return stream_id
