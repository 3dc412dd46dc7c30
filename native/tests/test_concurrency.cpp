// The concurrency promise of ctrt.h, from two threads on one session: every call, readers
// included, either runs alone or returns CTRT_CONCURRENT_USE having changed nothing; a close
// from another thread while calls run frees nothing they use. The outcome asserted does not
// depend on how the threads interleave; ThreadSanitizer (ctest's tsan.* tests) checks that
// no interleaving races.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "ctrt/ctrt.h"

namespace {

constexpr int64_t kTokens = 60;

ctrt_session* open_conv() {
  const char* root = std::getenv("CTRT_TEST_ENGINES");
  if (!root) throw std::runtime_error("CTRT_TEST_ENGINES is not set (ctest sets it)");
  ctrt_engine_options options = ctrt_engine_options_default();
  options.threads = 1;
  ctrt_engine* engine = nullptr;
  if (ctrt_engine_open((std::string(root) + "/conv").c_str(), &options, &engine) != CTRT_OK) {
    throw std::runtime_error(ctrt_last_error());
  }
  ctrt_session* session = nullptr;
  const ctrt_status status = ctrt_session_open(engine, nullptr, &session);
  ctrt_engine_close(engine);  // the session holds it
  if (status != CTRT_OK) throw std::runtime_error(ctrt_last_error());
  return session;
}

// Feeds one token at a time until `total` are in the stream or the session is closed; a call
// refused with CTRT_CONCURRENT_USE is made again. Returns the first other status.
ctrt_status feed_tokens(ctrt_session* session, int64_t stream, int64_t total) {
  for (int64_t fed = 0; fed < total;) {
    const int32_t token = static_cast<int32_t>(fed * 31 % 256);
    const int32_t* rows[1] = {&token};
    const size_t count = 1;
    const ctrt_status status = ctrt_feed(session, 1, &stream, rows, &count, nullptr, nullptr);
    if (status == CTRT_OK) ++fed;
    else if (status != CTRT_CONCURRENT_USE) return status;
  }
  return CTRT_OK;
}

}  // namespace

TEST(Concurrency, ReadersRunAloneOrAreRefusedWhileAnotherThreadFeeds) {
  ctrt_session* session = open_conv();
  int64_t stream = -1;
  ASSERT_EQ(ctrt_add_stream(session, &stream), CTRT_OK);
  std::atomic<bool> done{false};
  std::vector<ctrt_status> unexpected;
  int64_t last_position = 0;
  std::thread reader([&] {
    while (!done.load()) {
      int64_t position = -1, ids[2];
      size_t count = 0;
      ctrt_timing timing;
      const ctrt_status statuses[] = {ctrt_position(session, stream, &position),
                                      ctrt_streams(session, ids, 2, &count),
                                      ctrt_timing_get(session, &timing)};
      for (ctrt_status status : statuses)
        if (status != CTRT_OK && status != CTRT_CONCURRENT_USE) unexpected.push_back(status);
      if (statuses[0] == CTRT_OK) {
        if (position < last_position || position > kTokens) unexpected.push_back(CTRT_INTERNAL_ERROR);
        last_position = position;
      }
    }
  });
  const ctrt_status fed = feed_tokens(session, stream, kTokens);
  done.store(true);
  reader.join();
  EXPECT_EQ(fed, CTRT_OK) << ctrt_last_error();
  EXPECT_TRUE(unexpected.empty()) << unexpected.size() << " calls returned another status or a wrong position";
  int64_t position = -1;
  ASSERT_EQ(ctrt_position(session, stream, &position), CTRT_OK);
  EXPECT_EQ(position, kTokens);
  ctrt_session_close(session);
}

TEST(Concurrency, ClosingWhileAnotherThreadFeedsEndsItsCallsWithAnInputError) {
  ctrt_session* session = open_conv();
  int64_t stream = -1;
  ASSERT_EQ(ctrt_add_stream(session, &stream), CTRT_OK);
  std::thread feeder_thread;
  ctrt_status fed = CTRT_OK;
  std::atomic<bool> started{false};
  feeder_thread = std::thread([&] {
    started.store(true);
    fed = feed_tokens(session, stream, INT64_MAX);  // ends only when the session is closed
  });
  while (!started.load()) std::this_thread::yield();
  ctrt_session_close(session);
  feeder_thread.join();
  EXPECT_EQ(fed, CTRT_INPUT_ERROR);
}
