// plan_feed follows docs/DESIGN.md, "Call planning" (runtime/planner.py), L = 8 here.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "ctrt/planner.hpp"

using ctrt::Entry;
using ctrt::FeedStream;
using ctrt::PlannedCall;

namespace {

constexpr int64_t L = 8;

void expect_calls(const std::vector<PlannedCall>& got, const std::vector<PlannedCall>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(got[i].entry, want[i].entry) << "call " << i;
    EXPECT_EQ(got[i].streams, want[i].streams) << "call " << i;
    EXPECT_EQ(got[i].tokens, want[i].tokens) << "call " << i;
  }
}

}  // namespace

TEST(Planner, WholeSegmentsAtABoundaryGoThroughSegmentThenTheRestThroughExtend) {
  expect_calls(ctrt::plan_feed({{7, 0, 20}}, L),
               {{Entry::segment, {7}, L}, {Entry::segment, {7}, L}, {Entry::extend, {7}, 4}});
}

TEST(Planner, ADecodeTokenIsOneExtendWithoutCommit) {
  expect_calls(ctrt::plan_feed({{0, 3, 1}}, L), {{Entry::extend, {0}, 1}});
}

TEST(Planner, ExtendThatFillsTheSegmentIsFollowedByACommit) {
  expect_calls(ctrt::plan_feed({{0, 5, 3}}, L), {{Entry::extend, {0}, 3}, {Entry::commit, {0}, 0}});
}

TEST(Planner, StreamsAtDifferentFillsShareExtendsUpToTheFullestBoundary) {
  // a (id 1): fill 6, 4 tokens; b (id 2): fill 0, 10 tokens. b's whole segment goes first; then
  // both extend by 2 (a reaches L and is committed), then a's last 2 tokens
  expect_calls(ctrt::plan_feed({{1, 6, 4}, {2, 0, 10}}, L),
               {{Entry::segment, {2}, L}, {Entry::extend, {1, 2}, 2}, {Entry::commit, {1}, 0},
                {Entry::extend, {1}, 2}});
}

TEST(Planner, AStreamWithAWholeSegmentWaitingGoesAheadAlone) {
  expect_calls(ctrt::plan_feed({{0, 0, 1}, {1, 0, 17}}, L),
               {{Entry::segment, {1}, L}, {Entry::segment, {1}, L}, {Entry::extend, {0, 1}, 1}});
}

TEST(Planner, AFullPartialSegmentFromAFailedCommitIsCommittedFirst) {
  expect_calls(ctrt::plan_feed({{4, L, 1}}, L), {{Entry::commit, {4}, 0}, {Entry::extend, {4}, 1}});
}

TEST(Planner, StreamsWithTheSameFewTokensInsideTheirSegmentsAreOneExtend) {
  expect_calls(ctrt::plan_feed({{3, 2, 1}, {1, 6, 1}, {8, 0, 1}}, L), {{Entry::extend, {3, 1, 8}, 1}});
}

TEST(Planner, StreamsFilledByOneExtendAreCommittedTogetherInFeedOrder) {
  expect_calls(ctrt::plan_feed({{5, 6, 2}, {3, 6, 2}}, L), {{Entry::extend, {5, 3}, 2}, {Entry::commit, {5, 3}, 0}});
}

TEST(Planner, EveryTokenIsPlannedExactlyOnce) {
  for (int64_t fill_a = 0; fill_a < L; ++fill_a)
    for (int64_t fill_b = 0; fill_b < L; ++fill_b)
      for (int64_t pending = 1; pending < 3 * L; ++pending) {
        const auto calls = ctrt::plan_feed({{0, fill_a, pending}, {1, fill_b, 2 * L + 1 - pending % 5}}, L);
        int64_t tokens[2] = {0, 0}, fill[2] = {fill_a, fill_b};
        for (const auto& call : calls) {
          for (int64_t s : call.streams) {
            if (call.entry == Entry::commit) {
              EXPECT_EQ(fill[s], L);
              fill[s] = 0;
            } else {
              EXPECT_LE(fill[s] + call.tokens, L);
              if (call.entry == Entry::segment) EXPECT_EQ(fill[s], 0);
              else fill[s] += call.tokens;
              tokens[s] += call.tokens;
            }
          }
        }
        EXPECT_EQ(tokens[0], pending);
        EXPECT_EQ(tokens[1], 2 * L + 1 - pending % 5);
      }
}

// tests/golden/cases.json, the cases runtime/planner.py is held to (tests/test_golden.py): every
// stream of a case, those with nothing pending too (the planner leaves them out); its index is
// its stream id.
TEST(Planner, TheGoldenCasesPlanAsInPython) {
  std::ifstream file(CTRT_GOLDEN_CASES);
  ASSERT_TRUE(file) << "cannot read " << CTRT_GOLDEN_CASES;
  const auto cases = nlohmann::json::parse(file).at("planner");
  ASSERT_FALSE(cases.empty());
  const std::map<std::string, Entry> entries = {
      {"segment", Entry::segment}, {"extend", Entry::extend}, {"commit", Entry::commit}};
  for (const auto& golden : cases) {
    SCOPED_TRACE(golden.at("why").get<std::string>() + ": " + golden.dump());
    std::vector<FeedStream> feed;
    for (size_t i = 0; i < golden.at("pending").size(); ++i)
      feed.push_back({static_cast<int64_t>(i), golden["fills"][i].get<int64_t>(),
                      golden["pending"][i].get<int64_t>()});
    std::vector<PlannedCall> want;
    for (const auto& call : golden.at("calls"))
      want.push_back({entries.at(call[0].get<std::string>()), call[1].get<std::vector<int64_t>>(),
                      call[2].get<int64_t>()});
    expect_calls(ctrt::plan_feed(feed, golden.at("seg_len").get<int64_t>()), want);
  }
}
