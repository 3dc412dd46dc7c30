// Stream snapshots v3 (docs/DESIGN.md; runtime/snapshot.py): an uncompressed zip in the
// numpy .npz layout, one `<name>.npy` member (npy 1.0 header, little-endian, C order) per state
// tensor of the stream (its row in logical order, [N, ...rest] or a count, whatever the
// buffers' layout), `__meta__.npy` (1-D uint8, UTF-8 JSON: format, format_version 3, position,
// config, engine identity, last_logits) and `last_logits.npy` (float32 [V]) exactly when the
// meta says so. Versions 1 (the record a 0-d unicode array, no logits) and 2 hold the same
// arrays and are read too.
//
// The reader is safe for untrusted bytes: from the zip directory and each npy header it checks
// every member's name (no duplicates, none extra or missing), that it is stored (a deflated
// member is refused), its sizes (stored == uncompressed == header + shape x itemsize), its dtype
// and shape, and it bounds the JSON record to 1 MiB, all before reading array data; then the
// engine identity, finite values and the counts the position implies.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "ctrt/contract.hpp"
#include "ctrt/manifest.hpp"

namespace ctrt {

constexpr int kSnapshotFormatVersion = 3;  // written; 1 and 2 are read

struct RowTensor {
  DType dtype;
  std::vector<int64_t> shape;  // one stream's row: the batch axis removed
  std::vector<uint8_t> data;   // little-endian, C order
};

struct StreamSnapshot {
  std::map<std::string, RowTensor> state;
  int64_t position = 0;
  std::optional<std::vector<float>> last_logits;  // [V]
};

// The engine a snapshot was taken with: contract version, checkpoint, precision, graphs.
nlohmann::json engine_identity(const Manifest& manifest);
// Restore compatibility (runtime/snapshot.py, check_restore_compatible): a snapshot written by
// engine `identity` with model `config` restores into `manifest`'s engine when the config is the
// engine's and the identities are equal, or both name the same checkpoint (not null) and
// precision: graphs and contract version may then differ (a contract v2 snapshot goes into the
// v3 engine re-exported from its checkpoint: the arrays are the same in every version). An identity without a
// precision (formats 1 and 2) counts as `precision`, or fp32. InputError starting with `label`.
void check_restore_compatible(const nlohmann::json& identity, const nlohmann::json& config, const Manifest& manifest,
                              const std::string& label, const std::optional<std::string>& precision);

// state: name -> row, written in `order`; last_logits [V] or null.
std::vector<uint8_t> write_snapshot(const Manifest& manifest, const std::vector<std::string>& order,
                                    const std::map<std::string, RowTensor>& state, int64_t position,
                                    const float* last_logits);
// Replaces `path` atomically (a temporary file in the same folder, then rename).
void write_file_atomically(const std::string& path, const std::vector<uint8_t>& bytes);

// expected: every state tensor name -> (dtype, row shape). `source` names the snapshot in
// messages (its path, or "bytes"). Throws InputError naming what is wrong.
StreamSnapshot read_snapshot(const uint8_t* bytes, size_t size, const Manifest& manifest,
                             const std::map<std::string, std::pair<DType, std::vector<int64_t>>>& expected,
                             const std::string& source);
std::vector<uint8_t> read_snapshot_file(const std::string& path, size_t max_bytes);

}  // namespace ctrt
