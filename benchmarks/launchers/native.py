"""The native runtime (native/, libctrt.so) from Python through its C API, with ctypes.

`NativeEngine` is one loaded engine that sessions share; `NativeSession` has the methods of
`runtime.session.Session` that the tests compare and the benchmark drives (add/remove/reset
stream, feed, last_logits, stream_state, snapshot, restore) plus generation, sampling and the
native loop's own timing. It lives in benchmarks/ because `ctrt bench` runs it as a contender and
the tests import it from here; the runtime itself never needs it (a pipeline without Python
links the library or uses its C API directly).

The library is found at CTRT_NATIVE_LIBRARY, else at build/native/libctrt.so of this checkout
(`cmake -S . -B build && cmake --build build`).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from compressive_rt.errors import BackendUnavailable, EngineError, RuntimeInputError
from compressive_rt.runtime.session import ConcurrentUseError, EngineCallError

LIBRARY_ENV = "CTRT_NATIVE_LIBRARY"
ONNXRUNTIME_ENV = "CTRT_ONNXRUNTIME_LIBRARY"
CHECKOUT = Path(__file__).resolve().parents[2]
DTYPES = {0: np.float32, 1: np.int32}
# ctrt_status -> the project's error for it
CTRT_OK, CTRT_INPUT_ERROR, CTRT_ENGINE_ERROR, CTRT_BACKEND_UNAVAILABLE = 0, 1, 2, 3
CTRT_ENGINE_CALL_FAILED, CTRT_CONCURRENT_USE = 4, 5


def default_library() -> Path:
    return Path(os.environ.get(LIBRARY_ENV) or CHECKOUT / "build" / "native" / "libctrt.so")


class _EngineOptions(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("threads", ctypes.c_int32),
                ("prepack", ctypes.c_char_p), ("provider", ctypes.c_char_p),
                ("device_id", ctypes.c_int32), ("max_batch", ctypes.c_int32)]


class _SessionOptions(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("max_streams", ctypes.c_int32)]


class _Dims(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int64) for name in (
        "vocab_size", "n_layers", "d_model", "n_heads", "seg_len", "mem_len", "cmem_len",
        "max_streams")]


class _TensorInfo(ctypes.Structure):
    _fields_ = [("dtype", ctypes.c_int32), ("ndim", ctypes.c_int32),
                ("shape", ctypes.c_int64 * 8), ("bytes", ctypes.c_size_t)]


class _Sampling(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("greedy", ctypes.c_int32),
                ("temperature", ctypes.c_double), ("top_k", ctypes.c_int32),
                ("top_p", ctypes.c_double), ("seed", ctypes.c_uint64)]


class _Timing(ctypes.Structure):
    _fields_ = [("feed_seconds", ctypes.c_double), ("engine_seconds", ctypes.c_double),
                ("engine_calls", ctypes.c_int64)]


_P = ctypes.c_void_p
_SIGNATURES = {  # name -> (restype, argtypes)
    "ctrt_last_error": (ctypes.c_char_p, []),
    "ctrt_onnxruntime_library": (ctypes.c_char_p, []),
    "ctrt_engine_open": (ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(_EngineOptions),
                                        ctypes.POINTER(_P)]),
    "ctrt_engine_close": (None, [_P]),
    "ctrt_session_open": (ctypes.c_int, [_P, ctypes.POINTER(_SessionOptions),
                                         ctypes.POINTER(_P)]),
    "ctrt_session_close": (None, [_P]),
    "ctrt_session_dims": (ctypes.c_int, [_P, ctypes.POINTER(_Dims)]),
    "ctrt_add_stream": (ctypes.c_int, [_P, ctypes.POINTER(ctypes.c_int64)]),
    "ctrt_remove_stream": (ctypes.c_int, [_P, ctypes.c_int64]),
    "ctrt_reset_stream": (ctypes.c_int, [_P, ctypes.c_int64]),
    "ctrt_streams": (ctypes.c_int, [_P, ctypes.POINTER(ctypes.c_int64), ctypes.c_size_t,
                                    ctypes.POINTER(ctypes.c_size_t)]),
    "ctrt_position": (ctypes.c_int, [_P, ctypes.c_int64, ctypes.POINTER(ctypes.c_int64)]),
    "ctrt_feed": (ctypes.c_int, [_P, ctypes.c_size_t, ctypes.POINTER(ctypes.c_int64),
                                 ctypes.POINTER(_P), ctypes.POINTER(ctypes.c_size_t),
                                 ctypes.POINTER(_P), ctypes.POINTER(ctypes.c_size_t)]),
    "ctrt_last_logits": (ctypes.c_int, [_P, ctypes.c_int64,
                                        ctypes.POINTER(ctypes.POINTER(ctypes.c_float))]),
    "ctrt_state_count": (ctypes.c_size_t, [_P]),
    "ctrt_state_name": (ctypes.c_char_p, [_P, ctypes.c_size_t]),
    "ctrt_state_info": (ctypes.c_int, [_P, ctypes.c_char_p, ctypes.POINTER(_TensorInfo)]),
    "ctrt_stream_state": (ctypes.c_int, [_P, ctypes.c_int64, ctypes.c_char_p, _P,
                                         ctypes.c_size_t]),
    "ctrt_snapshot": (ctypes.c_int, [_P, ctypes.c_int64, ctypes.c_char_p]),
    "ctrt_snapshot_bytes": (ctypes.c_int, [_P, ctypes.c_int64, ctypes.POINTER(_P),
                                           ctypes.POINTER(ctypes.c_size_t)]),
    "ctrt_restore": (ctypes.c_int, [_P, ctypes.c_char_p, ctypes.c_int64,
                                    ctypes.POINTER(ctypes.c_int64)]),
    "ctrt_restore_bytes": (ctypes.c_int, [_P, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int64,
                                          ctypes.POINTER(ctypes.c_int64)]),
    "ctrt_free": (None, [_P]),
    "ctrt_sample": (ctypes.c_int, [_P, ctypes.c_size_t, ctypes.POINTER(_Sampling),
                                   ctypes.c_uint64, ctypes.POINTER(ctypes.c_int32)]),
    "ctrt_uniform": (ctypes.c_double, [ctypes.c_uint64, ctypes.c_uint64]),
    "ctrt_generate": (ctypes.c_int, [_P, ctypes.c_int64, _P, ctypes.c_size_t, ctypes.c_size_t,
                                     ctypes.POINTER(_Sampling), ctypes.POINTER(ctypes.c_char_p),
                                     ctypes.c_size_t, _P, ctypes.POINTER(ctypes.c_size_t)]),
    "ctrt_timing_get": (ctypes.c_int, [_P, ctypes.POINTER(_Timing)]),
    "ctrt_timing_reset": (ctypes.c_int, [_P]),
    "ctrt_fail_next_calls": (ctypes.c_int, [_P, ctypes.c_char_p, ctypes.c_int32]),
}
_loaded: dict[Path, ctypes.CDLL] = {}


def point_at_onnxruntime() -> None:
    """Set CTRT_ONNXRUNTIME_LIBRARY (unless set) to the onnxruntime wheel this interpreter
    imports, for the library and the ctrt-native processes started from here: libctrt records
    no path, and this interpreter's wheel need not live under its VIRTUAL_ENV."""
    if os.environ.get(ONNXRUNTIME_ENV):
        return
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or spec.origin is None:
        return  # the library's own search reports what it tried
    found = sorted((Path(spec.origin).parent / "capi").glob("libonnxruntime.so.*"))
    if found:
        os.environ[ONNXRUNTIME_ENV] = str(found[0])


