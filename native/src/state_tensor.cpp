#include "state_tensor.hpp"

#include <cstdlib>
#include <cstring>
#include <new>

namespace ctrt {

PlaneBuffer::PlaneBuffer(int planes, int rows, size_t plane_bytes)
    : planes_(planes), rows_(rows), plane_bytes_(plane_bytes) {
  const size_t bytes = (plane_bytes * static_cast<size_t>(planes) * static_cast<size_t>(rows) + 63) / 64 * 64;
  data_ = static_cast<uint8_t*>(std::aligned_alloc(64, bytes ? bytes : 64));
  if (!data_) throw std::bad_alloc();
  std::memset(data_, 0, bytes);
}

PlaneBuffer::~PlaneBuffer() { std::free(data_); }

StateTensor::StateTensor(std::string name, int planes, int rows, size_t row_bytes, bool two_banks)
    : name_(std::move(name)), planes_(planes), plane_bytes_(row_bytes / static_cast<size_t>(planes)),
      parity_(static_cast<size_t>(planes), 0), swap_(plane_bytes_) {
  for (int bank = 0; bank < (two_banks ? 2 : 1); ++bank) {
    banks_[bank] = std::make_unique<PlaneBuffer>(planes, rows, plane_bytes_);
  }
}

void StateTensor::clear_row(int row) {
  for (int p = 0; p < planes_; ++p) std::memset(current(p).at(p, row), 0, plane_bytes_);
}

void StateTensor::copy_row(int src, int dst) {
  for (int p = 0; p < planes_; ++p) std::memcpy(current(p).at(p, dst), current(p).at(p, src), plane_bytes_);
}

void StateTensor::swap_rows(int a, int b) {
  for (int p = 0; p < planes_; ++p) {
    const PlaneBuffer& buffer = current(p);
    std::memcpy(swap_.data(), buffer.at(p, a), plane_bytes_);
    std::memcpy(buffer.at(p, a), buffer.at(p, b), plane_bytes_);
    std::memcpy(buffer.at(p, b), swap_.data(), plane_bytes_);
  }
}

void StateTensor::read_row(int row, uint8_t* out) const {
  for (int p = 0; p < planes_; ++p) std::memcpy(out + static_cast<size_t>(p) * plane_bytes_, current(p).at(p, row), plane_bytes_);
}

void StateTensor::write_row(int row, const uint8_t* in) {
  for (int p = 0; p < planes_; ++p) std::memcpy(current(p).at(p, row), in + static_cast<size_t>(p) * plane_bytes_, plane_bytes_);
}

bool StateTensor::flip(int plane, int batch, int streams) {
  const PlaneBuffer& kept = current(plane);
  const PlaneBuffer& fresh = written(plane);
  if (batch < streams - batch) {
    std::memcpy(kept.at(plane, 0), fresh.at(plane, 0), plane_bytes_ * static_cast<size_t>(batch));
    return false;
  }
  if (batch < streams) {
    std::memcpy(fresh.at(plane, batch), kept.at(plane, batch), plane_bytes_ * static_cast<size_t>(streams - batch));
  }
  parity_[static_cast<size_t>(plane)] ^= 1;
  return true;
}

}  // namespace ctrt
