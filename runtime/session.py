"""The lean loop: streams, memory rotation and scheduling around the compiled entry points.

A Session serves up to `max_streams` streams from a slot pool: the streams are packed in rows
[0, k) of every buffer (contract v2 is batch-first, so a row is one contiguous block), and each
engine call runs only the rows that take part. `feed` splits each stream's tokens at segment
boundaries: streams at a segment boundary with >= L tokens waiting go through `segment` (score
and rotate in one call); otherwise `extend` appends up to L - seg_len tokens and, when the
partial segment is full, `commit` rotates the memory.

Buffers are allocated once for max_streams: two sets of each memory-state tensor (ping-pong: a
call reads set p and writes set 1-p, then p flips), one set of partial-segment buffers written
by slice, and scratch sized for the largest call. A call on r streams binds views of the first
r rows, so its cost follows the streams that take part, not the capacity.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from compressive_rt.errors import EngineError, RuntimeInputError
from compressive_rt.runtime.backends.base import NUMPY_DTYPES, Backend
from compressive_rt.runtime.contract import (
    MEMORY_STATE,
    NEW_ROWS,
    OUT_SUFFIX,
    PARTIAL_STATE,
    TOKENS,
    Dims,
    state_specs,
)
from compressive_rt.runtime.manifest import Manifest, load_manifest
from compressive_rt.runtime.snapshot import encode_snapshot, read_snapshot, write_snapshot


class ConcurrentUseError(RuntimeInputError):
    """A second thread called a Session while another thread's call was still running."""


class EngineCallError(EngineError):
    """An engine call failed during `feed`. Each stream's position still equals the tokens
    whose effect is in its state; `consumed` maps stream id -> tokens of this feed consumed."""

    def __init__(self, message: str, consumed: dict[int, int]) -> None:
        super().__init__(message)
        self.consumed = consumed


BACKENDS = ("onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt")

Method = TypeVar("Method", bound=Callable[..., Any])


def one_thread_at_a_time(method: Method) -> Method:
    """Raise ConcurrentUseError instead of running while another thread is inside the session
    (re-entrant for the thread that holds it: restore calls add_stream)."""

    @functools.wraps(method)
    def guarded(self: Session, *args: Any, **kwargs: Any) -> Any:
        if not self._in_use.acquire(blocking=False):
            raise ConcurrentUseError(
                f"Session.{method.__name__} was called while another thread is using this "
                f"session: use one Session per thread, or serialize calls with your own lock")
        try:
            return method(self, *args, **kwargs)
        finally:
            self._in_use.release()

    return guarded  # type: ignore[return-value]


def open_backend(name: str, manifest: Manifest, threads: int | None = None,
                 max_streams: int = 1, prepack: str = "all") -> Backend:
    """A backend by name, or "auto": native TensorRT when the engine directory holds plans
    and a GPU with TensorRT is here, else ONNX Runtime CPU. `prepack` applies to ONNX Runtime
    CPU: which sessions re-lay weights out for speed, each with its own copy ("all", "decode"
    or "none": runtime/backends/ort.py)."""
    if name == "auto":
        from compressive_rt.runtime.backends.tensorrt import tensorrt_available

        name = "tensorrt" if "tensorrt" in manifest.data and tensorrt_available() \
            else "onnxruntime-cpu"
    if name == "onnxruntime-cpu":
        from compressive_rt.runtime.backends.ort import OrtCpuBackend

        return OrtCpuBackend(manifest, threads=threads, prepack=prepack)
    if name == "onnxruntime-cuda":
        from compressive_rt.runtime.backends.ort_gpu import OrtCudaBackend

        return OrtCudaBackend(manifest, max_batch=max_streams)
    if name == "onnxruntime-tensorrt":
        from compressive_rt.runtime.backends.ort_gpu import OrtTensorrtBackend

        return OrtTensorrtBackend(manifest, max_batch=max_streams)
    if name == "tensorrt":
        from compressive_rt.runtime.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(manifest)
    raise RuntimeInputError(f"unknown backend {name!r}; choose auto or one of "
                            f"{', '.join(BACKENDS)}")