def load_library(path: str | Path | None = None) -> ctypes.CDLL:
    """The native library with its C API declared (loaded once per path)."""
    path = Path(path) if path else default_library()
    if path not in _loaded:
        if not path.is_file():
            raise BackendUnavailable(
                f"the native runtime library {path} is not built: run `cmake -S . -B build && "
                f"cmake --build build` in the checkout, or set {LIBRARY_ENV}")
        point_at_onnxruntime()
        library = ctypes.CDLL(str(path))
        for name, (restype, argtypes) in _SIGNATURES.items():
            function = getattr(library, name)
            function.restype, function.argtypes = restype, argtypes
        _loaded[path] = library
    return _loaded[path]


def _sampling(greedy: bool, temperature: float, top_k: int, top_p: float,
              seed: int | None) -> _Sampling:
    return _Sampling(ctypes.sizeof(_Sampling), int(greedy), temperature, top_k, top_p,
                     (seed or 0) % 2**64)


def sample(logits: np.ndarray, n: int, *, greedy: bool = False, temperature: float = 1.0,
           top_k: int = 0, top_p: float = 1.0, seed: int | None = 0,
           library: str | Path | None = None) -> int:
    """The token for logits [V] and a request's n-th uniform (Sampling version 2)."""
    lib = load_library(library)
    array = np.ascontiguousarray(logits, dtype=np.float32)
    token = ctypes.c_int32()
    sampling = _sampling(greedy, temperature, top_k, top_p, seed)
    status = lib.ctrt_sample(array.ctypes.data, array.size, ctypes.byref(sampling), n,
                             ctypes.byref(token))
    if status != CTRT_OK:
        raise RuntimeInputError(lib.ctrt_last_error().decode(errors="replace"))
    return token.value


