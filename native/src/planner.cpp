#include "ctrt/planner.hpp"

#include <algorithm>
#include <set>

namespace ctrt {

std::vector<PlannedCall> plan_feed(const std::vector<FeedStream>& feed,
                                   const std::vector<int64_t>& other_full, int64_t seg_len) {
  std::vector<PlannedCall> calls;
  std::vector<FeedStream> left = feed;  // fill and pending as the calls go
  // 1. streams whose commit failed in an earlier feed are committed first
  PlannedCall waiting{Entry::commit, {}, 0};
  for (auto& s : left) {
    if (s.fill == seg_len) {
      waiting.streams.push_back(s.stream);
      s.fill = 0;
    }
  }
  if (!waiting.streams.empty()) calls.push_back(waiting);
  // the decoding path: one stream whose tokens fit in its partial segment, one extend
  if (left.size() == 1 && left[0].fill + left[0].pending < seg_len) {
    calls.push_back({Entry::extend, {left[0].stream}, left[0].pending});
    return calls;
  }
  std::set<int64_t> full(other_full.begin(), other_full.end());
  while (!left.empty()) {
    PlannedCall call{Entry::segment, {}, seg_len};
    for (const auto& s : left)
      if (s.pending >= seg_len && s.fill == 0) call.streams.push_back(s.stream);
    if (call.streams.empty()) {
      int64_t filled = 0, fewest = left[0].pending;
      for (const auto& s : left) {
        filled = std::max(filled, s.fill);
        fewest = std::min(fewest, s.pending);
        call.streams.push_back(s.stream);
      }
      call = {Entry::extend, call.streams, std::min(fewest, seg_len - filled)};
      for (auto& s : left) {
        s.fill += call.tokens;
        if (s.fill == seg_len) full.insert(s.stream);
      }
    }
    for (auto& s : left)
      if (std::find(call.streams.begin(), call.streams.end(), s.stream) != call.streams.end())
        s.pending -= call.tokens;
    left.erase(std::remove_if(left.begin(), left.end(), [](const FeedStream& s) { return s.pending == 0; }),
               left.end());
    calls.push_back(std::move(call));
    if (!full.empty()) {
      calls.push_back({Entry::commit, std::vector<int64_t>(full.begin(), full.end()), 0});
      for (auto& s : left)
        if (full.count(s.stream)) s.fill = 0;
      full.clear();
    }
  }
  return calls;
}

}  // namespace ctrt
