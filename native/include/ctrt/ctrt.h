/* The C API of the native compressive-rt runtime.
 *
 * An engine is one engine directory (`ctrt export`) loaded, checked and prepared once: the
 * weights mapped, the three ONNX Runtime sessions created with one set of prepacked weights
 * shared between them. A session serves up to max_streams streams over an engine, exactly as
 * Python's compressive_rt.runtime.session.Session does: the same engine calls, the same numbers,
 * the same snapshot format. Many sessions, on many threads, share one engine; each holds only
 * its streams' state.
 *
 * Handles are opaque. Every function returns a ctrt_status; on anything but CTRT_OK the message
 * is ctrt_last_error(), a string owned by the library that stays valid in the calling thread
 * until that thread's next call.
 *
 * Handles are ids, not pointers: a closed handle, or anything that is not an open handle of
 * this library (an engine handle passed for a session included), is answered with
 * CTRT_INPUT_ERROR ("session is NULL, closed or not a session handle"), never dereferenced. Closing a session while another thread is inside a call on it
 * is safe: the session is freed when that call returns.
 *
 * Threads: a session is used from one thread at a time. A call made while another thread is
 * inside a call on the same session returns CTRT_CONCURRENT_USE at once and changes nothing;
 * this holds for every call on a session, readers (ctrt_position, ctrt_streams,
 * ctrt_stream_state, ctrt_last_logits, ctrt_timing_get) included. What is fixed when a session
 * opens may be read from any thread at any time: ctrt_session_dims, ctrt_state_count,
 * ctrt_state_name, ctrt_state_info. Serialize the rest with your own lock, or open one session
 * per thread. Functions without a session (ctrt_sample, ctrt_uniform, ctrt_version,
 * ctrt_last_error, ctrt_onnxruntime_library) may be called from any thread.
 *
 * Thread budget: one ONNX Runtime intra-op pool per process (ONNX Runtime's global thread
 * pools: an environment created with CreateEnvWithGlobalThreadPools, spinning off, no inter-op
 * pool; every graph's session made with DisablePerSessionThreads), shared by the three graphs of
 * every engine and by every session on any thread, so a process runs threads - 1 pool threads
 * (the calling thread is the pool's first) whatever the number of engines, instead of
 * 3 x (threads - 1) per engine. The first engine opened fixes the pool's size for the life of
 * the process (0 counts as the online cores); an engine opened later with another count is
 * refused with CTRT_INPUT_ERROR naming both ("threads 2 differs from this process's ONNX
 * Runtime thread pool of 1, ..."). Refused rather than silently shared, so that no engine runs
 * with a thread count (and, above one thread, numbers) other than the one it asked for.
 *
 * A host process that uses ONNX Runtime itself: ONNX Runtime has one environment per loaded
 * library, and its first creator's threading options win.
 * - A different libonnxruntime (Python's onnxruntime module, whose extension carries its own
 *   copy; another file): a separate environment; nothing is shared, each side keeps its pools.
 * - The same library file, environment created by the host before libctrt's first engine: that
 *   environment is libctrt's. Created with global thread pools, every engine's graphs run on the
 *   host's pool, whatever `threads` says (engines must still agree on `threads`). Created
 *   without (CreateEnv), ONNX Runtime refuses sessions without threads of their own: libctrt
 *   then gives each graph an intra-op pool of `threads` threads, 3 x (threads - 1) per engine,
 *   for the rest of the process.
 * - The same library, environment created by the host after libctrt: the host gets libctrt's
 *   environment; its sessions with threads of their own (ONNX Runtime's default) are unchanged.
 *
 * Token ids are int32 in [0, vocab). Stream ids are int64, assigned from 0 upwards, never reused
 * within a session.
 */
#ifndef CTRT_CTRT_H
#define CTRT_CTRT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The library exports these functions and nothing else. */
#if defined(CTRT_BUILDING)
#define CTRT_API __attribute__((visibility("default")))
#else
#define CTRT_API
#endif

typedef enum ctrt_status {
  CTRT_OK = 0,
  CTRT_INPUT_ERROR = 1,         /* bad argument, stream id, token or snapshot: nothing changed */
  CTRT_ENGINE_ERROR = 2,        /* the engine directory cannot be used (manifest, hashes, graphs) */
  CTRT_BACKEND_UNAVAILABLE = 3, /* ONNX Runtime or an execution provider cannot be loaded */
  CTRT_ENGINE_CALL_FAILED = 4,  /* an engine call failed during feed: see ctrt_feed */
  CTRT_CONCURRENT_USE = 5,      /* another thread is inside a call on this session */
  CTRT_INTERNAL_ERROR = 6       /* a bug: please report it with the message */
} ctrt_status;

typedef struct ctrt_engine ctrt_engine;
typedef struct ctrt_session ctrt_session;

/* Options structs: start from their _default() function. struct_size is how the library tells
 * which version of the struct a caller was built with, so that later versions can add fields
 * without breaking callers built against this one. */

