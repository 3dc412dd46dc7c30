#include "ctrt/manifest.hpp"

#include <openssl/evp.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <vector>

#include <nlohmann/json.hpp>

#include "ctrt/error.hpp"

namespace fs = std::filesystem;

namespace ctrt {

namespace {

constexpr const char* kManifestName = "manifest.json";
constexpr const char* kFormat = "compressive-rt-engine";

std::string join(const std::string& dir, const std::string& name) {
  return (fs::path(dir) / name).string();
}

nlohmann::json describe_entry(const EntryPoint& entry) {
  nlohmann::json inputs = nlohmann::json::array(), outputs = nlohmann::json::array();
  for (const auto& spec : entry.inputs) inputs.push_back(spec.to_json());
  for (const auto& spec : entry.outputs) outputs.push_back(spec.to_json());
  return {{"inputs", inputs}, {"outputs", outputs}};
}

// A manifest field that must be a non-negative integer (a negative one would wrap as uint64).
uint64_t unsigned_field(const nlohmann::json& value, const std::string& what) {
  if (!value.is_number_unsigned()) throw EngineError(what + " must be an integer >= 0, got " + value.dump());
  return value.get<uint64_t>();
}

const std::string& string_field(const nlohmann::json& object, const char* key, const std::string& what) {
  if (!object.contains(key) || !object[key].is_string()) {
    throw EngineError(what + " needs a string '" + key + "', got " +
                      (object.contains(key) ? object[key].dump() : std::string("none")));
  }
  return object[key].get_ref<const std::string&>();
}

}  // namespace

void check_weights_table(const nlohmann::json& tensors, uint64_t size, const std::string& path,
                         const std::string& manifest_path) {
  if (!tensors.is_object()) throw EngineError(manifest_path + ": weights.tensors must be an object");
  for (const auto& [key, tensor] : tensors.items()) {
    const std::string what = manifest_path + ": weights tensor " + key;
    if (!tensor.is_object() || !tensor.contains("shape") || !tensor["shape"].is_array() ||
        !tensor.contains("offset")) {
      throw EngineError(what + " needs shape (a list), dtype and offset; re-export");
    }
    const uint64_t itemsize = weight_itemsize(string_field(tensor, "dtype", what), what);
    std::vector<int64_t> shape;
    for (const auto& dim : tensor["shape"]) {
      shape.push_back(static_cast<int64_t>(std::min<uint64_t>(unsigned_field(dim, what + " shape"), kMaxElements + 1)));
    }
    const uint64_t offset = unsigned_field(tensor["offset"], what + " offset");
    const uint64_t bytes = static_cast<uint64_t>(checked_product(shape, what)) * itemsize;
    uint64_t end = 0;
    if (__builtin_add_overflow(offset, bytes, &end) || end > size) {
      throw EngineError(what + " (offset " + std::to_string(offset) + ", " + std::to_string(bytes) +
                        " bytes) does not lie inside " + path + " (" + std::to_string(size) + " bytes); re-export");
    }
    if (offset % itemsize) {
      throw EngineError(what + " offset " + std::to_string(offset) + " is not a multiple of its item size " +
                        std::to_string(itemsize) + "; re-export");
    }
  }
}

namespace {

void check_weights(const std::string& engine_dir, const nlohmann::json& weights,
                   const std::string& manifest_path, FileChecks checks) {
  const std::string what = manifest_path + ": weights";
  const std::string path = join(engine_dir, string_field(weights, "file", what));
  const std::string& listed_sha = string_field(weights, "sha256", what);
  const uint64_t listed_bytes = unsigned_field(weights.value("bytes", nlohmann::json()), what + ".bytes");
  if (checks != FileChecks::none) {
    if (!fs::is_regular_file(path)) {
      throw EngineError(path + " is missing (the weights of every graph, listed in " +
                        manifest_path + "): copy the whole engine directory or re-export");
    }
    const uint64_t size = fs::file_size(path);
    if (size != listed_bytes) {
      throw EngineError(path + " holds " + std::to_string(size) + " bytes, " + manifest_path +
                        " lists " + std::to_string(listed_bytes) +
                        ": the weights file was truncated or replaced; re-export");
    }
  }
  if (checks == FileChecks::hashes && sha256_file(path) != listed_sha) {
    throw EngineError(path + " does not match the sha256 in " + manifest_path +
                      ": the weights were changed after export; re-export");
  }
  check_weights_table(weights.value("tensors", nlohmann::json::object()), listed_bytes, path, manifest_path);
}

// The graph entries: objects with a file, its sha256, and initializers naming listed weights.
void check_entry(const nlohmann::json& entry, const std::string& name, const nlohmann::json& weights,
                 const std::string& path) {
  const std::string what = path + ": entry_points." + name;
  if (!entry.is_object()) throw EngineError(what + " must be an object, got " + entry.dump());
  string_field(entry, "file", what);
  string_field(entry, "sha256", what);
  const auto initializers = entry.value("initializers", nlohmann::json::object());
  if (!initializers.is_object()) throw EngineError(what + ".initializers must be an object");
  const auto tensors = weights.value("tensors", nlohmann::json::object());
  if (!tensors.is_object()) throw EngineError(path + ": weights.tensors must be an object");
  for (const auto& [initializer, key] : initializers.items()) {
    if (!key.is_string() || !tensors.contains(key.get<std::string>())) {
      throw EngineError(what + ".initializers." + initializer + " names " + key.dump() +
                        ", which the weights table does not list; re-export");
    }
  }
}

}  // namespace

uint64_t weight_itemsize(const std::string& dtype, const std::string& what) {
  static const std::map<std::string, uint64_t> sizes = {
      {"float32", 4}, {"float16", 2}, {"float64", 8}, {"int8", 1}, {"uint8", 1},
      {"int32", 4},   {"int64", 8},   {"bool", 1}};
  const auto found = sizes.find(dtype);
  if (found == sizes.end()) {
    throw EngineError(what + " has dtype '" + dtype + "', which the native runtime does not know "
                      "(float32, float16, float64, int8, uint8, int32, int64, bool)");
  }
  return found->second;
}

std::string sha256_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw EngineError("cannot read " + path);
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) {
    throw EngineError("OpenSSL cannot start a SHA-256 digest");
  }
  std::vector<char> block(1 << 20);
  while (in) {
    in.read(block.data(), static_cast<std::streamsize>(block.size()));
    if (in.gcount() > 0) EVP_DigestUpdate(ctx.get(), block.data(), static_cast<size_t>(in.gcount()));
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_DigestFinal_ex(ctx.get(), digest, &length);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < length; ++i) {
    out += hex[digest[i] >> 4];
    out += hex[digest[i] & 15];
  }
  return out;
}

