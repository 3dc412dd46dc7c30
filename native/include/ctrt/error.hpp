// The native runtime's errors: one root (ctrt::Error) with the kind the C API reports as its
// status code, and a message for people (the file, the tensor, what to change).
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

#include "ctrt/ctrt.h"

namespace ctrt {

class Error : public std::runtime_error {
 public:
  Error(ctrt_status status, const std::string& message)
      : std::runtime_error(message), status_(status) {}
  ctrt_status status() const { return status_; }

 private:
  ctrt_status status_;
};

// Bad input from the caller (token ids, stream ids, snapshots, options): nothing changed.
struct InputError : Error {
  explicit InputError(const std::string& message) : Error(CTRT_INPUT_ERROR, message) {}
};

// An engine directory that cannot be used (manifest, contract, hashes, graphs).
struct EngineError : Error {
  explicit EngineError(const std::string& message) : Error(CTRT_ENGINE_ERROR, message) {}
};

// ONNX Runtime cannot be loaded or lacks what was asked for (library, execution provider).
struct BackendUnavailable : Error {
  explicit BackendUnavailable(const std::string& message)
      : Error(CTRT_BACKEND_UNAVAILABLE, message) {}
};

// A second thread called a Session while another thread's call was still running.
struct ConcurrentUseError : Error {
  explicit ConcurrentUseError(const std::string& message) : Error(CTRT_CONCURRENT_USE, message) {}
};

// An engine call failed during feed: consumed[i] tokens of the feed's i-th stream are in its
// state (and counted by its position); feeding the rest continues as if nothing failed.
struct EngineCallError : Error {
  EngineCallError(const std::string& message, std::vector<size_t> consumed_tokens)
      : Error(CTRT_ENGINE_CALL_FAILED, message), consumed(std::move(consumed_tokens)) {}
  std::vector<size_t> consumed;
};

}  // namespace ctrt