/* What an engine is prepared with, for every session over it. */
typedef struct ctrt_engine_options {
  size_t struct_size;   /* sizeof(ctrt_engine_options) of the caller's header */
  int32_t threads;      /* ONNX Runtime intra-op threads, at most the machine's online cores;
                           0: every core (default 0). A process budget, not a per-engine one:
                           see "Thread budget" above */
  const char* prepack;  /* "all" (default), "decode" or "none": which graphs prepack weights */
  const char* provider; /* "cpu" (default), "cuda" or "tensorrt" (builds with CTRT_GPU) */
  int32_t device_id;    /* GPU for cuda / tensorrt (default 0, >= 0) */
  int32_t max_batch;    /* the most rows of a call the graphs are prepared for: the TensorRT
                           profiles; a session's max_streams may not exceed it (default 64) */
} ctrt_engine_options;

/* What one session holds. */
typedef struct ctrt_session_options {
  size_t struct_size;   /* sizeof(ctrt_session_options) of the caller's header */
  int32_t max_streams;  /* capacity: streams at once (default 1) */
} ctrt_session_options;

typedef struct ctrt_dims {
  int64_t vocab_size, n_layers, d_model, n_heads, seg_len, mem_len, cmem_len, max_streams;
} ctrt_dims;

/* One stream's row of a state tensor: dtype 0 float32, 1 int32; row shape without the batch. */
typedef struct ctrt_tensor_info {
  int32_t dtype;
  int32_t ndim;
  int64_t shape[8];
  size_t bytes;
} ctrt_tensor_info;

/* Sampling version 2 (docs/DESIGN.md, "Sampling"): greedy takes the first index of the maximum; otherwise
 * temperature, top-k (0: off), top-p (1: off) and the n-th uniform of splitmix64 seeded with
 * seed. Start from ctrt_sampling_default() (struct_size as in ctrt_session_options). */
typedef struct ctrt_sampling {
  size_t struct_size;  /* sizeof(ctrt_sampling) of the caller's header */
  int32_t greedy;
  double temperature;
  int32_t top_k;
  double top_p;
  uint64_t seed;
} ctrt_sampling;

/* Seconds accumulated by a session since it opened (or ctrt_reset_timing): inside feed
 * (from entering it to returning), inside ONNX Runtime's Run, and the number of Run calls.
 * feed_seconds - engine_seconds is the loop's time outside engine calls. */
typedef struct ctrt_timing {
  double feed_seconds;
  double engine_seconds;
  int64_t engine_calls;
} ctrt_timing;

CTRT_API const char* ctrt_version(void);
CTRT_API const char* ctrt_last_error(void);
/* The ONNX Runtime library the process loaded (empty before the first engine opens). It is
 * searched when an engine first opens, in this order: the path in CTRT_ONNXRUNTIME_LIBRARY
 * (only it, when set); the onnxruntime wheel of the virtual environment in VIRTUAL_ENV;
 * libonnxruntime.so.1 and libonnxruntime.so through the dynamic loader (LD_LIBRARY_PATH, the
 * system's folders). A failed search is made again at the next open, so fixing the
 * environment needs no restart. A host process that uses the same libonnxruntime itself
 * shares ONNX Runtime's one environment per library with libctrt (ONNX Runtime counts its
 * users; "Thread budget" above says whose thread pools run); libctrt's own ONNX Runtime API
 * pointer is private to it, so neither overwrites the other's. */
CTRT_API const char* ctrt_onnxruntime_library(void);

CTRT_API ctrt_engine_options ctrt_engine_options_default(void);
/* Load and check an engine directory (manifest, contract, every hash) and open its graphs;
 * options may be NULL (defaults). Engines of contract v3 (manifest format_version 3) are read; an
 * older one is CTRT_ENGINE_ERROR saying to re-export it (`ctrt export CHECKPOINT OUT`). On failure *out is NULL and nothing stays loaded. An engine
 * may be used from any thread; ctrt_session_open on it is safe concurrently. */
CTRT_API ctrt_status ctrt_engine_open(const char* engine_dir, const ctrt_engine_options* options,
                                      ctrt_engine** out);
/* The engine stays loaded while sessions over it are open; NULL and a closed handle are
 * accepted and do nothing. */
CTRT_API void ctrt_engine_close(ctrt_engine* engine);

CTRT_API ctrt_session_options ctrt_session_options_default(void);
/* A session over an open engine; options may be NULL (defaults). */
CTRT_API ctrt_status ctrt_session_open(ctrt_engine* engine, const ctrt_session_options* options,
                                       ctrt_session** out);
/* NULL, and a handle closed before, are accepted and do nothing. */
CTRT_API void ctrt_session_close(ctrt_session* session);

CTRT_API ctrt_status ctrt_session_dims(ctrt_session* session, ctrt_dims* out);

CTRT_API ctrt_status ctrt_add_stream(ctrt_session* session, int64_t* stream_id);
CTRT_API ctrt_status ctrt_remove_stream(ctrt_session* session, int64_t stream_id);
CTRT_API ctrt_status ctrt_reset_stream(ctrt_session* session, int64_t stream_id);
/* Writes up to capacity ids in the order the streams were added; *count is how many there are. */
CTRT_API ctrt_status ctrt_streams(ctrt_session* session, int64_t* ids, size_t capacity, size_t* count);
CTRT_API ctrt_status ctrt_position(ctrt_session* session, int64_t stream_id, int64_t* position);

