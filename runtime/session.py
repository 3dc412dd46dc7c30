"""The lean loop: streams of one engine, their memory rotation around the compiled entry points.

A Session serves up to `max_streams` streams. `feed` asks the planner (runtime/planner.py)
which calls a feed makes and runs them: `segment` for whole segments at a boundary, `extend`
for partial ones, `commit` when a partial segment is full. The slot pool (runtime/slots.py)
keeps the streams packed in rows [0, k) and brings a call's streams to the front rows; the
buffers and bound calls live in runtime/buffers.py.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from compressive_rt.errors import EngineError, RuntimeInputError
from compressive_rt.runtime.backends.base import NUMPY_DTYPES, Backend
from compressive_rt.runtime.backends.registry import open_backend
from compressive_rt.runtime.buffers import FILL_INPUT, BoundCall, StateBuffers
from compressive_rt.runtime.contract import Dims
from compressive_rt.runtime.manifest import load_manifest
from compressive_rt.runtime.planner import COMMIT, EXTEND, SEGMENT, plan_feed
from compressive_rt.runtime.slots import SlotPool
from compressive_rt.runtime.snapshot import encode_snapshot, read_snapshot, write_snapshot


class ConcurrentUseError(RuntimeInputError):
    """A second thread called a Session while another thread's call was still running."""


class EngineCallError(EngineError):
    """An engine call failed during `feed`. Each stream's position still equals the tokens
    whose effect is in its state; `consumed` maps stream id -> tokens of this feed consumed."""

    def __init__(self, message: str, consumed: dict[int, int]) -> None:
        super().__init__(message)
        self.consumed = consumed


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