const nlohmann::json& Manifest::config() const { return data().at("config"); }

std::string Manifest::graph_path(const std::string& entry) const {
  return join(engine_dir, data().at("entry_points").at(entry).at("file").get<std::string>());
}

std::string Manifest::weights_path() const {
  return join(engine_dir, data().at("weights").at("file").get<std::string>());
}

std::string Manifest::precision() const { return data().value("precision", std::string("fp32")); }

Manifest load_manifest(const std::string& engine_dir, bool verify_hashes) {
  const std::string path = join(engine_dir, kManifestName);
  if (!fs::is_directory(engine_dir)) throw EngineError("engine directory " + engine_dir + " does not exist");
  if (!fs::is_regular_file(path)) {
    throw EngineError(path + " is missing: export a checkpoint there with `ctrt export`");
  }
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return parse_manifest(text.str(), engine_dir, verify_hashes ? FileChecks::hashes : FileChecks::exist);
}

Manifest parse_manifest(const std::string& text, const std::string& engine_dir, FileChecks checks) {
  const std::string path = join(engine_dir, kManifestName);
  nlohmann::json data;
  try {
    data = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& exc) {  // bad syntax, or a number out of range (1e505)
    throw EngineError(path + " is not valid JSON: " + exc.what());
  }
  if (!data.is_object() || data.value("format", nlohmann::json()) != kFormat) {
    throw EngineError(path + " is not a compressive-rt manifest (format != '" + kFormat + "')");
  }
  if (data.value("format_version", nlohmann::json()) != kManifestFormatVersion) {
    throw EngineError(path + " has format_version " + data.value("format_version", nlohmann::json()).dump() +
                      "; this runtime reads version " + std::to_string(kManifestFormatVersion) +
                      " (contract v3, state per layer): re-export the checkpoint with `ctrt export "
                      "CHECKPOINT " + engine_dir + "`");
  }
  if (!data.contains("config") || !data["config"].is_object()) {
    throw EngineError(path + ": config is incomplete (no config object)");
  }
  Dims dims{};
  try {
    dims = Dims::from_config(data["config"]);
  } catch (const EngineError& exc) {
    throw EngineError(path + ": " + exc.what());
  }
  auto contract = entry_points(dims);
  if (data.contains("precision") && !data["precision"].is_string()) {
    throw EngineError(path + ": precision must be a string, got " + data["precision"].dump());
  }
  // Required: without the entry, the graphs' external weights would load unchecked.
  if (!data.contains("weights") || !data["weights"].is_object()) {
    throw EngineError(path + " lists no weights file: re-export the checkpoint");
  }
  const auto listed = data.value("entry_points", nlohmann::json::object());
  if (!listed.is_object()) throw EngineError(path + ": entry_points must be an object");
  for (const char* name : kEntryPoints) {
    if (!listed.contains(name)) throw EngineError(path + " lists no '" + name + "' graph");
    const auto& entry = listed[name];
    check_entry(entry, name, data["weights"], path);
    const nlohmann::json tensors = {{"inputs", entry.value("inputs", nlohmann::json())},
                                    {"outputs", entry.value("outputs", nlohmann::json())}};
    if (tensors != describe_entry(contract.at(name))) {
      throw EngineError(path + ": the '" + name + "' tensors do not match this runtime's engine "
                        "contract for the config: re-export the checkpoint");
    }
    const std::string graph = join(engine_dir, entry["file"].get<std::string>());
    if (checks != FileChecks::none && !fs::is_regular_file(graph)) {
      throw EngineError(graph + " is missing (listed in " + path + ")");
    }
    if (checks == FileChecks::hashes && entry["sha256"] != sha256_file(graph)) {
      throw EngineError(graph + " does not match the sha256 in " + path +
                        ": the graph was changed or truncated after export");
    }
  }
  check_weights(engine_dir, data["weights"], path, checks);
  return Manifest{engine_dir, std::make_shared<const nlohmann::json>(std::move(data)), dims, std::move(contract)};
}

}  // namespace ctrt
