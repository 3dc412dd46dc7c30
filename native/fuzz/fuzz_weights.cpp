// libFuzzer target: the weights table check. Input: 8 bytes (little-endian file size), then the
// JSON of a manifest's weights.tensors. Whatever the check accepts must lie inside the file:
// each tensor's [offset, offset + bytes) is recomputed here without the checker's code and a
// tensor outside is a finding (trap), as is any exception but EngineError.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include <nlohmann/json.hpp>

#include "ctrt/error.hpp"
#include "ctrt/manifest.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 8) return 0;
  uint64_t file_size = 0;
  std::memcpy(&file_size, data, 8);
  const auto tensors = nlohmann::json::parse(data + 8, data + size, nullptr, false);
  if (tensors.is_discarded()) return 0;
  try {
    ctrt::check_weights_table(tensors, file_size, "weights.bin", "manifest.json");
  } catch (const ctrt::EngineError&) {
    return 0;
  }
  for (const auto& [key, tensor] : tensors.items()) {
    unsigned __int128 bytes = ctrt::weight_itemsize(tensor["dtype"].get<std::string>(), key);
    for (const auto& dim : tensor["shape"]) bytes *= dim.get<uint64_t>();
    if (tensor["offset"].get<uint64_t>() + bytes > file_size) __builtin_trap();
  }
  return 0;
}