def _raise(lib: ctypes.CDLL, status: int, consumed: dict[int, int] | None = None) -> None:
    """The project's error for a ctrt_status other than CTRT_OK, with ctrt_last_error()."""
    message = lib.ctrt_last_error().decode(errors="replace")
    if status == CTRT_ENGINE_CALL_FAILED:
        raise EngineCallError(message, consumed or {})
    if status == CTRT_CONCURRENT_USE:
        raise ConcurrentUseError(message)
    error = {CTRT_INPUT_ERROR: RuntimeInputError, CTRT_ENGINE_ERROR: EngineError,
             CTRT_BACKEND_UNAVAILABLE: BackendUnavailable}.get(status, EngineError)
    raise error(message)


class _Handle:
    """A library handle, closed by close(), at the end of a with block or when collected."""

    handle: ctypes.c_void_p | None

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> _Handle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


class NativeEngine(_Handle):
    """One loaded native engine (ctrt_engine_open): weights and ONNX Runtime sessions that any
    number of NativeSession objects share. Closing it leaves open sessions working."""

    def __init__(self, engine_dir: str | Path, threads: int | None = None,
                 prepack: str = "all", max_batch: int = 64,
                 library: str | Path | None = None) -> None:
        self.lib = load_library(library)
        options = _EngineOptions(ctypes.sizeof(_EngineOptions), threads or 0, prepack.encode(),
                                 b"cpu", 0, max_batch)
        handle = _P()
        status = self.lib.ctrt_engine_open(str(engine_dir).encode(), ctypes.byref(options),
                                           ctypes.byref(handle))
        if status != CTRT_OK:
            _raise(self.lib, status)
        self.handle = handle

    def close(self) -> None:
        if getattr(self, "handle", None):
            self.lib.ctrt_engine_close(self.handle)
            self.handle = None


