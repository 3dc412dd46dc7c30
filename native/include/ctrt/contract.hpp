// The engine contract (version 3), as runtime/contract.py defines it: names, shapes and dtypes
// of every graph input and output. Shapes hold static sizes and two symbolic axes, batch and
// tokens (extend's new-token count, 1..L). Every tensor is batch-first.
//
// A stream's state (state_specs) is what snapshots hold: per-layer tensors [B, N, ...rest] and
// the counts [B]. The graphs take a per-layer tensor X as N tensors `X.{i}` [B, ...rest]
// (kPerLayer, layer_name), in layer order, state tensor by state tensor; extend's new rows are
// `new_h.{i}`, `new_k.{i}`, `new_v.{i}`; the next value of graph tensor X is `X_out`.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace ctrt {

enum class DType { float32, int32, boolean };

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);  // "float32", "int32", "bool": the manifest's spelling

constexpr int64_t kBatch = -1;   // the symbolic batch axis in a TensorSpec shape
constexpr int64_t kTokens = -2;  // the symbolic tokens axis

struct TensorSpec {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;  // sizes, or kBatch / kTokens

  std::vector<int64_t> concrete_shape(int64_t batch, int64_t tokens = 0) const;
  // one stream's row: the shape without its batch axis (static tensors only)
  std::vector<int64_t> row_shape() const;
  int64_t row_elements() const;
  nlohmann::json to_json() const;  // {"name", "dtype", "shape": [.., "batch", "tokens"]}
};

struct EntryPoint {
  std::string name;
  std::vector<TensorSpec> inputs, outputs;
};

// Bounds on what a manifest may ask for, so that every size computed from it fits int64 and
// size_t with room to spare (a real engine is far below both).
constexpr int64_t kMaxDim = int64_t{1} << 24;
constexpr int64_t kMaxElements = int64_t{1} << 40;

// The product of dims; EngineError naming `what` when a dim is negative or it exceeds kMaxElements.
int64_t checked_product(const std::vector<int64_t>& dims, const std::string& what);

// The sizes the contract needs, read from a manifest's "config" (types and ranges checked:
// EngineError naming the field).
struct Dims {
  int64_t n_layers, d_model, n_heads, vocab_size, seg_len, mem_len, cmem_len, compress_rate;
  bool most_used;

  static Dims from_config(const nlohmann::json& config);
  int64_t d_head() const { return d_model / n_heads; }
  bool has_cmem() const { return cmem_len > 0; }
};

extern const char* const kEntryPoints[3];   // segment, extend, commit
extern const char* const kMemoryState[7];   // mem, cmem, mem_k, mem_v, mem_len, cmem_len, usage
extern const char* const kPartialState[3];  // seg_h, seg_k, seg_v
extern const char* const kNewRows[3];       // new_h, new_k, new_v: extend's rows of each
extern const char* const kOutSuffix;        // "_out": a call's next value of state tensor X
extern const char* const kPerLayer[8];      // the state tensors with a layer axis: taken per layer

// `X.{i}`: layer i of per-layer tensor X as a graph tensor
std::string layer_name(const std::string& name, int64_t layer);
bool is_per_layer(const std::string& name);  // kPerLayer and the new rows

// A graph tensor's name split by the contract's naming rule: `X_out` is the next value of X,
// and `X.{i}` (next value `X.{i}_out`) is layer i's piece of a tensor taken per layer.
struct TensorName {
  std::string base;  // X
  int layer;         // i, or -1 for a tensor taken whole
  bool out;          // the name ends in kOutSuffix
};
TensorName split_name(const std::string& name);

// Every state tensor a stream has, by name (absent tensors of the config are absent).
std::map<std::string, TensorSpec> state_specs(const Dims& dims);
std::map<std::string, EntryPoint> entry_points(const Dims& dims);

}  // namespace ctrt
