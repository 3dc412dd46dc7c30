// Stream snapshots v2 (docs/DESIGN.md; runtime/snapshot.py): an uncompressed zip in the
// numpy .npz layout, one `<name>.npy` member (npy 1.0 header, little-endian, C order) per state
// tensor of the stream (its row), `__meta__.npy` (1-D uint8, UTF-8 JSON: format, format_version
// 2, position, config, engine identity, last_logits) and `last_logits.npy` (float32 [V]) exactly
// when the meta says so.
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

constexpr int kSnapshotFormatVersion = 2;

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

// What a snapshot must match to be restored: contract version, checkpoint, graphs.
nlohmann::json engine_identity(const Manifest& manifest);

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
