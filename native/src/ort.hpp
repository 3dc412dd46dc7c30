// ONNX Runtime, loaded at run time: the wheel's versioned libonnxruntime.so.<version> is
// dlopen'ed and the C++ API initialized from its OrtGetApiBase (ORT_API_MANUAL_INIT), so the
// binary is tied to no particular wheel. Search order (README "Native runtime"):
//   1. CTRT_ONNXRUNTIME_LIBRARY (a path; an error when it cannot be loaded)
//   2. the active venv: $VIRTUAL_ENV/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.*
//   3. libonnxruntime.so.1 / libonnxruntime.so through the dynamic loader (LD_LIBRARY_PATH, system)
// Any library whose API version is at least the headers' (ORT_API_VERSION) works.
#pragma once

#include <onnxruntime_cxx_api.h>

#include <string>

namespace ctrt::ort {

// Loads the library once per process (thread-safe) and returns the shared environment, created
// with ONNX Runtime's global thread pools: one intra-op pool of `threads` threads (spinning off)
// and no inter-op pool, which every session of every engine uses. The first successful call
// fixes `threads` for the process; a later call with another count throws InputError naming
// both. Throws BackendUnavailable naming every place it looked, and searches again at the next
// call.
Ort::Env& env(int threads);

// False once a session found that the environment has no global pools: the host process created
// ONNX Runtime's one environment (same library) before libctrt, without them. Engines then give
// each graph a pool of its own, as ONNX Runtime's default sessions do.
bool global_pools();
void note_environment_without_global_pools();

// The path of the loaded library ("" before env() first succeeded).
const char* library_path();

}  // namespace ctrt::ort
