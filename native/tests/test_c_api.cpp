// The C API against what a user's disk, a store or a careless caller hands it: hand-edited engine
// directories, damaged snapshots, out-of-range options, closed handles. Each case was a crash, a
// silent wrong answer or CTRT_INTERNAL_ERROR before the checks; each is now a refusal naming
// the field. Only ctrt.h is used, as a C caller would.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "ctrt/ctrt.h"

namespace fs = std::filesystem;

namespace {

fs::path engine_dir(const std::string& compress_fn) {
  const char* root = std::getenv("CTRT_TEST_ENGINES");
  if (!root) throw std::runtime_error("CTRT_TEST_ENGINES is not set (ctest sets it)");
  return fs::path(root) / compress_fn;
}

// A copy of the conv engine whose manifest.json `edit` changed.
fs::path edited_engine(const std::string& name, const std::function<void(nlohmann::json&)>& edit) {
  const fs::path out = fs::temp_directory_path() / ("ctrt_hostile_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(out);
  fs::copy(engine_dir("conv"), out, fs::copy_options::recursive);
  nlohmann::json manifest;
  std::ifstream(out / "manifest.json") >> manifest;
  edit(manifest);
  std::ofstream(out / "manifest.json", std::ios::trunc) << manifest.dump(1);
  return out;
}

// The name of the first float32 tensor of the conv engine's weights table (the table also
// holds int64 index tables that export folded out of the graphs).
std::string first_float_tensor() {
  nlohmann::json manifest;
  std::ifstream(engine_dir("conv") / "manifest.json") >> manifest;
  for (const auto& [name, tensor] : manifest["weights"]["tensors"].items())
    if (tensor["dtype"] == "float32") return name;
  throw std::runtime_error("the conv engine's weights table holds no float32 tensor");
}

ctrt_engine_options one_thread() {
  ctrt_engine_options options = ctrt_engine_options_default();
  options.threads = 1;
  return options;
}

// Opening `dir` returns `status` with a message holding `phrase`.
void expect_open_refused(const fs::path& dir, ctrt_status status, const std::string& phrase) {
  const ctrt_engine_options options = one_thread();
  ctrt_engine* engine = nullptr;
  EXPECT_EQ(ctrt_engine_open(dir.c_str(), &options, &engine), status) << ctrt_last_error();
  EXPECT_EQ(engine, nullptr);
  EXPECT_NE(std::string(ctrt_last_error()).find(phrase), std::string::npos) << ctrt_last_error();
  ctrt_engine_close(engine);
  fs::remove_all(dir);
}

// A session over the conv engine, whose handle is closed at once: the session holds the engine.
ctrt_session* open_conv(int32_t max_streams = 2) {
  const ctrt_engine_options engine_options = one_thread();
  ctrt_engine* engine = nullptr;
  if (ctrt_engine_open(engine_dir("conv").c_str(), &engine_options, &engine) != CTRT_OK) {
    throw std::runtime_error(ctrt_last_error());
  }
  ctrt_session_options options = ctrt_session_options_default();
  options.max_streams = max_streams;
  ctrt_session* session = nullptr;
  const ctrt_status status = ctrt_session_open(engine, &options, &session);
  ctrt_engine_close(engine);
  if (status != CTRT_OK) throw std::runtime_error(ctrt_last_error());
  return session;
}

void feed(ctrt_session* session, int64_t stream, size_t count) {
  std::vector<int32_t> tokens(count);
  for (size_t i = 0; i < count; ++i) tokens[i] = static_cast<int32_t>((i * 37 + 11) % 256);
  const int32_t* rows[1] = {tokens.data()};
  ASSERT_EQ(ctrt_feed(session, 1, &stream, rows, &count, nullptr, nullptr), CTRT_OK) << ctrt_last_error();
}

}  // namespace

TEST(HostileManifest, CompressRateZeroIsRefusedAtOpenNotByADivisionInRestore) {
  expect_open_refused(edited_engine("rate0", [](auto& m) { m["config"]["compress_rate"] = 0; }),
                      CTRT_ENGINE_ERROR, "config compress_rate must be in [1, ");
}

TEST(HostileManifest, AWeightsOffsetThatWrapsAroundIsRefused) {
  const std::string t = first_float_tensor();
  expect_open_refused(
      edited_engine("wrap", [&](auto& m) { m["weights"]["tensors"][t]["offset"] = UINT64_MAX - 32767; }),
      CTRT_ENGINE_ERROR, "weights tensor " + t + " (offset 18446744073709518848, ");
  expect_open_refused(edited_engine("negative", [&](auto& m) { m["weights"]["tensors"][t]["offset"] = -32768; }),
                      CTRT_ENGINE_ERROR, "weights tensor " + t + " offset must be an integer >= 0, got -32768");
}

TEST(HostileManifest, AMisalignedOrUnknownWeightsTensorIsRefused) {
  const std::string t = first_float_tensor();
  expect_open_refused(edited_engine("misaligned", [&](auto& m) { m["weights"]["tensors"][t]["offset"] = 32770; }),
                      CTRT_ENGINE_ERROR, "weights tensor " + t + " offset 32770 is not a multiple of its item size 4");
  expect_open_refused(edited_engine("dtype", [&](auto& m) { m["weights"]["tensors"][t]["dtype"] = "complex64"; }),
                      CTRT_ENGINE_ERROR, "weights tensor " + t + " has dtype 'complex64'");
}

TEST(HostileManifest, AConfigEditedAwayFromTheGraphsIsRefusedAtOpen) {
  // vocab 128 in the config and in every tensor the manifest lists: only the graphs disagree
  const auto dir = edited_engine("vocab128", [](auto& m) {
    m["config"]["vocab_size"] = 128;
    for (auto& [name, entry] : m["entry_points"].items())
      for (auto& tensor : entry["outputs"])
        if (tensor["name"] == "logits") tensor["shape"].back() = 128;
  });
  expect_open_refused(dir, CTRT_ENGINE_ERROR, "graph output logits has shape [?, 8, 256]");
}

TEST(HostileManifest, ANumberBeyondADoubleIsAnEngineError) {
  // found by fuzz_manifest: nlohmann's out_of_range escaped the parser as an uncaught exception
  const auto dir = edited_engine("huge_number", [](auto&) {});
  std::stringstream text;
  text << std::ifstream(dir / "manifest.json").rdbuf();
  std::string manifest = text.str();
  manifest.insert(manifest.find('{') + 1, "\"huge\": 1e505,");
  std::ofstream(dir / "manifest.json", std::ios::trunc) << manifest;
  expect_open_refused(dir, CTRT_ENGINE_ERROR, "is not valid JSON");
}

TEST(HostileManifest, MalformedFieldsAreEngineErrorsNamingTheField) {
  expect_open_refused(edited_engine("extend", [](auto& m) { m["entry_points"]["extend"] = "extend.onnx"; }),
                      CTRT_ENGINE_ERROR, "entry_points.extend must be an object");
  expect_open_refused(edited_engine("rate_text", [](auto& m) { m["config"]["compress_rate"] = "2"; }),
                      CTRT_ENGINE_ERROR, "config compress_rate must be an integer, got \"2\"");
  expect_open_refused(edited_engine("tensors", [](auto& m) { m["weights"]["tensors"] = 3; }),
                      CTRT_ENGINE_ERROR, "weights.tensors must be an object");
  expect_open_refused(edited_engine("init", [](auto& m) { m["entry_points"]["commit"]["initializers"] = {{"w", 5}}; }),
                      CTRT_ENGINE_ERROR, "entry_points.commit.initializers.w names 5");
  expect_open_refused(edited_engine("fn", [](auto& m) { m["config"]["compress_fn"] = nullptr; }),
                      CTRT_ENGINE_ERROR, "config compress_fn must be a string");
}

TEST(HostileManifest, AnEngineOfContractV2IsRefusedWithHowToReExport) {
  // tests/fixtures/contract_v2/engine_v2: the manifest `ctrt export` wrote before contract v3
  const fs::path dir = fs::temp_directory_path() / ("ctrt_hostile_v2_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::copy(fs::path(CTRT_CONTRACT_V2_FIXTURES) / "engine_v2", dir, fs::copy_options::recursive);
  expect_open_refused(dir, CTRT_ENGINE_ERROR,
                      (dir / "manifest.json").string() + " has format_version 2; this runtime reads version 3 (contract "
                      "v3, state per layer): re-export the checkpoint with `ctrt export CHECKPOINT " + dir.string() + "`");
}

TEST(HostileManifest, UnknownExtraKeysStayAccepted) {
  const auto dir = edited_engine("extra", [](auto& m) {
    m["entry_points"]["extend"]["nodes"] = 123;
    m["something_new"] = {{"a", 1}};
  });
  const ctrt_engine_options options = one_thread();
  ctrt_engine* engine = nullptr;
  EXPECT_EQ(ctrt_engine_open(dir.c_str(), &options, &engine), CTRT_OK) << ctrt_last_error();
  ctrt_engine_close(engine);
  fs::remove_all(dir);
}

TEST(HostileOptions, ThreadsBeyondTheMachineAreRefused) {
  ctrt_engine_options options = one_thread();
  options.threads = 100000;
  ctrt_engine* engine = nullptr;
  EXPECT_EQ(ctrt_engine_open(engine_dir("conv").c_str(), &options, &engine), CTRT_INPUT_ERROR);
  EXPECT_NE(std::string(ctrt_last_error()).find("threads must be in [0, "), std::string::npos) << ctrt_last_error();
}

TEST(HostileOptions, AnOptionsStructOfAnotherSizeIsRefused) {
  ctrt_engine_options options = one_thread();
  options.struct_size = sizeof(options) + 8;  // a caller built against a later header
  ctrt_engine* engine = nullptr;
  EXPECT_EQ(ctrt_engine_open(engine_dir("conv").c_str(), &options, &engine), CTRT_INPUT_ERROR);
  EXPECT_NE(std::string(ctrt_last_error()).find("ctrt_engine_options.struct_size is"), std::string::npos)
      << ctrt_last_error();
}

TEST(EngineSharing, SessionsOverOneEngineComputeWhatSessionsOverTwoDo) {
  const ctrt_engine_options options = one_thread();
  ctrt_engine* engine = nullptr;
  ASSERT_EQ(ctrt_engine_open(engine_dir("conv").c_str(), &options, &engine), CTRT_OK) << ctrt_last_error();
  ctrt_session* sessions[3] = {nullptr, nullptr, open_conv(1)};  // the third has an engine of its own
  for (int i = 0; i < 2; ++i) ASSERT_EQ(ctrt_session_open(engine, nullptr, &sessions[i]), CTRT_OK);
  std::vector<std::vector<float>> logits(3, std::vector<float>(256));
  std::vector<std::thread> threads;
  for (int i = 0; i < 3; ++i) {
    threads.emplace_back([&, i] {
      int64_t stream = -1;
      ctrt_add_stream(sessions[i], &stream);
      feed(sessions[i], stream, 21);
      const float* last = nullptr;
      ctrt_last_logits(sessions[i], stream, &last);
      std::copy(last, last + 256, logits[static_cast<size_t>(i)].begin());
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(logits[0], logits[2]);
  EXPECT_EQ(logits[1], logits[2]);
  ctrt_session_options too_many = ctrt_session_options_default();
  too_many.max_streams = 65;  // the engine's max_batch is 64
  ctrt_session* refused = nullptr;
  EXPECT_EQ(ctrt_session_open(engine, &too_many, &refused), CTRT_INPUT_ERROR);
  EXPECT_NE(std::string(ctrt_last_error()).find("max_streams must be <= the engine's max_batch (64)"),
            std::string::npos) << ctrt_last_error();
  ctrt_engine_close(engine);
  EXPECT_EQ(ctrt_session_open(engine, nullptr, &refused), CTRT_INPUT_ERROR);  // closed
  EXPECT_EQ(ctrt_session_open(reinterpret_cast<ctrt_engine*>(sessions[0]), nullptr, &refused), CTRT_INPUT_ERROR);
  for (auto* session : sessions) ctrt_session_close(session);
}

TEST(HostileSnapshot, OneFlippedBitInTensorDataIsRefusedByItsCrc) {
  ctrt_session* session = open_conv();
  int64_t stream = -1, restored = -1;
  ASSERT_EQ(ctrt_add_stream(session, &stream), CTRT_OK);
  feed(session, stream, 29);
  uint8_t* bytes = nullptr;
  size_t size = 0;
  ASSERT_EQ(ctrt_snapshot_bytes(session, stream, &bytes, &size), CTRT_OK) << ctrt_last_error();
  std::vector<uint8_t> damaged(bytes, bytes + size);
  ctrt_free(bytes);
  // the first member named mem.npy: its npy magic, then one bit of its first row's data
  const std::string name = "mem.npy", magic = "\x93NUMPY";
  const auto at = std::search(damaged.begin(), damaged.end(), name.begin(), name.end());
  const auto data = std::search(at, damaged.end(), magic.begin(), magic.end(),
                                [](uint8_t byte, char want) { return byte == static_cast<uint8_t>(want); });
  ASSERT_NE(data, damaged.end());
  *(data + 128 + 1) ^= 0x01;  // past the 128-byte header: mem[0, 0, 0] changes in its last bits
  EXPECT_EQ(ctrt_restore_bytes(session, damaged.data(), damaged.size(), -1, &restored), CTRT_INPUT_ERROR);
  EXPECT_NE(std::string(ctrt_last_error()).find("member mem.npy fails its CRC-32 check"), std::string::npos)
      << ctrt_last_error();
  size_t count = 0;
  ASSERT_EQ(ctrt_streams(session, nullptr, 0, &count), CTRT_OK);
  EXPECT_EQ(count, 1u);  // nothing was restored
  ctrt_session_close(session);
}

TEST(HostileHandles, EveryCallOnAClosedHandleIsAnInputError) {
  ctrt_session* session = open_conv();
  int64_t stream = -1, position = -1;
  ASSERT_EQ(ctrt_add_stream(session, &stream), CTRT_OK);
  ctrt_session_close(session);
  EXPECT_EQ(ctrt_position(session, stream, &position), CTRT_INPUT_ERROR);
  EXPECT_STREQ(ctrt_last_error(), "session is NULL, closed or not a session handle");
  EXPECT_EQ(ctrt_add_stream(session, &stream), CTRT_INPUT_ERROR);
  ctrt_timing timing;
  EXPECT_EQ(ctrt_timing_get(session, &timing), CTRT_INPUT_ERROR);
  EXPECT_EQ(ctrt_state_count(session), 0u);
  EXPECT_EQ(ctrt_state_name(session, 0), nullptr);
  ctrt_session_close(session);  // a second close does nothing
}

TEST(HostileHandles, AClosedHandleStaysClosedWhenItsSlotIsReused) {
  ctrt_session* first = open_conv();
  ctrt_session_close(first);
  ctrt_session* second = open_conv();
  size_t count = 7;
  EXPECT_EQ(ctrt_streams(first, nullptr, 0, &count), CTRT_INPUT_ERROR);
  EXPECT_EQ(ctrt_streams(second, nullptr, 0, &count), CTRT_OK) << ctrt_last_error();
  EXPECT_EQ(count, 0u);
  ctrt_session_close(second);
}

TEST(HostileHandles, APointerThatIsNoHandleIsAnInputError) {
  std::vector<uint8_t> not_a_session(256, 0xab);
  auto* foreign = reinterpret_cast<ctrt_session*>(not_a_session.data());
  int64_t stream = -1;
  EXPECT_EQ(ctrt_add_stream(foreign, &stream), CTRT_INPUT_ERROR);
  EXPECT_EQ(ctrt_add_stream(nullptr, &stream), CTRT_INPUT_ERROR);
  ctrt_session_close(foreign);  // nothing to close
}

namespace {

ctrt_status generate(ctrt_session* session, int64_t stream, const std::vector<int32_t>& prompt, size_t max_new_tokens,
                     std::vector<int32_t>& out) {
  ctrt_sampling greedy = ctrt_sampling_default();
  greedy.greedy = 1;
  out.assign(max_new_tokens, -1);
  size_t generated = 99;
  const ctrt_status status = ctrt_generate(session, stream, prompt.data(), prompt.size(), max_new_tokens, &greedy,
                                           nullptr, 0, out.data(), &generated);
  out.resize(generated);
  return status;
}

int64_t position_of(ctrt_session* session, int64_t stream) {
  int64_t position = -1;
  if (ctrt_position(session, stream, &position) != CTRT_OK) throw std::runtime_error(ctrt_last_error());
  return position;
}

}  // namespace

TEST(FailureSemantics, AFailedCallInGenerateReturnsTheTokensTheStreamHolds) {
  ctrt_session* failing = open_conv(1);
  ctrt_session* reference = open_conv(1);
  int64_t a = -1, b = -1;
  ASSERT_EQ(ctrt_add_stream(failing, &a), CTRT_OK);
  ASSERT_EQ(ctrt_add_stream(reference, &b), CTRT_OK);
  feed(failing, a, 2);
  feed(reference, b, 2);
  const std::vector<int32_t> prompt = {100, 101, 102};
  std::vector<int32_t> expected, got, rest;
  ASSERT_EQ(generate(reference, b, prompt, 10, expected), CTRT_OK) << ctrt_last_error();
  // position 2 + 3 prompt tokens: the third generated token fills the segment (L = 8), and the
  // commit after it fails; its tokens are consumed
  ASSERT_EQ(ctrt_fail_next_calls(failing, "commit", 1), CTRT_OK);
  EXPECT_EQ(generate(failing, a, prompt, 10, got), CTRT_ENGINE_CALL_FAILED);
  EXPECT_EQ(got, std::vector<int32_t>(expected.begin(), expected.begin() + 3));
  EXPECT_EQ(position_of(failing, a), 8);
  // an extend that fails: the token sampled for it is not the stream's, and not in out
  ASSERT_EQ(ctrt_fail_next_calls(failing, "extend", 1), CTRT_OK);
  EXPECT_EQ(generate(failing, a, {}, 7, rest), CTRT_ENGINE_CALL_FAILED);
  EXPECT_TRUE(rest.empty());
  EXPECT_EQ(position_of(failing, a), 8);
  // continuing generates what an unfailed run generated
  EXPECT_EQ(generate(failing, a, {}, 7, rest), CTRT_OK) << ctrt_last_error();
  EXPECT_EQ(rest, std::vector<int32_t>(expected.begin() + 3, expected.end()));
  EXPECT_EQ(position_of(failing, a), position_of(reference, b));
  ctrt_session_close(failing);
  ctrt_session_close(reference);
}

TEST(FailureSemantics, AFailedPromptFeedInGenerateCountsOnlyTheConsumedTokens) {
  ctrt_session* session = open_conv(1);
  int64_t stream = -1;
  ASSERT_EQ(ctrt_add_stream(session, &stream), CTRT_OK);
  feed(session, stream, 2);
  // 10 prompt tokens from position 2: an extend of 6 (fails) before the segment boundary
  std::vector<int32_t> prompt(10, 65), out;
  ASSERT_EQ(ctrt_fail_next_calls(session, "extend", 1), CTRT_OK);
  EXPECT_EQ(generate(session, stream, prompt, 4, out), CTRT_ENGINE_CALL_FAILED);
  EXPECT_TRUE(out.empty());
  EXPECT_EQ(position_of(session, stream), 2);
  ctrt_session_close(session);
}
