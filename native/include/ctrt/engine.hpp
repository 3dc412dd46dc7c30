// ctrt::Engine: one engine directory, checked and opened: the manifest (every hash verified),
// one read-only mapping of weights.bin whose tensors every ONNX Runtime session is handed
// (AddInitializer: one copy of the weights), and the three sessions with exactly the session
// options of the Python backend (runtime/backends/ort.py, cpu_session_options) and one
// PrepackedWeightsContainer (one prepacked copy shared by the three), running on the process's
// one intra-op thread pool (ort::env; ctrt.h, "Thread budget"). Immutable once open: any
// number of ctrt::Session objects on any threads share it (ONNX Runtime's Run is thread-safe).
#pragma once

#include <memory>
#include <string>

#include "ctrt/contract.hpp"
#include "ctrt/manifest.hpp"

namespace ctrt {

enum class Entry { segment = 0, extend = 1, commit = 2 };
const char* entry_name(Entry entry);

constexpr int kMaxStreams = 65535;  // a session's capacity, and the largest call

struct EngineOptions {
  int threads = 0;               // the process's intra-op pool (ort::env); 0: every online core
  std::string prepack = "all";   // "all", "decode" (extend only) or "none"
  std::string provider = "cpu";  // "cpu", or with CTRT_GPU "cuda" / "tensorrt" (untested)
  int device_id = 0;
  int max_batch = 64;            // the most rows of a call (TensorRT profiles); >= every session's max_streams
};

class Engine {
 public:
  // Everything is checked before anything is loaded; on failure nothing stays loaded.
  static std::shared_ptr<Engine> open(const std::string& engine_dir, const EngineOptions& options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const Manifest& manifest() const { return manifest_; }
  const Dims& dims() const { return manifest_.dims; }
  const EngineOptions& options() const { return options_; }
  std::string backend_name() const;  // "native onnxruntime-cpu", ...

  struct Impl;  // ONNX Runtime objects (src/engine.cpp)
  Impl& impl() const { return *impl_; }

 private:
  Engine(Manifest manifest, EngineOptions options);
  Manifest manifest_;
  EngineOptions options_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ctrt