class Session:
    """Streams of one engine, packed in rows [0, k) of preallocated buffers (see module doc).

    Public API: add_stream, remove_stream, reset_stream, feed, last_logits, position, streams,
    stream_state, snapshot, restore. Stream ids never change; rows do (removing a stream moves
    the last row into its place, and a call's streams are swapped into the front rows).

    Threads: a Session is used from one thread at a time. A call made while another thread is
    inside one of its methods raises ConcurrentUseError at once (nothing changes); serialize
    calls with your own lock or use one Session per thread.

    Failures: if an engine call raises during `feed`, no stream's committed state changes for
    that call (ping-pong: the written set is not flipped in), calls that succeeded before it
    stand, and each stream's position counts exactly the tokens whose effect is in its state.
    The EngineCallError says how many tokens of the feed each stream consumed; feeding the
    rest continues as if nothing failed. (A failed `commit` leaves a full partial segment,
    whose tokens are consumed; the stream's next feed commits it first.)
    """

    def __init__(self, engine_dir: str | Path, backend: str | Backend = "auto",
                 max_streams: int = 1, threads: int | None = None,
                 prepack: str = "all") -> None:
        if max_streams < 1:
            raise RuntimeInputError(f"max_streams must be >= 1, got {max_streams}")
        self._in_use = threading.RLock()
        self.manifest = load_manifest(engine_dir)
        self.backend = backend if isinstance(backend, Backend) else open_backend(
            backend, self.manifest, threads, max_streams, prepack)
        self.dims = Dims.from_config(self.manifest.config)
        self.max_streams = batch = max_streams
        contract = self.manifest.contract
        specs = state_specs(self.dims)
        self.memory_names = [n for n in MEMORY_STATE if n in specs]
        self.specs = specs
        backend_ = self.backend
        # [set][name] -> buffer; parity[name] says which set holds the current value of rows
        # [0, k). A call on rows [0, r) writes only those rows of the other set, so after it
        # flips, rows [r, k) are copied across (_sync_rows).
        self.memory = [{n: backend_.allocate(specs[n], batch) for n in self.memory_names}
                       for _ in range(2)]
        self.parity = dict.fromkeys(self.memory_names, 0)
        self.partial = {n: backend_.allocate(specs[n], batch) for n in PARTIAL_STATE}
        self.row_state = (*self.memory_names, *PARTIAL_STATE)  # one stream's row of each
        # one row per state tensor: the middle stop when two streams swap rows
        self.row_scratch = {n: backend_.allocate(specs[n], 1)
                            for n in self.row_state}
        self.seg_len_buf = backend_.allocate(specs["seg_len"], batch)
        self.seg_len = np.zeros(batch, dtype=np.int32)  # host copy of the partial lengths
        seg_len, vocab = self.dims.seg_len, self.dims.vocab_size
        # scratch shared by segment and extend (one call at a time): [max_streams, L, ...]
        extend = contract["extend"]
        self.scratch = {spec.name: backend_.allocate(spec, batch, seg_len)
                        for spec in (extend.inputs[0], *extend.outputs) if TOKENS in spec.shape}
        self.host_tokens = np.zeros((batch, seg_len), dtype=np.int32)
        # logits after each row's last token, copied out after every call: [max_streams, V]
        self.last_logits_rows = np.zeros((batch, vocab), dtype=np.float32)
        self.row_streams: list[int] = []  # row -> stream id, rows [0, k)
        self.rows: dict[int, int] = {}  # stream id -> row
        self.positions: dict[int, int] = {}  # stream id -> tokens consumed
        self._fed: set[int] = set()  # streams with last logits
        self._full: set[int] = set()  # streams whose partial segment is full, not yet committed
        self._partial_writes = [(self.partial[name], NEW_ROWS[name]) for name in PARTIAL_STATE]
        self._next_id = 0
        # (entry, rows, tokens, parities) -> (feeds, fetches): views built once, reused
        self._calls: dict[tuple, tuple[dict[str, Any], dict[str, Any]]] = {}

    def close(self) -> None:
        """Release the backend (device memory, streams, CUDA graphs); the session is unusable
        afterwards. Also the end of a `with Session(...) as session:` block."""
        self.backend.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- streams -------------------------------------------------------------------------
    @one_thread_at_a_time
    def add_stream(self) -> int:
        row = len(self.row_streams)
        if row == self.max_streams:
            raise RuntimeInputError(
                f"all {self.max_streams} stream slots are in use: remove a stream or open the "
                f"session with a larger max_streams")
        self._clear_row(row)
        stream_id, self._next_id = self._next_id, self._next_id + 1
        self.row_streams.append(stream_id)
        self.rows[stream_id] = row
        self.positions[stream_id] = 0
        return stream_id

    @one_thread_at_a_time
    def remove_stream(self, stream_id: int) -> None:
        hole = self._row(stream_id)
        last = len(self.row_streams) - 1
        if hole != last:  # keep rows packed: the last stream moves into the hole
            self._copy_row(last, hole)
            moved = self.row_streams[last]
            self.row_streams[hole] = moved
            self.rows[moved] = hole
        self.row_streams.pop()
        del self.rows[stream_id], self.positions[stream_id]
        self._fed.discard(stream_id)
        self._full.discard(stream_id)

    @one_thread_at_a_time
    def reset_stream(self, stream_id: int) -> None:
        self._clear_row(self._row(stream_id))
        self.positions[stream_id] = 0
        self._fed.discard(stream_id)
        self._full.discard(stream_id)

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

    def _row_shape(self, name: str) -> tuple[int, ...]:
        return self.specs[name].concrete_shape(1)[1:]

    def _clear_row(self, row: int) -> None:
        for name in self.row_state:
            self.backend.set_row(self._buffer(name), row, 0)
        self.seg_len[row] = 0

    def _copy_row(self, src: int, dst: int) -> None:
        """Move one stream's whole state from row src to row dst (current set only)."""
        for name in self.row_state:
            buffer = self._buffer(name)
            self.backend.copy_rows(buffer, dst, buffer, src, 1)
        self.seg_len[dst] = self.seg_len[src]
        self.last_logits_rows[dst] = self.last_logits_rows[src]

    def _swap_rows(self, a: int, b: int) -> None:
        copy = self.backend.copy_rows
        for name in self.row_state:
            buffer, scratch = self._buffer(name), self.row_scratch[name]
            copy(scratch, 0, buffer, a, 1)
            copy(buffer, a, buffer, b, 1)
            copy(buffer, b, scratch, 0, 1)
        for host in (self.seg_len, self.last_logits_rows):
            host[[a, b]] = host[[b, a]]
        stream_a, stream_b = self.row_streams[a], self.row_streams[b]
        self.row_streams[a], self.row_streams[b] = stream_b, stream_a
        self.rows[stream_a], self.rows[stream_b] = b, a

    def _to_front(self, stream_ids: list[int]) -> int:
        """Swap the given streams into rows [0, r) (r = how many); returns r.

        A call then runs exactly its streams as one contiguous batch. Rows are swapped rather
        than running the prefix up to the highest row: a swap copies two streams' state once,
        far less than computing idle rows; when every stream takes part (decoding, scoring
        equal lengths) nothing moves."""
        count = len(stream_ids)
        taking_part = set(stream_ids)
        outside = [s for s in stream_ids if self.rows[s] >= count]
        if outside:
            holes = [row for row in range(count) if self.row_streams[row] not in taking_part]
            for stream_id, hole in zip(outside, holes, strict=True):
                self._swap_rows(self.rows[stream_id], hole)
        return count

    # ---- feeding ---------------------------------------------------------------------------
    def _check_tokens(self, tokens: Any) -> np.ndarray:
        array = np.asarray(tokens)
        if array.ndim != 1:
            raise RuntimeInputError(f"tokens must be a 1-D sequence, got shape {array.shape}")
        if array.size and array.dtype.kind not in "iu":
            raise RuntimeInputError(f"tokens must be integers, got dtype {array.dtype}")
        if not array.size:
            return array
        # a decode step's one token: Python's min/max beat two numpy reductions
        low, high = (min(values := array.tolist()), max(values)) if array.size <= 8 \
            else (array.min(), array.max())
        if low < 0 or high >= self.dims.vocab_size:
            bad = array[(array < 0) | (array >= self.dims.vocab_size)][0]
            raise RuntimeInputError(
                f"token id {int(bad)} is out of range [0, {self.dims.vocab_size})")
        return array

    @one_thread_at_a_time
    def feed(self, tokens_by_stream: Mapping[int, Iterable[int]],
             want_logits: bool = True) -> dict[int, np.ndarray]:
        """Append tokens to streams; returns each stream's logits [n_tokens, V] (float32).

        Every input is checked before any engine runs, so bad input changes no stream. With
        want_logits=False nothing is copied out but each stream's last logits (read them with
        `last_logits`): the decoding path. If an engine call fails, EngineCallError says how
        far each stream got (see the class docstring)."""
        pending = {}
        for stream_id, tokens in tokens_by_stream.items():
            self._row(stream_id)
            array = self._check_tokens(tokens)
            if array.size:
                pending[stream_id] = array
        vocab = self.dims.vocab_size
        logits = {s: np.empty((len(t), vocab), dtype=np.float32) for s, t in pending.items()}\
            if want_logits else {}
        done = dict.fromkeys(pending, 0)
        try:
            self._feed(pending, done, logits)
        except Exception as exc:
            progress = ", ".join(f"stream {s}: {n} of {len(pending[s])}" for s, n in done.items())
            raise EngineCallError(
                f"an engine call failed during feed ({type(exc).__name__}: {exc}); tokens "
                f"consumed before it: {progress}. Each stream's position counts exactly "
                f"these; feed the rest to continue", dict(done)) from exc
        return logits

    def _feed(self, pending: dict[int, np.ndarray], done: dict[int, int],
              logits: dict[int, np.ndarray]) -> None:
        seg_len = self.dims.seg_len
        host_tokens, row_of, host_seg_len = self.host_tokens, self.rows, self.seg_len
        waiting = [s for s in pending if s in self._full] if self._full else []
        if waiting:  # a commit failed in an earlier feed: rotate those segments first
            self._commit(waiting)
        if len(pending) == 1 and self._decode_step(pending, done, logits):
            return
        left = {s: len(t) for s, t in pending.items()}
        while left:
            streams = [s for s, n in left.items() if n >= seg_len and host_seg_len[row_of[s]] == 0]
            if streams:
                count = seg_len
                batch = self._to_front(streams)
                for s in streams:
                    host_tokens[row_of[s]] = pending[s][done[s]:done[s] + seg_len]
                out = self._run_segment(batch)
            else:
                streams = list(left)
                batch = self._to_front(streams)
                filled = int(host_seg_len[0]) if batch == 1 else int(host_seg_len[:batch].max())
                count = min(min(left.values()), seg_len - filled)
                for s in streams:
                    host_tokens[row_of[s], :count] = pending[s][done[s]:done[s] + count]
                out = self._run_extend(batch, count)
            # The call's effect is in the state: its tokens count as consumed from here on.
            self.backend.copy_last_logits(out, range(batch), count - 1,
                                          self.last_logits_rows[:batch])
            host = self.backend.to_host(out) if logits else None
            for s in streams:
                if logits:
                    logits[s][done[s]:done[s] + count] = host[row_of[s], :count]
                done[s] += count
                self.positions[s] += count
                left[s] -= count
                if not left[s]:
                    del left[s]
            self._fed.update(streams)
            if self._full:
                self._commit(list(self._full))

    def _decode_step(self, pending: dict[int, np.ndarray], done: dict[int, int],
                     logits: dict[int, np.ndarray]) -> bool:
        """One stream whose tokens fit in its partial segment: one extend call (the decoding
        path, kept lean: it is most of a decode step's time outside the engine). False when
        the general loop is needed."""
        ((stream_id, array),) = pending.items()
        row, count = self.rows[stream_id], len(array)
        if int(self.seg_len[row]) + count >= self.dims.seg_len:
            return False
        if row:
            self._to_front([stream_id])
        self.host_tokens[0, :count] = array
        out = self._run_extend(1, count)
        self.backend.copy_last_logits(out, range(1), count - 1, self.last_logits_rows[:1])
        if logits:
            logits[stream_id][:] = self.backend.to_host(out)[0]
        done[stream_id] = count
        self.positions[stream_id] += count
        self._fed.add(stream_id)
        return True

    @one_thread_at_a_time
    def last_logits(self, stream_id: int) -> np.ndarray:
        """Logits [V] after the stream's last token: a view of the session's per-stream row,
        valid until the stream is next fed, moved or removed (copy it to keep it)."""
        row = self._row(stream_id)
        if stream_id not in self._fed:
            raise RuntimeInputError(f"stream {stream_id} has not been fed any tokens yet")
        return self.last_logits_rows[row]

    def _call_io(self, entry: str, batch: int, tokens: int | None = None
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Feeds and fetches of one call on rows [0, batch): views of the first rows of the
        buffers, built once per (entry, batch, tokens, current sets) and reused."""
        key = (entry, batch, tokens, *self.parity.values())
        io = self._calls.get(key)
        if io is None:
            io = self._build_io(entry, batch, tokens)
            self._calls[key] = io
        return io

    def _build_io(self, entry: str, batch: int, tokens: int | None
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
        spec = self.manifest.contract[entry]
        view = self.backend.view

        def buffer_of(name: str) -> Any:
            if name.endswith(OUT_SUFFIX) and name[:-len(OUT_SUFFIX)] in self.parity:
                base = name[:-len(OUT_SUFFIX)]
                return self.memory[1 - self.parity[base]][base]
            if name in self.parity:
                return self.memory[self.parity[name]][name]
            if name == "seg_len":
                return self.seg_len_buf
            return self.partial.get(name, self.scratch.get(name))

        def bound(tensor: Any) -> Any:
            return view(buffer_of(tensor.name), tensor.concrete_shape(batch, tokens))

        return ({t.name: bound(t) for t in spec.inputs}, {t.name: bound(t) for t in spec.outputs})

    def _flip(self, names: Iterable[str], batch: int) -> None:
        """The call on rows [0, batch) succeeded: its written set becomes current; rows
        [batch, k) that sat out are copied into it (one block copy per tensor)."""
        streams = len(self.row_streams)
        for name in names:
            old = self.parity[name]
            if batch < streams:
                self.backend.copy_rows(self.memory[1 - old][name], batch, self.memory[old][name],
                                       batch, streams - batch)
            self.parity[name] = 1 - old

    def _run_segment(self, batch: int) -> Any:
        """Score and rotate rows [0, batch); returns the logits buffer [batch, L, V]."""
        feeds, fetches = self._call_io("segment", batch)
        self.backend.from_host(feeds["tokens"], self.host_tokens[:batch])
        self.backend.run("segment", feeds, fetches)
        self._flip(self.memory_names, batch)
        return fetches["logits"]

    def _run_extend(self, batch: int, count: int) -> Any:
        """Extend rows [0, batch) by `count` tokens; returns the logits buffer [batch, count, V].
        Streams whose partial segment is then full join `_full` (the caller commits them)."""
        feeds, fetches = self._call_io("extend", batch, count)
        backend, seg_len = self.backend, self.seg_len
        backend.from_host(feeds["tokens"], self.host_tokens[:batch, :count])
        backend.from_host(feeds["seg_len"], seg_len[:batch])
        backend.run("extend", feeds, fetches, tokens=count)
        if self.dims.most_used:
            self._flip(["usage"], batch)
        for row in range(batch):
            offset = int(seg_len[row])
            for partial, new in self._partial_writes:
                backend.write_rows(partial, fetches[new], row, offset, count)
            seg_len[row] = offset + count
            if offset + count == self.dims.seg_len:
                self._full.add(self.row_streams[row])
        return fetches["logits"]

    def _commit(self, streams: list[int]) -> None:
        """Rotate the full partial segments of these streams into their memory."""
        batch = self._to_front(streams)
        feeds, fetches = self._call_io("commit", batch)
        self.backend.run("commit", feeds, fetches)
        self._flip(self.memory_names, batch)
        self.seg_len[:batch] = 0
        self._full.difference_update(streams)

    # ---- state access, snapshots ----------------------------------------------------------
    @one_thread_at_a_time
    def stream_state(self, stream_id: int) -> dict[str, np.ndarray]:
        """Host copies of one stream's whole state (memory, partial segment, counts)."""
        row = self._row(stream_id)
        state = {name: self.backend.get_row(self._buffer(name), row)
                 for name in self.row_state}
        state["seg_len"] = np.array(self.seg_len[row], dtype=np.int32)
        return state

    @one_thread_at_a_time
    def snapshot(self, stream_id: int, path: str | Path | None = None) -> bytes | None:
        """One stream's full state and last logits as a snapshot (runtime/snapshot.py, format
        version 2): written to `path` atomically, or returned as bytes when no path is given.
        A stream whose commit failed in an earlier feed is committed first, so a snapshot
        always holds a partial segment shorter than L."""
        if stream_id in self._full:
            self._commit([stream_id])
        state = self.stream_state(stream_id)
        last_logits = self.last_logits_rows[self.rows[stream_id]].copy() \
            if stream_id in self._fed else None
        if path is None:
            return encode_snapshot(self.manifest, state, self.positions[stream_id], last_logits)
        write_snapshot(path, self.manifest, state, self.positions[stream_id], last_logits)
        return None

    @one_thread_at_a_time
    def restore(self, source: str | Path | bytes, stream_id: int | None = None) -> int:
        """Load a snapshot (a path, or its bytes) into a new stream (or over `stream_id`);
        returns the stream id.

        Every check (archive structure, engine identity, names, shapes, dtypes, counts,
        position) runs before a slot is taken or a row written: a refused snapshot changes
        nothing. Restoring over a stream replaces all of it: its last logits become the
        snapshot's (a snapshot without them leaves the stream unfed, like a new one)."""
        if stream_id is not None:
            self._row(stream_id)
        expected = {name: (self._row_shape(name), np.dtype(NUMPY_DTYPES[self.specs[name].dtype]))
                    for name in (*self.row_state, "seg_len")}
        snapshot = read_snapshot(source, self.manifest, expected)
        if stream_id is None:
            stream_id = self.add_stream()
        row = self._row(stream_id)
        for name in self.row_state:  # every state tensor and seg_len: nothing of the old stays
            self.backend.set_row(self._buffer(name), row, snapshot.state[name])
        self.seg_len[row] = snapshot.state["seg_len"]
        self.positions[stream_id] = snapshot.position
        self._full.discard(stream_id)
        if snapshot.last_logits is None:
            self._fed.discard(stream_id)
        else:
            self.last_logits_rows[row] = snapshot.last_logits
            self._fed.add(stream_id)
        return stream_id
