// Sampling version 2 (docs/DESIGN.md, "Sampling"): splitmix64's outputs and the token rule, with real numbers.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <vector>

#include "ctrt/error.hpp"
#include "ctrt/sampling.hpp"

TEST(Sampling, UniformsAreSplitmix64Outputs) {
  // splitmix64 seeded with 0 (Vigna's reference generator): 0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4
  EXPECT_EQ(ctrt::sampling_uniform(0, 0), static_cast<double>(0xe220a8397b1dcdafULL >> 11) * 0x1.0p-53);
  EXPECT_EQ(ctrt::sampling_uniform(0, 1), static_cast<double>(0x6e789e6aa1b965f4ULL >> 11) * 0x1.0p-53);
  // the seed is taken mod 2^64: seed s + 0x9E37... is the stream one step later
  EXPECT_EQ(ctrt::sampling_uniform(0x9E3779B97F4A7C15ULL, 0), ctrt::sampling_uniform(0, 1));
}

TEST(Sampling, GreedyTakesTheFirstIndexOfTheMaximum) {
  const std::vector<float> logits = {0.5f, 2.0f, -1.0f, 2.0f};
  ctrt::Sampling greedy;
  greedy.greedy = true;
  EXPECT_EQ(ctrt::sample_token(logits.data(), logits.size(), greedy, 0.99), 1);
}

TEST(Sampling, TheTokenIsTheFirstWhoseCumulativeMassExceedsTheUniform) {
  // p = [1, 3] / 4: u below 1/4 gives token 0, above gives token 1
  const std::vector<float> logits = {0.0f, static_cast<float>(std::log(3.0))};
  ctrt::Sampling plain;
  EXPECT_EQ(ctrt::sample_token(logits.data(), 2, plain, 0.2), 0);
  EXPECT_EQ(ctrt::sample_token(logits.data(), 2, plain, 0.3), 1);
  ctrt::Sampling hot = plain;
  hot.temperature = 1e6;  // nearly uniform: [0.5, 0.5]
  EXPECT_EQ(ctrt::sample_token(logits.data(), 2, hot, 0.49), 0);
  EXPECT_EQ(ctrt::sample_token(logits.data(), 2, hot, 0.51), 1);
}

TEST(Sampling, TopKAndTopPKeepOnlyTheMostLikely) {
  const std::vector<float> logits = {1.0f, 3.0f, 2.0f, 0.0f};
  ctrt::Sampling top_k;
  top_k.top_k = 1;
  ctrt::Sampling top_p;
  top_p.top_p = 0.5;  // token 1 alone holds 0.64 of the mass
  for (double u : {0.0, 0.3, 0.999}) {
    EXPECT_EQ(ctrt::sample_token(logits.data(), 4, top_k, u), 1);
    EXPECT_EQ(ctrt::sample_token(logits.data(), 4, top_p, u), 1);
  }
  ctrt::Sampling two = top_k;
  two.top_k = 2;  // tokens 1 and 2: p = [e^0, e^-1] over their sum (0.731, 0.269)
  EXPECT_EQ(ctrt::sample_token(logits.data(), 4, two, 0.72), 1);
  EXPECT_EQ(ctrt::sample_token(logits.data(), 4, two, 0.74), 2);
}

TEST(Sampling, BadSettingsAreRefusedWithWhatToChange) {
  ctrt::Sampling cold;
  cold.temperature = 0;
  EXPECT_THROW(cold.validate(), ctrt::InputError);
  ctrt::Sampling nucleus;
  nucleus.top_p = 1.5;
  try {
    nucleus.validate();
    FAIL() << "top_p 1.5 was accepted";
  } catch (const ctrt::InputError& exc) {
    EXPECT_NE(std::string(exc.what()).find("top_p must be in (0, 1]"), std::string::npos);
  }
}

// tests/golden/cases.json, the streams runtime/sampling.py draws (tests/test_golden.py): the
// n-th uniform of a seed, exactly, and the first tokens a request draws from fixed logits.
TEST(Sampling, TheGoldenStreamsDrawAsInPython) {
  std::ifstream file(CTRT_GOLDEN_CASES);
  ASSERT_TRUE(file) << "cannot read " << CTRT_GOLDEN_CASES;
  const auto cases = nlohmann::json::parse(file);
  for (const auto& golden : cases.at("uniforms"))
    for (size_t i = 0; i < golden.at("n").size(); ++i)
      EXPECT_EQ(ctrt::sampling_uniform(golden.at("seed").get<uint64_t>(), golden["n"][i].get<uint64_t>()),
                golden.at("u")[i].get<double>())
          << "seed " << golden["seed"] << ", n " << golden["n"][i];
  ASSERT_FALSE(cases.at("sampling").empty());
  for (const auto& golden : cases.at("sampling")) {
    SCOPED_TRACE(golden.dump());
    const auto logits = golden.at("logits").get<std::vector<float>>();
    ctrt::Sampling sampling;
    sampling.greedy = golden.at("greedy").get<bool>();
    sampling.temperature = golden.at("temperature").get<double>();
    sampling.top_k = golden.at("top_k").get<int64_t>();
    sampling.top_p = golden.at("top_p").get<double>();
    const auto seed = golden.at("seed").get<uint64_t>();
    std::vector<int64_t> drawn;
    for (uint64_t n = 0; n < golden.at("tokens").size(); ++n)
      drawn.push_back(ctrt::sample_token(logits.data(), logits.size(), sampling,
                                         ctrt::sampling_uniform(seed, n)));
    EXPECT_EQ(drawn, golden.at("tokens").get<std::vector<int64_t>>());
  }
}
