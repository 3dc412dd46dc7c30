// One state tensor of a Session's streams, stored layer-major as runtime/buffers.py stores it:
// [planes, rows, plane] where planes is N for a tensor the graphs take per layer (`X.{i}`) and
// 1 for one they take whole (the counts). A call on rows [0, r) binds plane i's first r rows,
// which are contiguous; one stream's row in logical order ([N, ...rest], what snapshots and
// stream_state hold) is its piece of every plane. The memory state has two banks (ping-pong,
// flipped plane by plane after a call succeeded), the partial segment one.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace ctrt {

// Zero-filled, 64-byte aligned storage of [planes, rows, plane_bytes].
class PlaneBuffer {
 public:
  PlaneBuffer(int planes, int rows, size_t plane_bytes);
  ~PlaneBuffer();
  PlaneBuffer(const PlaneBuffer&) = delete;
  PlaneBuffer& operator=(const PlaneBuffer&) = delete;

  uint8_t* at(int plane, int row) const {
    return data_ + (static_cast<size_t>(plane) * static_cast<size_t>(rows_) + static_cast<size_t>(row)) * plane_bytes_;
  }
  int planes() const { return planes_; }
  size_t plane_bytes() const { return plane_bytes_; }

 private:
  int planes_, rows_;
  size_t plane_bytes_;
  uint8_t* data_;
};

class StateTensor {
 public:
  StateTensor(std::string name, int planes, int rows, size_t row_bytes, bool two_banks);

  const std::string& name() const { return name_; }
  int planes() const { return planes_; }
  size_t plane_bytes() const { return plane_bytes_; }
  size_t row_bytes() const { return plane_bytes_ * static_cast<size_t>(planes_); }
  // plane `plane` of the bank holding its current value / of the bank a call writes
  const PlaneBuffer& current(int plane) const { return *banks_[parity_[static_cast<size_t>(plane)]]; }
  const PlaneBuffer& written(int plane) const { return *banks_[1 - parity_[static_cast<size_t>(plane)]]; }
  int parity(int plane) const { return parity_[static_cast<size_t>(plane)]; }

  void clear_row(int row);
  void copy_row(int src, int dst);
  void swap_rows(int a, int b);
  void read_row(int row, uint8_t* out) const;  // row_bytes() in logical order
  void write_row(int row, const uint8_t* in);
  // The call on rows [0, batch) of `streams` succeeded and wrote plane `plane` of the other
  // bank. Whichever is fewer moves: the written rows are copied back into the current bank
  // (false), or the rows [batch, streams) that sat out are copied into the written bank, which
  // becomes current (true: the plane's parity flipped).
  bool flip(int plane, int batch, int streams);

 private:
  std::string name_;
  int planes_;
  size_t plane_bytes_;
  std::unique_ptr<PlaneBuffer> banks_[2];  // banks_[1] only for the memory state
  std::vector<int> parity_;                // per plane: the bank holding its current value
  std::vector<uint8_t> swap_;              // one plane's row: the middle stop of a swap
};

}  // namespace ctrt
