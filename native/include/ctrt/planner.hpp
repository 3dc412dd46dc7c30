// Call planning (docs/DESIGN.md, "Call planning"; runtime/planner.py, the same rules): which
// engine calls a feed makes, as a pure function of each stream's partial fill and pending
// token count.
#pragma once

#include <cstdint>
#include <vector>

#include "ctrt/engine.hpp"

namespace ctrt {

struct FeedStream {
  int64_t stream;
  int64_t fill;     // tokens in its partial segment: 0 <= fill < L, or L after a failed commit
  int64_t pending;  // tokens of this feed, >= 0
};

struct PlannedCall {
  Entry entry;
  std::vector<int64_t> streams;  // in the order the call packs them into rows [0, r)
  int64_t tokens;                // per stream: L for segment, T for extend, 0 for commit
};

// The calls of one feed, in order, when every call succeeds (the session stops at the first
// that fails). `feed` holds the feed's streams in its order; a call lists its streams in that
// order. A stream with no tokens pending takes no part, even when its partial segment is full.
std::vector<PlannedCall> plan_feed(const std::vector<FeedStream>& feed, int64_t seg_len);

// The decoding step: when every stream with tokens pending appends the same count, all inside
// its partial segment, the feed is that one extend. Returns its tokens per stream and puts its
// streams (those with tokens pending, in the feed's order) in `streams`; otherwise returns 0.
// Allocates nothing when `streams` has the capacity (the session calls it for every token).
int64_t decoding_step(const std::vector<FeedStream>& feed, int64_t seg_len, std::vector<int64_t>& streams);

}  // namespace ctrt