/* Append tokens to streams: tokens[i] (counts[i] of them) to stream_ids[i]. Every input is
 * checked before any engine runs. logits may be NULL; else logits[i] is NULL or points at
 * counts[i] * vocab floats that receive stream i's logits, one row per token. consumed may be
 * NULL; else it receives, per stream, the tokens of this feed whose effect is in its state: all
 * of them on CTRT_OK; on CTRT_ENGINE_CALL_FAILED the tokens consumed before the failed call
 * (each stream's position counts exactly these; feed the rest to continue). */
CTRT_API ctrt_status ctrt_feed(ctrt_session* session, size_t n_streams, const int64_t* stream_ids,
                      const int32_t* const* tokens, const size_t* counts, float* const* logits,
                      size_t* consumed);
/* Logits [vocab] after the stream's last token: a pointer into the session, valid until the
 * next call on it. CTRT_INPUT_ERROR when the stream has not been fed. */
CTRT_API ctrt_status ctrt_last_logits(ctrt_session* session, int64_t stream_id, const float** logits);

/* State tensors of a stream, by index 0..ctrt_state_count()-1 (engine's tensors and seg_len). */
CTRT_API size_t ctrt_state_count(ctrt_session* session);
/* NULL when out of range; the name stays valid until the session closes */
CTRT_API const char* ctrt_state_name(ctrt_session* session, size_t index);
CTRT_API ctrt_status ctrt_state_info(ctrt_session* session, const char* name, ctrt_tensor_info* info);
/* Copies one stream's row of state tensor `name` (info.bytes bytes) into out, in logical order
 * ([n_layers, ...] for a per-layer tensor, whatever the layout of the session's buffers). */
CTRT_API ctrt_status ctrt_stream_state(ctrt_session* session, int64_t stream_id, const char* name,
                              void* out, size_t bytes);

/* Snapshots in the format of runtime/snapshot.py: version 3 is written, 1 to 3 are read. A file
 * is written atomically. */
CTRT_API ctrt_status ctrt_snapshot(ctrt_session* session, int64_t stream_id, const char* path);
/* *bytes is allocated by the library: release it with ctrt_free. */
CTRT_API ctrt_status ctrt_snapshot_bytes(ctrt_session* session, int64_t stream_id, uint8_t** bytes,
                                size_t* size);
/* Restore into a new stream (stream_id < 0) or over an existing one; *restored gets its id.
 * Every check runs before a slot is taken or a row written: a refused snapshot changes nothing.
 * A snapshot restores when it was taken with this engine's model config and its engine identity
 * is this engine's, or both name the same checkpoint (not null) and precision (a snapshot
 * without a precision, version 1 or 2, counts as fp32): a contract v2 snapshot goes into the v3
 * engine re-exported from its checkpoint, exactly. */
CTRT_API ctrt_status ctrt_restore(ctrt_session* session, const char* path, int64_t stream_id,
                         int64_t* restored);
CTRT_API ctrt_status ctrt_restore_bytes(ctrt_session* session, const uint8_t* bytes, size_t size,
                               int64_t stream_id, int64_t* restored);
CTRT_API void ctrt_free(void* pointer);

/* greedy 0, temperature 1, top_k 0, top_p 1, seed 0 */
CTRT_API ctrt_sampling ctrt_sampling_default(void);
/* Sampling version 2: the token for logits[vocab] and the request's n-th uniform. */
CTRT_API ctrt_status ctrt_sample(const float* logits, size_t vocab, const ctrt_sampling* sampling,
                        uint64_t n, int32_t* token);
/* u_n = (splitmix64 output n of seed >> 11) * 2^-53 */
CTRT_API double ctrt_uniform(uint64_t seed, uint64_t n);
/* Generate on a stream: feed the prompt (may be empty when the stream has been fed), then
 * sample max_new_tokens tokens (stopping early when a generated suffix equals one of the
 * n_stops stop byte strings), feeding each one, the last included. out receives up to
 * max_new_tokens tokens; *generated how many. */
CTRT_API ctrt_status ctrt_generate(ctrt_session* session, int64_t stream_id, const int32_t* prompt,
                          size_t prompt_count, size_t max_new_tokens,
                          const ctrt_sampling* sampling, const char* const* stops,
                          size_t n_stops, int32_t* out, size_t* generated);

CTRT_API ctrt_status ctrt_timing_get(ctrt_session* session, ctrt_timing* out);
CTRT_API ctrt_status ctrt_timing_reset(ctrt_session* session);

/* For tests of the failure semantics: the next `count` ONNX Runtime calls of entry point
 * `entry` ("segment", "extend", "commit") are started with ONNX Runtime's terminate flag set, so
 * Run itself fails as a real engine call failure would. */
CTRT_API ctrt_status ctrt_fail_next_calls(ctrt_session* session, const char* entry, int32_t count);

#ifdef __cplusplus
}
#endif

#endif /* CTRT_CTRT_H */
