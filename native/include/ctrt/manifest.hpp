// manifest.json of an engine directory, read and checked as runtime/manifest.py does: format
// and version, the contract of the config, every graph's and the weights file's SHA-256.
#pragma once

#include <map>
#include <memory>
#include <string>

#include <nlohmann/json_fwd.hpp>

#include "ctrt/contract.hpp"

namespace ctrt {

constexpr int kManifestFormatVersion = 3;  // contract v3: state per layer (2: batch-first packed, 1: layer-first)

struct Manifest {
  std::string engine_dir;
  std::shared_ptr<const nlohmann::json> document;  // manifest.json as read
  Dims dims;
  std::map<std::string, EntryPoint> contract;

  const nlohmann::json& data() const { return *document; }
  const nlohmann::json& config() const;
  std::string graph_path(const std::string& entry) const;
  std::string weights_path() const;
  std::string precision() const;  // "fp32" unless the manifest says otherwise
};

// Reads and checks everything before anything is loaded; throws EngineError naming the file.
Manifest load_manifest(const std::string& engine_dir, bool verify_hashes = true);

// What parse_manifest checks of the files a manifest lists: nothing (the weights table is then
// checked against the size the manifest lists), that they exist with the listed size, or their
// SHA-256 as well.
enum class FileChecks { none, exist, hashes };

// load_manifest's checks on manifest.json's text (every field's type and range, the contract of
// the config, the weights table) and then the files of engine_dir as `checks` says.
Manifest parse_manifest(const std::string& text, const std::string& engine_dir, FileChecks checks);

// Every tensor of a weights table lies inside a file of `size` bytes (offset + bytes <= size
// without wrap-around), at an offset aligned to its item size, with a known dtype and shape.
// EngineError naming the tensor (and path, manifest_path) otherwise.
void check_weights_table(const nlohmann::json& tensors, uint64_t size, const std::string& path,
                         const std::string& manifest_path);

// The item size of a weights-table dtype (numpy's name); EngineError naming `what` if unknown.
uint64_t weight_itemsize(const std::string& dtype, const std::string& what);

// Hex SHA-256 of a file (OpenSSL EVP).
std::string sha256_file(const std::string& path);

}  // namespace ctrt