class Session:
    """Streams of one engine, packed in rows [0, k) of preallocated buffers (see module doc).

    Public API: add_stream, remove_stream, reset_stream, feed, last_logits, has_last_logits,
    gather_last_logits, position, streams, stream_state, snapshot, restore. Stream ids never
    change; rows do (removing a stream moves the last row into its place, and a call's streams
    are swapped into the front rows).

    Threads: a Session is used from one thread at a time. A call made while another thread is
    inside one of its methods raises ConcurrentUseError at once (nothing changes); serialize
    calls with your own lock or use one Session per thread.

    Failures: if an engine call raises during `feed`, no stream's committed state changes for
    that call (ping-pong: the written bank is not flipped in), calls that succeeded before it
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
        self.max_streams = max_streams
        self.slots = SlotPool(max_streams)
        self.buffers = StateBuffers(self.backend, self.manifest, max_streams)
        self.positions: dict[int, int] = {}  # stream id -> tokens consumed
        self._fed: set[int] = set()  # streams with last logits

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
        stream_id, row = self.slots.add()
        self.buffers.clear_row(row)
        self.positions[stream_id] = 0
        return stream_id

    @one_thread_at_a_time
    def remove_stream(self, stream_id: int) -> None:
        last, hole = self.slots.remove(stream_id)
        if hole != last:  # keep rows packed: the last stream moves into the hole
            self.buffers.move_row(last, hole)
        del self.positions[stream_id]
        self._fed.discard(stream_id)

    @one_thread_at_a_time
    def reset_stream(self, stream_id: int) -> None:
        self.buffers.clear_row(self.slots.row(stream_id))
        self.positions[stream_id] = 0
        self._fed.discard(stream_id)

    @property
    def streams(self) -> list[int]:
        return list(self.slots.rows)

    def position(self, stream_id: int) -> int:
        self.slots.row(stream_id)
        return self.positions[stream_id]

    def _to_front(self, stream_ids: list[int]) -> int:
        """Bring these streams into rows [0, r) (r = how many); returns r."""
        for a, b in self.slots.to_front(stream_ids):
            self.buffers.swap_rows(a, b)
        return len(stream_ids)

    # ---- feeding ---------------------------------------------------------------------------
    def _check_tokens(self, tokens: Any) -> np.ndarray:
        array = np.asarray(tokens)
        if array.ndim != 1:
            raise RuntimeInputError(f"tokens must be a 1-D sequence, got shape {array.shape}")
        kind = array.dtype.kind
        if array.size and kind not in "iu":
            raise RuntimeInputError(f"tokens must be integers, got dtype {array.dtype}")
        vocab = self.dims.vocab_size
        if not array.size or (kind == "u" and 1 << 8 * array.itemsize <= vocab):
            return array  # bytes for a byte vocabulary: every value is a token
        # one reduction: seen unsigned, a negative id is larger than any vocabulary
        unsigned = array.view(array.dtype.str.replace("i", "u"))
        if int(unsigned.max()) >= vocab:
            bad = array[(array < 0) | (array >= vocab)][0]
            raise RuntimeInputError(f"token id {int(bad)} is out of range [0, {vocab})")
        return array

    @one_thread_at_a_time
    def feed(self, tokens_by_stream: Mapping[int, Iterable[int]], want_logits: bool = True,
             check: bool = True) -> dict[int, np.ndarray]:
        """Append tokens to streams; returns each stream's logits [n_tokens, V] (float32).

        Every input is checked before any engine runs, so bad input changes no stream. With
        want_logits=False nothing is copied out but each stream's last logits (read them with
        `last_logits`): the decoding path. check=False skips the checks for token arrays the
        caller already made valid (1-D integer arrays in range, for streams of this session:
        the scheduler's own prompts and samples). If an engine call fails, EngineCallError
        says how far each stream got (see the class docstring)."""
        streams, arrays = [], []
        for stream_id, tokens in tokens_by_stream.items():
            if check:
                self.slots.row(stream_id)
                tokens = self._check_tokens(tokens)
            if len(tokens):
                streams.append(stream_id)
                arrays.append(tokens)
        vocab = self.dims.vocab_size
        logits = {s: np.empty((len(a), vocab), dtype=np.float32)
                  for s, a in zip(streams, arrays, strict=True)} if want_logits else {}
        done = [0] * len(streams)
        try:
            self._feed(streams, arrays, done, logits)
        except Exception as exc:
            progress = ", ".join(f"stream {s}: {n} of {len(a)}"
                                 for s, n, a in zip(streams, done, arrays, strict=True))
            raise EngineCallError(
                f"an engine call failed during feed ({type(exc).__name__}: {exc}); tokens "
                f"consumed before it: {progress}. Each stream's position counts exactly "
                f"these; feed the rest to continue", dict(zip(streams, done, strict=True))) \
                from exc
        return logits

    def _feed(self, streams: list[int], arrays: list[np.ndarray], done: list[int],
              logits: dict[int, np.ndarray]) -> None:
        """Run the planned calls; done[i] counts the tokens of arrays[i] consumed so far."""
        rows, buffers, backend = self.slots.rows, self.buffers, self.backend
        fills = buffers.fills.tolist()
        plan = plan_feed([fills[rows[s]] for s in streams], [len(a) for a in arrays],
                         self.dims.seg_len)
        positions = self.positions
        for entry, members, count in plan:
            ids = [streams[i] for i in members]
            batch = self._to_front(ids)
            if entry == COMMIT:
                self._run_commit(batch)
                continue
            call = buffers.call(entry, batch, count if entry == EXTEND else None)
            tokens = call.host_tokens
            for i in members:
                tokens[rows[streams[i]], :count] = arrays[i][done[i]:done[i] + count]
            out = self._run_segment(call, batch) if entry == SEGMENT else \
                self._run_extend(call, batch, count)
            # The call's effect is in the state: its tokens count as consumed from here on.
            backend.copy_last_logits(out, count - 1, buffers.last_logits)
            if logits:
                host = backend.to_host(out)
                for i in members:
                    stream = streams[i]
                    logits[stream][done[i]:done[i] + count] = host[rows[stream], :count]
            for i in members:
                done[i] += count
                positions[streams[i]] += count
            self._fed.update(ids)

    def _run_segment(self, call: BoundCall, batch: int) -> Any:
        """Score and rotate rows [0, batch); returns the logits buffer [batch, L, V]."""
        for device, host in call.uploads:
            self.backend.from_host(device, host)
        self.backend.run(call.handle)
        self.buffers.flip(self.buffers.memory_names, batch, len(self.slots))
        return call.fetches["logits"]

    def _run_extend(self, call: BoundCall, batch: int, count: int) -> Any:
        """Extend rows [0, batch) by `count` tokens; returns the logits buffer
        [batch, count, V]. Their partial fills grow by count (a full one is committed next)."""
        backend = self.backend
        for device, host in call.uploads:
            backend.from_host(device, host)
        backend.run(call.handle)
        if self.dims.most_used:
            self.buffers.flip(("usage",), batch, len(self.slots))
        self.buffers.write_new_rows(call, count)
        return call.fetches["logits"]

    def _run_commit(self, batch: int) -> None:
        """Rotate the full partial segments of rows [0, batch) into their memory."""
        call = self.buffers.call(COMMIT, batch)
        self.backend.run(call.handle)
        self.buffers.flip(self.buffers.memory_names, batch, len(self.slots))
        self.buffers.fills[:batch] = 0

    @one_thread_at_a_time
    def last_logits(self, stream_id: int) -> np.ndarray:
        """Logits [V] after the stream's last token: a view of the session's per-stream row,
        valid until the stream is next fed, moved or removed (copy it to keep it)."""
        row = self.slots.row(stream_id)
        if stream_id not in self._fed:
            raise RuntimeInputError(f"stream {stream_id} has not been fed any tokens yet")
        return self.buffers.last_logits[row]

    def has_last_logits(self, stream_id: int) -> bool:
        """Whether the stream has been fed since it was added, reset or restored."""
        self.slots.row(stream_id)
        return stream_id in self._fed

    def gather_last_logits(self, stream_ids: Sequence[int], out: np.ndarray) -> np.ndarray:
        """The last logits of several streams into out[:n] ([n, V] float32), one gather:
        sampling a batch of requests at once. Every stream must have been fed."""
        if not self._fed.issuperset(stream_ids):
            missing = sorted(set(stream_ids) - self._fed)
            raise RuntimeInputError(f"stream(s) {missing} have no last logits: not in this "
                                    f"session, or not fed any tokens yet")
        rows = self.slots.rows
        return np.take(self.buffers.last_logits, [rows[s] for s in stream_ids], axis=0,
                       out=out[:len(stream_ids)])

    # ---- state access, snapshots ----------------------------------------------------------
    @one_thread_at_a_time
    def stream_state(self, stream_id: int) -> dict[str, np.ndarray]:
        """Host copies of one stream's whole state (memory, partial segment, counts)."""
        row = self.slots.row(stream_id)
        buffers = self.buffers
        state = {name: buffers.get_row(name, row) for name in buffers.row_state}
        state[FILL_INPUT] = np.array(buffers.fills[row], dtype=np.int32)
        return state

    @one_thread_at_a_time
    def snapshot(self, stream_id: int, path: str | Path | None = None) -> bytes | None:
        """One stream's full state and last logits as a snapshot (runtime/snapshot.py, format
        version 3): written to `path` atomically, or returned as bytes when no path is given.
        A stream whose commit failed in an earlier feed is committed first, so a snapshot
        always holds a partial segment shorter than L."""
        if self.buffers.fills[self.slots.row(stream_id)] == self.dims.seg_len:
            self._run_commit(self._to_front([stream_id]))
        state = self.stream_state(stream_id)
        last_logits = self.buffers.last_logits[self.slots.row(stream_id)].copy() \
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
            self.slots.row(stream_id)
        buffers = self.buffers
        expected = {name: (buffers.row_shape(name),
                           np.dtype(NUMPY_DTYPES[buffers.specs[name].dtype]))
                    for name in (*buffers.row_state, FILL_INPUT)}
        snapshot = read_snapshot(source, self.manifest, expected)
        if stream_id is None:
            stream_id = self.add_stream()
        row = self.slots.row(stream_id)
        for name in buffers.row_state:  # every state tensor and the fill: nothing old stays
            buffers.set_row(name, row, snapshot.state[name])
        buffers.fills[row] = snapshot.state[FILL_INPUT]
        self.positions[stream_id] = snapshot.position
        if snapshot.last_logits is None:
            self._fed.discard(stream_id)
        else:
            buffers.last_logits[row] = snapshot.last_logits
            self._fed.add(stream_id)
        return stream_id
