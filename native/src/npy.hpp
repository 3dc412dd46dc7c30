// The npy format 1.0 header (numpy's .npy): what the snapshot members are.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ctrt::npy {

struct Header {
  std::string descr;            // "<f4", "<i4", "|u1"
  std::vector<int64_t> shape;
  size_t header_bytes = 0;      // magic + length + dict + padding: where the data starts
};

// The header of an array with this descr and shape, padded to 64 bytes as numpy does.
std::string encode_header(const std::string& descr, const std::vector<int64_t>& shape);

// Parses the header at the start of `bytes` (at most `size` of them). Throws std::runtime_error
// saying what is wrong: a bad magic, another format version, a malformed dict, Fortran order.
Header parse_header(const uint8_t* bytes, size_t size);

}  // namespace ctrt::npy
