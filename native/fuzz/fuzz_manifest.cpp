// libFuzzer target: manifest.json text through every check load_manifest makes but the files
// (the weights table against the size the manifest lists). A malformed manifest must end in
// EngineError; any other exception, a crash or a sanitizer report is a finding.
#include <cstddef>
#include <cstdint>
#include <string>

#include "ctrt/error.hpp"
#include "ctrt/manifest.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    ctrt::parse_manifest(std::string(reinterpret_cast<const char*>(data), size), "engine", ctrt::FileChecks::none);
  } catch (const ctrt::EngineError&) {
  }
  return 0;
}
