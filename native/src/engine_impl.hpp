// The ONNX Runtime side of ctrt::Engine, shared with the session (bindings, runs).
#pragma once

#include <array>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "ctrt/engine.hpp"
#include "ort.hpp"

namespace ctrt {

// A read-only memory map of a file, unmapped on destruction.
struct FileMapping {
  void* data = nullptr;
  size_t size = 0;
  explicit FileMapping(const std::string& path);
  ~FileMapping();
  FileMapping(const FileMapping&) = delete;
  FileMapping& operator=(const FileMapping&) = delete;
};

struct Engine::Impl {
  // destroyed in reverse order: sessions, then the prepacked weights and the weight values, then
  // the mapping they view
  std::unique_ptr<FileMapping> weights;
  std::map<std::string, Ort::Value> shared_weights;  // manifest tensor key -> value over the map
  struct ReleasePrepacked {
    void operator()(OrtPrepackedWeightsContainer* container) const {
      Ort::GetApi().ReleasePrepackedWeightsContainer(container);
    }
  };
  // one prepacked copy of the shared weights for the three graphs
  std::unique_ptr<OrtPrepackedWeightsContainer, ReleasePrepacked> prepacked;
  std::array<Ort::Session, 3> sessions{Ort::Session(nullptr), Ort::Session(nullptr),
                                       Ort::Session(nullptr)};
  Ort::MemoryInfo host_memory{Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault)};

  Ort::Session& session(Entry entry) { return sessions[static_cast<int>(entry)]; }
};

ONNXTensorElementDataType onnx_type(DType dtype);

}  // namespace ctrt
