// ctrt::Session on the tiny exported engines (CTRT_TEST_ENGINES, ctest's fixture): failure
// semantics, snapshots, the slot pool, refused engines and input. The equality with the Python
// runtime is tests/test_native_equality.py's.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "ctrt/engine.hpp"
#include "ctrt/error.hpp"
#include "ctrt/session.hpp"

namespace fs = std::filesystem;

namespace {

std::string engine_dir(const std::string& compress_fn) {
  const char* root = std::getenv("CTRT_TEST_ENGINES");
  if (!root) throw std::runtime_error("CTRT_TEST_ENGINES is not set (ctest sets it)");
  return std::string(root) + "/" + compress_fn;
}

std::shared_ptr<ctrt::Engine> open(const std::string& dir) {
  ctrt::EngineOptions options;
  options.threads = 1;
  return ctrt::Engine::open(dir, options);
}

std::vector<int32_t> tokens(size_t count, uint32_t seed) {
  std::mt19937 random(seed);
  std::vector<int32_t> out(count);
  for (auto& token : out) token = static_cast<int32_t>(random() % 256);
  return out;
}

std::vector<float> feed(ctrt::Session& session, int64_t stream, const std::vector<int32_t>& ids) {
  std::vector<float> logits(ids.size() * static_cast<size_t>(session.dims().vocab_size));
  session.feed({{stream, ids.data(), ids.size(), logits.data()}});
  return logits;
}

std::map<std::string, std::vector<uint8_t>> state(const ctrt::Session& session, int64_t stream) {
  std::map<std::string, std::vector<uint8_t>> out;
  for (const auto& name : session.state_names()) {
    const auto& spec = session.state_spec(name);
    std::vector<uint8_t> row(static_cast<size_t>(spec.row_elements()) * ctrt::dtype_size(spec.dtype));
    session.read_state(stream, name, row.data(), row.size());
    out[name] = row;
  }
  return out;
}

// a copy of an engine directory, to tamper with
fs::path copy_engine(const std::string& compress_fn, const std::string& name) {
  const fs::path out = fs::temp_directory_path() / ("ctrt_test_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(out);
  fs::copy(engine_dir(compress_fn), out, fs::copy_options::recursive);
  return out;
}

void flip_byte(const fs::path& file, size_t offset) {
  std::fstream io(file, std::ios::in | std::ios::out | std::ios::binary);
  io.seekg(static_cast<std::streamoff>(offset));
  char byte = 0;
  io.get(byte);
  io.seekp(static_cast<std::streamoff>(offset));
  io.put(static_cast<char>(byte ^ 0x5a));
}

void expect_refused(const fs::path& dir, const std::string& phrase) {
  try {
    open(dir.string());
    FAIL() << dir << " was loaded";
  } catch (const ctrt::EngineError& exc) {
    EXPECT_NE(std::string(exc.what()).find(phrase), std::string::npos) << exc.what();
  }
}

}  // namespace

TEST(Engine, TamperedWeightsGraphOrManifestAreRefused) {
  const fs::path weights = copy_engine("conv", "weights");
  flip_byte(weights / "weights.bin", 100);
  expect_refused(weights, "the weights were changed after export");
  const fs::path graph = copy_engine("conv", "graph");
  flip_byte(graph / "extend.onnx", 40);
  expect_refused(graph, "extend.onnx does not match the sha256");
  const fs::path manifest = copy_engine("conv", "manifest");
  {
    std::ifstream in(manifest / "manifest.json");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const size_t at = text.find("\"format_version\": 3");
    ASSERT_NE(at, std::string::npos);
    text.replace(at, 19, "\"format_version\": 2");
    std::ofstream(manifest / "manifest.json", std::ios::trunc) << text;
  }
  expect_refused(manifest, "re-export the checkpoint");
  for (const auto& dir : {weights, graph, manifest}) fs::remove_all(dir);
}

TEST(Session, DecodingTokenByTokenEqualsScoringInOneCall) {
  auto engine = open(engine_dir("conv"));
  ctrt::Session session(engine, 2);
  const int64_t whole = session.add_stream(), stepped = session.add_stream();
  const auto ids = tokens(37, 1);
  const auto expected = feed(session, whole, ids);
  const size_t vocab = static_cast<size_t>(session.dims().vocab_size);
  double worst = 0, scale = 1;
  for (size_t t = 0; t < ids.size(); ++t) {
    const auto logits = feed(session, stepped, {ids[t]});
    for (size_t v = 0; v < vocab; ++v) {
      worst = std::max(worst, std::abs(static_cast<double>(logits[v]) - expected[t * vocab + v]));
      scale = std::max(scale, std::abs(static_cast<double>(expected[t * vocab + v])));
    }
  }
  EXPECT_LE(worst, 1e-4 * scale);
  EXPECT_EQ(session.position(stepped), 37);
}

TEST(Session, AFailedExtendChangesNothingAndFeedingTheRestContinues) {
  auto engine = open(engine_dir("most_used"));
  ctrt::Session failing(engine, 1), reference(engine, 1);
  const int64_t a = failing.add_stream(), b = reference.add_stream();
  const auto first = tokens(5, 2), second = tokens(4, 3);
  feed(failing, a, first);
  feed(reference, b, first);
  const auto before = state(failing, a);
  failing.fail_next_calls(ctrt::Entry::extend, 1);
  std::vector<size_t> consumed;
  EXPECT_THROW(failing.feed({{a, second.data(), second.size(), nullptr}}, &consumed), ctrt::EngineCallError);
  EXPECT_EQ(consumed, std::vector<size_t>{0});
  EXPECT_EQ(failing.position(a), 5);
  EXPECT_EQ(state(failing, a), before);
  EXPECT_EQ(feed(failing, a, second), feed(reference, b, second));
  EXPECT_EQ(state(failing, a), state(reference, b));
}

TEST(Session, AFailedCommitConsumesTheTokensAndTheNextFeedCommitsFirst) {
  auto engine = open(engine_dir("conv"));
  ctrt::Session failing(engine, 1), reference(engine, 1);
  const int64_t a = failing.add_stream(), b = reference.add_stream();
  const auto first = tokens(5, 4), second = tokens(3, 5), third = tokens(6, 6);
  feed(failing, a, first);
  feed(reference, b, first);
  failing.fail_next_calls(ctrt::Entry::commit, 1);
  std::vector<size_t> consumed;
  try {
    failing.feed({{a, second.data(), second.size(), nullptr}}, &consumed);
    FAIL() << "the commit did not fail";
  } catch (const ctrt::EngineCallError& exc) {
    EXPECT_EQ(exc.consumed, std::vector<size_t>{3});
    EXPECT_NE(std::string(exc.what()).find("stream 0: 3 of 3"), std::string::npos) << exc.what();
  }
  EXPECT_EQ(failing.position(a), 8);
  feed(reference, b, second);
  EXPECT_EQ(feed(failing, a, third), feed(reference, b, third));
  EXPECT_EQ(state(failing, a), state(reference, b));
}

TEST(Session, ASnapshotRestoresTheWholeStreamAndItsLastLogits) {
  auto engine = open(engine_dir("most_used"));
  ctrt::Session session(engine, 3);
  const int64_t a = session.add_stream();
  feed(session, a, tokens(29, 7));
  const auto bytes = session.snapshot(a);
  const int64_t copy = session.restore(bytes.data(), bytes.size(), std::nullopt);
  EXPECT_EQ(state(session, copy), state(session, a));
  EXPECT_EQ(session.position(copy), 29);
  const size_t vocab = static_cast<size_t>(session.dims().vocab_size);
  EXPECT_TRUE(std::equal(session.last_logits(a), session.last_logits(a) + vocab, session.last_logits(copy)));
  const auto more = tokens(11, 8);
  EXPECT_EQ(feed(session, copy, more), feed(session, a, more));
  // a damaged snapshot changes nothing
  auto damaged = bytes;
  damaged.resize(damaged.size() / 2);
  EXPECT_THROW(session.restore(damaged.data(), damaged.size(), copy), ctrt::InputError);
  EXPECT_EQ(state(session, copy), state(session, a));
  EXPECT_EQ(session.streams().size(), 2u);
}

TEST(Session, RemovingAStreamMovesTheLastIntoItsRowAndKeepsEveryState) {
  auto engine = open(engine_dir("conv"));
  ctrt::Session session(engine, 3);
  std::vector<int64_t> ids = {session.add_stream(), session.add_stream(), session.add_stream()};
  for (size_t i = 0; i < ids.size(); ++i) feed(session, ids[i], tokens(9 + 5 * i, static_cast<uint32_t>(10 + i)));
  const auto last = state(session, ids[2]);
  session.remove_stream(ids[0]);
  EXPECT_EQ(session.streams(), (std::vector<int64_t>{ids[1], ids[2]}));
  EXPECT_EQ(state(session, ids[2]), last);
  EXPECT_EQ(session.add_stream(), 3);  // ids are never reused
}

TEST(Session, BadInputIsRefusedBeforeAnythingRuns) {
  auto engine = open(engine_dir("none"));
  ctrt::Session session(engine, 1);
  const int64_t a = session.add_stream();
  const std::vector<int32_t> bad = {1, 2, 256};
  try {
    session.feed({{a, bad.data(), bad.size(), nullptr}});
    FAIL() << "token 256 was accepted";
  } catch (const ctrt::InputError& exc) {
    EXPECT_STREQ(exc.what(), "token id 256 is out of range [0, 256)");
  }
  EXPECT_EQ(session.position(a), 0);
  EXPECT_THROW(session.last_logits(a), ctrt::InputError);
  EXPECT_THROW(session.add_stream(), ctrt::InputError);  // one slot
  try {
    session.position(5);
    FAIL() << "stream 5 was found";
  } catch (const ctrt::InputError& exc) {
    EXPECT_STREQ(exc.what(), "no stream 5 in this session (streams: [0])");
  }
}