class NativeSession(_Handle):
    """One native ctrt::Session (see the module docstring), over a NativeEngine it shares, or
    over an engine of its own opened from a directory with `threads` and `prepack`."""

    def __init__(self, engine: str | Path | NativeEngine, max_streams: int = 1,
                 threads: int | None = None, prepack: str = "all",
                 library: str | Path | None = None) -> None:
        own = None if isinstance(engine, NativeEngine) else NativeEngine(
            engine, threads, prepack, max(64, max_streams), library)
        shared = engine if own is None else own
        self.lib = shared.lib
        options = _SessionOptions(ctypes.sizeof(_SessionOptions), max_streams)
        handle = _P()
        status = self.lib.ctrt_session_open(shared.handle, ctypes.byref(options),
                                            ctypes.byref(handle))
        if own is not None:
            own.close()  # the session holds the engine
        self._check(status)
        self.handle = handle
        dims = _Dims()
        self._check(self.lib.ctrt_session_dims(self.handle, ctypes.byref(dims)))
        self.vocab_size, self.seg_len, self.max_streams = \
            dims.vocab_size, dims.seg_len, dims.max_streams
        self.state_info: dict[str, tuple[np.dtype, tuple[int, ...], int]] = {}
        for index in range(self.lib.ctrt_state_count(self.handle)):
            name = self.lib.ctrt_state_name(self.handle, index)
            info = _TensorInfo()
            self._check(self.lib.ctrt_state_info(self.handle, name, ctypes.byref(info)))
            self.state_info[name.decode()] = (np.dtype(DTYPES[info.dtype]),
                                              tuple(info.shape[:info.ndim]), info.bytes)

    @property
    def onnxruntime_library(self) -> str:
        return self.lib.ctrt_onnxruntime_library().decode()

    def _check(self, status: int, consumed: dict[int, int] | None = None) -> None:
        if status != CTRT_OK:
            _raise(self.lib, status, consumed)

    def close(self) -> None:
        if getattr(self, "handle", None):
            self.lib.ctrt_session_close(self.handle)
            self.handle = None

    # ---- streams ---------------------------------------------------------------------------
    def add_stream(self) -> int:
        stream = ctypes.c_int64()
        self._check(self.lib.ctrt_add_stream(self.handle, ctypes.byref(stream)))
        return stream.value

    def remove_stream(self, stream: int) -> None:
        self._check(self.lib.ctrt_remove_stream(self.handle, stream))

    def reset_stream(self, stream: int) -> None:
        self._check(self.lib.ctrt_reset_stream(self.handle, stream))

    @property
    def streams(self) -> list[int]:
        count = ctypes.c_size_t()
        ids = (ctypes.c_int64 * self.max_streams)()
        self._check(self.lib.ctrt_streams(self.handle, ids, self.max_streams,
                                          ctypes.byref(count)))
        return list(ids[:count.value])

    def position(self, stream: int) -> int:
        position = ctypes.c_int64()
        self._check(self.lib.ctrt_position(self.handle, stream, ctypes.byref(position)))
        return position.value

    # ---- feeding ---------------------------------------------------------------------------
    def feed(self, tokens_by_stream: Mapping[int, Iterable[int]],
             want_logits: bool = True) -> dict[int, np.ndarray]:
        """As Session.feed: each stream's logits [n_tokens, V] (float32), {} without logits."""
        streams = list(tokens_by_stream)
        count = len(streams)
        arrays = [np.ascontiguousarray(tokens_by_stream[s], dtype=np.int32) for s in streams]
        for array, stream in zip(arrays, streams, strict=True):
            if array.ndim != 1:
                raise RuntimeInputError(f"tokens must be a 1-D sequence, got shape {array.shape} "
                                        f"for stream {stream}")
        logits = {s: np.empty((len(a), self.vocab_size), np.float32)
                  for s, a in zip(streams, arrays, strict=True)} if want_logits else {}
        consumed = (ctypes.c_size_t * count)()
        status = self.lib.ctrt_feed(
            self.handle, count, (ctypes.c_int64 * count)(*streams),
            (_P * count)(*(a.ctypes.data for a in arrays)),
            (ctypes.c_size_t * count)(*(len(a) for a in arrays)),
            (_P * count)(*(logits[s].ctypes.data for s in streams)) if want_logits else None,
            consumed)
        self._check(status, {s: consumed[i] for i, s in enumerate(streams) if len(arrays[i])})
        return {s: rows for s, rows in logits.items() if len(rows)}  # as Session: fed streams

    def last_logits(self, stream: int) -> np.ndarray:
        """A copy of the logits [V] after the stream's last token."""
        pointer = ctypes.POINTER(ctypes.c_float)()
        self._check(self.lib.ctrt_last_logits(self.handle, stream, ctypes.byref(pointer)))
        return np.ctypeslib.as_array(pointer, (self.vocab_size,)).copy()

    def stream_state(self, stream: int) -> dict[str, np.ndarray]:
        """Every state tensor of the stream (its row), as Session.stream_state."""
        state = {}
        for name, (dtype, shape, nbytes) in self.state_info.items():
            out = np.empty(shape, dtype)
            self._check(self.lib.ctrt_stream_state(self.handle, stream, name.encode(),
                                                   out.ctypes.data, nbytes))
            state[name] = out
        return state

    # ---- snapshots -------------------------------------------------------------------------
    def snapshot(self, stream: int, path: str | Path) -> None:
        self._check(self.lib.ctrt_snapshot(self.handle, stream, str(path).encode()))

    def snapshot_bytes(self, stream: int) -> bytes:
        data, size = _P(), ctypes.c_size_t()
        self._check(self.lib.ctrt_snapshot_bytes(self.handle, stream, ctypes.byref(data),
                                                 ctypes.byref(size)))
        try:
            return ctypes.string_at(data, size.value)
        finally:
            self.lib.ctrt_free(data)

    def restore(self, path: str | Path, stream: int | None = None) -> int:
        restored = ctypes.c_int64()
        self._check(self.lib.ctrt_restore(self.handle, str(path).encode(),
                                          -1 if stream is None else stream,
                                          ctypes.byref(restored)))
        return restored.value

    def restore_bytes(self, data: bytes, stream: int | None = None) -> int:
        restored = ctypes.c_int64()
        self._check(self.lib.ctrt_restore_bytes(self.handle, data, len(data),
                                                -1 if stream is None else stream,
                                                ctypes.byref(restored)))
        return restored.value

    # ---- generation ------------------------------------------------------------------------
    def generate(self, stream: int, prompt: bytes | Iterable[int], max_new_tokens: int, *,
                 greedy: bool = False, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int | None = 0, stop: Iterable[bytes] = ()
                 ) -> list[int]:
        """Feed the prompt, then sample up to max_new_tokens tokens (Sampling version 2)."""
        prompt_ids = np.ascontiguousarray(np.frombuffer(prompt, np.uint8) if isinstance(
            prompt, bytes) else np.asarray(list(prompt)), dtype=np.int32)
        stops = [bytes(s) for s in stop]
        out = np.empty(max(max_new_tokens, 1), np.int32)
        generated = ctypes.c_size_t()
        sampling = _sampling(greedy, temperature, top_k, top_p, seed)
        self._check(self.lib.ctrt_generate(
            self.handle, stream, prompt_ids.ctypes.data, len(prompt_ids), max_new_tokens,
            ctypes.byref(sampling), (ctypes.c_char_p * len(stops))(*stops) if stops else None,
            len(stops), out.ctypes.data, ctypes.byref(generated)))
        return out[:generated.value].tolist()

    # ---- measurement and tests ---------------------------------------------------------------
    def timing(self) -> dict[str, float]:
        """Seconds inside feed and inside ONNX Runtime's Run since open (or reset_timing)."""
        timing = _Timing()
        self._check(self.lib.ctrt_timing_get(self.handle, ctypes.byref(timing)))
        return {"feed_seconds": timing.feed_seconds, "engine_seconds": timing.engine_seconds,
                "engine_calls": timing.engine_calls}

    def reset_timing(self) -> None:
        self._check(self.lib.ctrt_timing_reset(self.handle))

    def fail_next_calls(self, entry: str, count: int = 1) -> None:
        """The next `count` Run calls of `entry` start with ONNX Runtime's terminate flag."""
        self._check(self.lib.ctrt_fail_next_calls(self.handle, entry.encode(), count))
