#include "ctrt/contract.hpp"

#include <nlohmann/json.hpp>

#include "ctrt/error.hpp"

namespace ctrt {

const char* const kEntryPoints[3] = {"segment", "extend", "commit"};
const char* const kMemoryState[7] = {"mem", "cmem", "mem_k", "mem_v", "mem_len", "cmem_len", "usage"};
const char* const kPartialState[3] = {"seg_h", "seg_k", "seg_v"};
const char* const kNewRows[3] = {"new_h", "new_k", "new_v"};
const char* const kOutSuffix = "_out";

size_t dtype_size(DType dtype) { return dtype == DType::boolean ? 1 : 4; }

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::float32: return "float32";
    case DType::int32: return "int32";
    case DType::boolean: return "bool";
  }
  return "?";
}

std::vector<int64_t> TensorSpec::concrete_shape(int64_t batch, int64_t tokens) const {
  std::vector<int64_t> out;
  out.reserve(shape.size());
  for (int64_t dim : shape) out.push_back(dim == kBatch ? batch : dim == kTokens ? tokens : dim);
  return out;
}

std::vector<int64_t> TensorSpec::row_shape() const {
  return std::vector<int64_t>(shape.begin() + 1, shape.end());
}

int64_t TensorSpec::row_elements() const {
  int64_t count = 1;
  for (size_t i = 1; i < shape.size(); ++i) count *= shape[i];
  return count;
}

nlohmann::json TensorSpec::to_json() const {
  nlohmann::json dims = nlohmann::json::array();
  for (int64_t dim : shape) {
    if (dim == kBatch) dims.push_back("batch");
    else if (dim == kTokens) dims.push_back("tokens");
    else dims.push_back(dim);
  }
  return {{"name", name}, {"dtype", dtype_name(dtype)}, {"shape", dims}};
}

Dims Dims::from_config(const nlohmann::json& config) {
  Dims dims{};
  try {
    dims.n_layers = config.at("n_layers").get<int64_t>();
    dims.d_model = config.at("d_model").get<int64_t>();
    dims.n_heads = config.at("n_heads").get<int64_t>();
    dims.vocab_size = config.at("vocab_size").get<int64_t>();
    dims.seg_len = config.at("seg_len").get<int64_t>();
    dims.mem_len = config.at("mem_len").get<int64_t>();
    dims.cmem_len = config.at("cmem_len").get<int64_t>();
    dims.most_used = config.at("compress_fn").get<std::string>() == "most_used";
  } catch (const nlohmann::json::exception& exc) {
    throw EngineError(std::string("config is incomplete (") + exc.what() + ")");
  }
  if (dims.n_layers < 1 || dims.d_model < 1 || dims.n_heads < 1 || dims.d_model % dims.n_heads ||
      dims.vocab_size < 1 || dims.seg_len < 1 || dims.mem_len < 0 || dims.cmem_len < 0) {
    throw EngineError("config holds sizes no engine has (n_layers, d_model, n_heads, vocab_size, "
                      "seg_len must be >= 1, d_model a multiple of n_heads)");
  }
  return dims;
}

std::map<std::string, TensorSpec> state_specs(const Dims& dims) {
  const int64_t b = kBatch, n = dims.n_layers, d = dims.d_model, heads = dims.n_heads;
  const int64_t d_head = dims.d_head(), n_mem = dims.cmem_len + dims.mem_len;
  const DType f32 = DType::float32, i32 = DType::int32;
  std::vector<TensorSpec> specs = {
      {"mem", f32, {b, n, dims.mem_len, d}},                 // [B, N, M, d]
      {"cmem", f32, {b, n, dims.cmem_len, d}},               // [B, N, C, d]
      {"mem_k", f32, {b, n, heads, n_mem, d_head}},          // [B, N, H, C+M, dh]
      {"mem_v", f32, {b, n, heads, n_mem, d_head}},          // [B, N, H, C+M, dh]
      {"mem_len", i32, {b}},                                 // [B]
      {"cmem_len", i32, {b}},                                // [B]
      {"usage", f32, {b, n, dims.mem_len}},                  // [B, N, M]
      {"seg_h", f32, {b, n, dims.seg_len, d}},               // [B, N, L, d]
      {"seg_k", f32, {b, n, heads, dims.seg_len, d_head}},   // [B, N, H, L, dh]
      {"seg_v", f32, {b, n, heads, dims.seg_len, d_head}},   // [B, N, H, L, dh]
      {"seg_len", i32, {b}},                                 // [B]
  };
  std::map<std::string, TensorSpec> out;
  for (auto& spec : specs) {
    // no zero-length tensor ever reaches an engine: a plain Transformer-XL has no cmem tensors
    if (!dims.has_cmem() && (spec.name == "cmem" || spec.name == "cmem_len")) continue;
    if (!dims.most_used && spec.name == "usage") continue;
    out.emplace(spec.name, spec);
  }
  return out;
}

static TensorSpec out_spec(const TensorSpec& spec) {
  return {spec.name + kOutSuffix, spec.dtype, spec.shape};
}

std::map<std::string, EntryPoint> entry_points(const Dims& dims) {
  auto state = state_specs(dims);
  std::vector<TensorSpec> memory;
  for (const char* name : kMemoryState)
    if (state.count(name)) memory.push_back(state.at(name));
  const int64_t b = kBatch, t = kTokens, n = dims.n_layers, d = dims.d_model;
  const int64_t heads = dims.n_heads, d_head = dims.d_head();

  EntryPoint segment{"segment", {{"tokens", DType::int32, {b, dims.seg_len}}}, {}};
  segment.inputs.insert(segment.inputs.end(), memory.begin(), memory.end());
  segment.outputs.push_back({"logits", DType::float32, {b, dims.seg_len, dims.vocab_size}});
  for (const auto& spec : memory) segment.outputs.push_back(out_spec(spec));

  EntryPoint extend{"extend", {{"tokens", DType::int32, {b, t}}, state.at("seg_len")}, {}};
  for (const char* name : {"mem_k", "mem_v", "mem_len", "cmem_len"})
    if (state.count(name)) extend.inputs.push_back(state.at(name));
  extend.inputs.push_back(state.at("seg_k"));
  extend.inputs.push_back(state.at("seg_v"));
  if (dims.most_used) extend.inputs.push_back(state.at("usage"));
  extend.outputs = {{"logits", DType::float32, {b, t, dims.vocab_size}},
                    {"new_h", DType::float32, {b, n, t, d}},
                    {"new_k", DType::float32, {b, n, heads, t, d_head}},
                    {"new_v", DType::float32, {b, n, heads, t, d_head}}};
  if (dims.most_used) extend.outputs.push_back(out_spec(state.at("usage")));

  EntryPoint commit{"commit", {}, {}};
  for (const char* name : kPartialState) commit.inputs.push_back(state.at(name));
  commit.inputs.insert(commit.inputs.end(), memory.begin(), memory.end());
  for (const auto& spec : memory) commit.outputs.push_back(out_spec(spec));
  return {{"segment", segment}, {"extend", extend}, {"commit", commit}};
}

}  // namespace ctrt
