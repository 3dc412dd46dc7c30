#include "ctrt/planner.hpp"

#include <algorithm>
#include <iterator>

namespace ctrt {

int64_t decoding_step(const std::vector<FeedStream>& feed, int64_t seg_len, std::vector<int64_t>& streams) {
  streams.clear();
  int64_t pending = 0;
  for (const auto& s : feed) {
    if (s.pending == 0) continue;  // full or not, a stream with nothing pending takes no part
    if (pending == 0) pending = s.pending;
    if (s.pending != pending || s.fill + pending >= seg_len) return 0;
    streams.push_back(s.stream);
  }
  return pending;
}

std::vector<PlannedCall> plan_feed(const std::vector<FeedStream>& feed, int64_t seg_len) {
  std::vector<PlannedCall> calls;
  PlannedCall step{Entry::extend, {}, 0};
  step.tokens = decoding_step(feed, seg_len, step.streams);
  if (step.tokens) {
    calls.push_back(std::move(step));
    return calls;
  }
  std::vector<FeedStream> left;  // the streams with tokens pending; fill and pending as the calls go
  std::copy_if(feed.begin(), feed.end(), std::back_inserter(left), [](const FeedStream& s) { return s.pending > 0; });
  // 1. streams whose commit failed in an earlier feed are committed first
  PlannedCall waiting{Entry::commit, {}, 0};
  for (auto& s : left) {
    if (s.fill == seg_len) {
      waiting.streams.push_back(s.stream);
      s.fill = 0;
    }
  }
  if (!waiting.streams.empty()) calls.push_back(std::move(waiting));
  while (!left.empty()) {
    PlannedCall call{Entry::segment, {}, seg_len};
    for (const auto& s : left)
      if (s.pending >= seg_len && s.fill == 0) call.streams.push_back(s.stream);
    PlannedCall rotated{Entry::commit, {}, 0};
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
        if (s.fill == seg_len) {
          s.fill = 0;
          rotated.streams.push_back(s.stream);
        }
      }
    }
    for (auto& s : left)
      if (std::find(call.streams.begin(), call.streams.end(), s.stream) != call.streams.end())
        s.pending -= call.tokens;
    left.erase(std::remove_if(left.begin(), left.end(), [](const FeedStream& s) { return s.pending == 0; }),
               left.end());
    calls.push_back(std::move(call));
    if (!rotated.streams.empty()) calls.push_back(std::move(rotated));
  }
  return calls;
}

}  // namespace ctrt
