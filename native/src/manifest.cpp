#include "ctrt/manifest.hpp"

#include <openssl/evp.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
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

void check_weights(const std::string& engine_dir, const nlohmann::json& weights,
                   const std::string& manifest_path, bool verify_hashes) {
  std::string path;
  uint64_t listed_bytes = 0;
  std::string listed_sha;
  try {
    path = join(engine_dir, weights.at("file").get<std::string>());
    listed_bytes = weights.at("bytes").get<uint64_t>();
    listed_sha = weights.at("sha256").get<std::string>();
  } catch (const nlohmann::json::exception&) {
    throw EngineError(manifest_path + ": the weights entry needs file, bytes and sha256; re-export");
  }
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
  if (verify_hashes && sha256_file(path) != listed_sha) {
    throw EngineError(path + " does not match the sha256 in " + manifest_path +
                      ": the weights were changed after export; re-export");
  }
  // every tensor the graphs are handed lies inside the file
  const auto& tensors = weights.value("tensors", nlohmann::json::object());
  for (const auto& [key, tensor] : tensors.items()) {
    try {
      uint64_t count = 1;
      for (const auto& dim : tensor.at("shape")) count *= dim.get<uint64_t>();
      const std::string dtype = tensor.at("dtype").get<std::string>();
      const uint64_t itemsize = dtype == "float64" || dtype == "int64" ? 8
                                : dtype == "float16" || dtype == "int16" || dtype == "uint16" ? 2
                                : dtype == "int8" || dtype == "uint8" || dtype == "bool" ? 1 : 4;
      if (tensor.at("offset").get<uint64_t>() + count * itemsize > size) throw std::out_of_range("");
    } catch (const std::exception&) {
      throw EngineError(manifest_path + ": weights tensor " + key +
                        " does not lie inside " + path + "; re-export");
    }
  }
}

}  // namespace

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
  nlohmann::json data;
  {
    std::ifstream in(path, std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    try {
      data = nlohmann::json::parse(text.str());
    } catch (const nlohmann::json::parse_error& exc) {
      throw EngineError(path + " is not valid JSON: " + exc.what());
    }
  }
  if (!data.is_object() || data.value("format", nlohmann::json()) != kFormat) {
    throw EngineError(path + " is not a compressive-rt manifest (format != '" + kFormat + "')");
  }
  if (data.value("format_version", nlohmann::json()) != kManifestFormatVersion) {
    throw EngineError(path + " has format_version " + data.value("format_version", nlohmann::json()).dump() +
                      "; this runtime reads version 2 (contract v2, batch-first): re-export the "
                      "checkpoint with `ctrt export CHECKPOINT " + engine_dir + "`");
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
  const auto listed = data.value("entry_points", nlohmann::json::object());
  for (const char* name : kEntryPoints) {
    if (!listed.is_object() || !listed.contains(name)) {
      throw EngineError(path + " lists no '" + name + "' graph");
    }
    const auto& entry = listed[name];
    const nlohmann::json tensors = {{"inputs", entry.value("inputs", nlohmann::json())},
                                    {"outputs", entry.value("outputs", nlohmann::json())}};
    if (tensors != describe_entry(contract.at(name))) {
      throw EngineError(path + ": the '" + name + "' tensors do not match this runtime's engine "
                        "contract for the config: re-export the checkpoint");
    }
    if (!entry.contains("file") || !entry["file"].is_string() || !entry.contains("sha256")) {
      throw EngineError(path + ": the '" + name + "' entry needs a file and its sha256");
    }
    const std::string graph = join(engine_dir, entry["file"].get<std::string>());
    if (!fs::is_regular_file(graph)) throw EngineError(graph + " is missing (listed in " + path + ")");
    if (verify_hashes && entry["sha256"] != sha256_file(graph)) {
      throw EngineError(graph + " does not match the sha256 in " + path +
                        ": the graph was changed or truncated after export");
    }
  }
  // Required: without the entry, the graphs' external weights would load unchecked.
  if (!data.contains("weights") || !data["weights"].is_object()) {
    throw EngineError(path + " lists no weights file: re-export the checkpoint");
  }
  check_weights(engine_dir, data["weights"], path, verify_hashes);
  return Manifest{engine_dir, std::make_shared<const nlohmann::json>(std::move(data)), dims, std::move(contract)};
}

}  // namespace ctrt
