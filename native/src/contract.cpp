#include "ctrt/contract.hpp"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "ctrt/error.hpp"

namespace ctrt {

const char* const kEntryPoints[3] = {"segment", "extend", "commit"};
const char* const kMemoryState[7] = {"mem", "cmem", "mem_k", "mem_v", "mem_len", "cmem_len", "usage"};
const char* const kPartialState[3] = {"seg_h", "seg_k", "seg_v"};
const char* const kNewRows[3] = {"new_h", "new_k", "new_v"};
const char* const kOutSuffix = "_out";
const char* const kPerLayer[8] = {"mem", "cmem", "mem_k", "mem_v", "usage", "seg_h", "seg_k", "seg_v"};

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

int64_t TensorSpec::row_elements() const { return checked_product(row_shape(), "tensor " + name); }

nlohmann::json TensorSpec::to_json() const {
  nlohmann::json dims = nlohmann::json::array();
  for (int64_t dim : shape) {
    if (dim == kBatch) dims.push_back("batch");
    else if (dim == kTokens) dims.push_back("tokens");
    else dims.push_back(dim);
  }
  return {{"name", name}, {"dtype", dtype_name(dtype)}, {"shape", dims}};
}

namespace {

// A config field that must be an integer in [least, kMaxDim]; EngineError naming it otherwise.
int64_t size_field(const nlohmann::json& config, const char* name, int64_t least) {
  if (!config.contains(name)) throw EngineError(std::string("config has no ") + name);
  const auto& value = config[name];
  if (!value.is_number_integer()) {
    throw EngineError(std::string("config ") + name + " must be an integer, got " + value.dump());
  }
  // an unsigned value above INT64_MAX reads as negative here and is refused with the rest
  const int64_t size = value.get<int64_t>();
  if (size < least || size > kMaxDim) {
    throw EngineError(std::string("config ") + name + " must be in [" + std::to_string(least) + ", " +
                      std::to_string(kMaxDim) + "], got " + value.dump());
  }
  return size;
}

}  // namespace

TensorName split_name(const std::string& name) {
  TensorName out{name, -1, false};
  const size_t suffix = std::char_traits<char>::length(kOutSuffix);
  if (out.base.size() > suffix && out.base.compare(out.base.size() - suffix, suffix, kOutSuffix) == 0) {
    out.base.resize(out.base.size() - suffix);
    out.out = true;
  }
  const size_t dot = out.base.rfind('.');
  if (dot != std::string::npos && dot + 1 < out.base.size() &&
      out.base.find_first_not_of("0123456789", dot + 1) == std::string::npos && out.base.size() - dot <= 8) {
    out.layer = std::stoi(out.base.substr(dot + 1));
    out.base.resize(dot);
  }
  return out;
}

int64_t checked_product(const std::vector<int64_t>& dims, const std::string& what) {
  int64_t product = 1;
  for (int64_t dim : dims) {
    if (dim < 0 || __builtin_mul_overflow(product, dim, &product) || product > kMaxElements) {
      throw EngineError(what + " has more than " + std::to_string(kMaxElements) + " elements");
    }
  }
  return product;
}

Dims Dims::from_config(const nlohmann::json& config) {
  if (!config.is_object()) throw EngineError("config must be an object, got " + config.dump());
  Dims dims{};
  dims.n_layers = size_field(config, "n_layers", 1);
  dims.d_model = size_field(config, "d_model", 1);
  dims.n_heads = size_field(config, "n_heads", 1);
  dims.vocab_size = size_field(config, "vocab_size", 1);
  dims.seg_len = size_field(config, "seg_len", 1);
  dims.mem_len = size_field(config, "mem_len", 1);
  dims.cmem_len = size_field(config, "cmem_len", 0);
  dims.compress_rate = size_field(config, "compress_rate", 1);
  const auto compress_fn = config.value("compress_fn", nlohmann::json());
  if (!compress_fn.is_string()) {
    throw EngineError("config compress_fn must be a string, got " + compress_fn.dump());
  }
  dims.most_used = compress_fn.get<std::string>() == "most_used";
  if (dims.d_model % dims.n_heads) {
    throw EngineError("config d_model (" + std::to_string(dims.d_model) + ") must be a multiple of n_heads (" +
                      std::to_string(dims.n_heads) + ")");
  }
  if (dims.mem_len % dims.seg_len) {
    throw EngineError("config mem_len (" + std::to_string(dims.mem_len) + ") must be a multiple of seg_len (" +
                      std::to_string(dims.seg_len) + ")");
  }
  if (dims.seg_len % dims.compress_rate) {
    throw EngineError("config seg_len (" + std::to_string(dims.seg_len) + ") must be a multiple of "
                      "compress_rate (" + std::to_string(dims.compress_rate) + ")");
  }
  // every state row and the logits of a full segment have a size that fits the arithmetic
  for (const auto& [name, spec] : state_specs(dims)) checked_product(spec.row_shape(), "state tensor " + name);
  checked_product({dims.seg_len, dims.vocab_size}, "a segment's logits");
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

std::string layer_name(const std::string& name, int64_t layer) { return name + "." + std::to_string(layer); }

bool is_per_layer(const std::string& name) {
  return std::any_of(std::begin(kPerLayer), std::end(kPerLayer), [&](const char* x) { return name == x; }) ||
         std::any_of(std::begin(kNewRows), std::end(kNewRows), [&](const char* x) { return name == x; });
}

namespace {

TensorSpec out_spec(const TensorSpec& spec) { return {spec.name + kOutSuffix, spec.dtype, spec.shape}; }

// A tensor [B, N, ...rest] as the graphs take it (runtime/contract.py, per_layer): N tensors
// `X.{i}` [B, ...rest] in layer order, or the tensor itself (the counts).
void append_layers(std::vector<TensorSpec>& out, const TensorSpec& spec, int64_t n_layers) {
  if (!is_per_layer(spec.name)) {
    out.push_back(spec);
    return;
  }
  std::vector<int64_t> rest = {spec.shape[0]};
  rest.insert(rest.end(), spec.shape.begin() + 2, spec.shape.end());
  for (int64_t i = 0; i < n_layers; ++i) out.push_back({layer_name(spec.name, i), spec.dtype, rest});
}

}  // namespace

std::map<std::string, EntryPoint> entry_points(const Dims& dims) {
  auto state = state_specs(dims);
  const int64_t b = kBatch, t = kTokens, n = dims.n_layers, d = dims.d_model;
  const int64_t heads = dims.n_heads, d_head = dims.d_head();
  auto layers = [&](std::initializer_list<TensorSpec> specs) {
    std::vector<TensorSpec> out;
    for (const auto& spec : specs) append_layers(out, spec, n);
    return out;
  };
  auto present = [&](std::vector<const char*> names) {
    std::vector<TensorSpec> out;
    for (const char* name : names)
      if (state.count(name)) append_layers(out, state.at(name), n);
    return out;
  };
  const std::vector<TensorSpec> memory = present({std::begin(kMemoryState), std::end(kMemoryState)});
  const std::vector<TensorSpec> usage = present({"usage"});
  auto append = [](std::vector<TensorSpec>& to, const std::vector<TensorSpec>& specs, bool out) {
    for (const auto& spec : specs) to.push_back(out ? out_spec(spec) : spec);
  };

  EntryPoint segment{"segment", {{"tokens", DType::int32, {b, dims.seg_len}}}, {}};
  append(segment.inputs, memory, false);
  segment.outputs.push_back({"logits", DType::float32, {b, dims.seg_len, dims.vocab_size}});
  append(segment.outputs, memory, true);

  EntryPoint extend{"extend", {{"tokens", DType::int32, {b, t}}, state.at("seg_len")}, {}};
  append(extend.inputs, present({"mem_k", "mem_v", "mem_len", "cmem_len"}), false);
  append(extend.inputs, present({"seg_k", "seg_v"}), false);
  append(extend.inputs, usage, false);
  extend.outputs = {{"logits", DType::float32, {b, t, dims.vocab_size}}};
  append(extend.outputs,
         layers({{"new_h", DType::float32, {b, n, t, d}},
                 {"new_k", DType::float32, {b, n, heads, t, d_head}},
                 {"new_v", DType::float32, {b, n, heads, t, d_head}}}),
         false);
  append(extend.outputs, usage, true);

  EntryPoint commit{"commit", {}, {}};
  append(commit.inputs, present({std::begin(kPartialState), std::end(kPartialState)}), false);
  append(commit.inputs, memory, false);
  append(commit.outputs, memory, true);
  return {{"segment", segment}, {"extend", extend}, {"commit", commit}};
}

}  // namespace ctrt
