// Handles the C API gives out: not pointers to objects but ids into a table, so that a closed,
// foreign or corrupted handle is recognised (CTRT_INPUT_ERROR) instead of dereferenced.
//
// A handle's bits: 63..56 the table's tag (a session handle is never mistaken for another
// kind's), 55..32 the slot's generation (bumped when the slot is freed, so a closed handle stays
// closed after its slot is reused; it wraps after 2^24 reuses of one slot), 31..0 the slot + 1
// (0 is never a handle). A lookup hands out a shared_ptr: an object closed while another
// thread is inside a call on it lives until that call returns.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace ctrt {

template <typename T>
class HandleTable {
 public:
  explicit HandleTable(uint8_t tag) : tag_(tag) {}

  uint64_t insert(std::shared_ptr<T> object) {
    std::lock_guard<std::mutex> lock(mutex_);
    uint32_t slot;
    if (free_.empty()) {
      slot = static_cast<uint32_t>(slots_.size());
      slots_.push_back(Slot{});
    } else {
      slot = free_.back();
      free_.pop_back();
    }
    slots_[slot].object = std::move(object);
    return handle(slot);
  }

  // The object, or nullptr when the handle is not one of this table's open handles.
  std::shared_ptr<T> find(uint64_t value) const {
    std::lock_guard<std::mutex> lock(mutex_);
    const Slot* slot = slot_of(value);
    return slot ? slot->object : nullptr;
  }

  // Closes the handle: the object, or nullptr when the handle was not open.
  std::shared_ptr<T> remove(uint64_t value) {
    std::lock_guard<std::mutex> lock(mutex_);
    Slot* slot = const_cast<Slot*>(slot_of(value));
    if (!slot) return nullptr;
    std::shared_ptr<T> object = std::move(slot->object);
    slot->generation = (slot->generation + 1) & kGenerationMask;
    free_.push_back(static_cast<uint32_t>(slot - slots_.data()));
    return object;
  }

 private:
  static constexpr uint32_t kGenerationMask = (1u << 24) - 1;
  struct Slot {
    uint32_t generation = 0;
    std::shared_ptr<T> object;
  };

  uint64_t handle(uint32_t slot) const {
    return uint64_t{tag_} << 56 | uint64_t{slots_[slot].generation} << 32 | (uint64_t{slot} + 1);
  }

  const Slot* slot_of(uint64_t value) const {
    const uint64_t index = (value & 0xFFFFFFFFu) - 1;  // slot + 1 == 0 wraps out of range
    if (value >> 56 != tag_ || index >= slots_.size()) return nullptr;
    const Slot& slot = slots_[index];
    if (!slot.object || (value >> 32 & kGenerationMask) != slot.generation) return nullptr;
    return &slot;
  }

  const uint8_t tag_;
  mutable std::mutex mutex_;
  std::vector<Slot> slots_;
  std::vector<uint32_t> free_;
};

}  // namespace ctrt
