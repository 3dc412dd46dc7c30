// libFuzzer target: the snapshot reader on untrusted bytes, for the engine whose manifest is
// CTRT_FUZZ_MANIFEST (the committed conv engine's by default: the seed snapshots were taken with
// it). A malformed snapshot must end in InputError; any other exception, a crash or a sanitizer
// report is a finding.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "ctrt/contract.hpp"
#include "ctrt/error.hpp"
#include "ctrt/manifest.hpp"
#include "ctrt/snapshot.hpp"

namespace {

struct Engine {
  ctrt::Manifest manifest;
  std::map<std::string, std::pair<ctrt::DType, std::vector<int64_t>>> expected;
};

const Engine& engine() {
  static const Engine loaded = [] {
    const char* path = std::getenv("CTRT_FUZZ_MANIFEST");
    std::ifstream in(path ? path : CTRT_FUZZ_DEFAULT_MANIFEST);
    std::stringstream text;
    text << in.rdbuf();
    Engine out{ctrt::parse_manifest(text.str(), "engine", ctrt::FileChecks::none), {}};
    for (const auto& [name, spec] : ctrt::state_specs(out.manifest.dims)) out.expected[name] = {spec.dtype, spec.row_shape()};
    return out;
  }();
  return loaded;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const Engine& fuzzed = engine();
  try {
    ctrt::read_snapshot(data, size, fuzzed.manifest, fuzzed.expected, "fuzz");
  } catch (const ctrt::InputError&) {
  }
  return 0;
}
