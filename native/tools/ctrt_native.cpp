// ctrt-native: the native runtime's command line, `ctrt score` and `ctrt generate` without
// Python.
//   ctrt-native score ENGINE FILE... [--streams N] [--threads N] [--prepack MODE] [--json]
//   ctrt-native generate ENGINE --prompt TEXT [--prompt-file PATH] [--max-new-tokens N]
//       [--greedy] [--temperature T] [--top-k K] [--top-p P] [--seed S] [--stop TEXT] [--json]
// A mistake you can fix prints `error: ...` and exits 2.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ctrt/engine.hpp"
#include "ctrt/error.hpp"
#include "ctrt/session.hpp"

namespace {

const char* kUsage =
    "usage: ctrt-native score ENGINE FILE... [--streams N] [--threads N] [--prepack all|decode|none] [--json]\n"
    "       ctrt-native generate ENGINE (--prompt TEXT | --prompt-file PATH)... [--max-new-tokens N]\n"
    "           [--greedy] [--temperature T] [--top-k K] [--top-p P] [--seed S] [--stop TEXT]...\n"
    "           [--threads N] [--prepack all|decode|none] [--json]\n"
    "\n"
    "score: bits per byte of each FILE (read as bytes) with fresh memory, up to --streams (default 4)\n"
    "  at once, like `ctrt score`. generate: each prompt on a stream of its own, up to\n"
    "  --max-new-tokens (default 200) bytes; --greedy takes the argmax, else temperature (1.0),\n"
    "  top-k (0: off), top-p (1.0: off) with a seed (default: drawn at random and printed by --json);\n"
    "  Sampling version 2, the same tokens as `ctrt generate` for the same seed.\n"
    "  --threads: ONNX Runtime threads (default: every core); --prepack: which graphs prepack\n"
    "  their weights (default all).\n"
    "ONNX Runtime is found through CTRT_ONNXRUNTIME_LIBRARY, the active venv (VIRTUAL_ENV), the\n"
    "path recorded at build time, then the dynamic loader.\n";

struct Usage : ctrt::InputError {
  using ctrt::InputError::InputError;
};

std::string read_bytes(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ctrt::InputError(std::string(what) + " " + path + " cannot be read");
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

long long parse_int(const std::string& text, const std::string& option) {
  try {
    size_t used = 0;
    const long long value = std::stoll(text, &used);
    if (used == text.size()) return value;
  } catch (const std::exception&) {
  }
  throw Usage(option + " expects an integer, got '" + text + "'");
}

// A seed as `ctrt generate --seed` takes it: any integer, mod 2^64 (Sampling.seed), so every
// seed --json prints (unsigned 64-bit) replays.
unsigned long long parse_seed(const std::string& text, const std::string& option) {
  try {
    size_t used = 0;
    const bool negative = !text.empty() && text[0] == '-';
    const unsigned long long value = negative ? static_cast<unsigned long long>(std::stoll(text, &used))
                                              : std::stoull(text, &used);
    if (used == text.size() && !text.empty() && text[0] != '+' && !std::isspace(static_cast<unsigned char>(text[0]))) {
      return value;
    }
  } catch (const std::exception&) {
  }
  throw Usage(option + " expects an integer in [-2^63, 2^64), got '" + text + "'");
}

double parse_double(const std::string& text, const std::string& option) {
  try {
    size_t used = 0;
    const double value = std::stod(text, &used);
    if (used == text.size()) return value;
  } catch (const std::exception&) {
  }
  throw Usage(option + " expects a number, got '" + text + "'");
}

struct Args {
  std::string command, engine;
  std::vector<std::string> files;
  std::vector<std::string> prompts;
  std::vector<std::string> stops;
  long long streams = 4, threads = 0, max_new_tokens = 200, top_k = 0;
  double temperature = 1.0, top_p = 1.0;
  bool greedy = false, json = false, seeded = false;
  unsigned long long seed = 0;
  std::string prepack = "all";
};

Args parse(int argc, char** argv) {
  Args args;
  std::vector<std::string> words(argv + 1, argv + argc);
  if (words.empty()) throw Usage("no command given: use score or generate");
  args.command = words[0];
  if (args.command != "score" && args.command != "generate") {
    throw Usage("unknown command '" + args.command + "': use score or generate");
  }
  const bool scoring = args.command == "score";
  for (size_t i = 1; i < words.size(); ++i) {
    const std::string& word = words[i];
    auto value = [&]() -> const std::string& {
      if (i + 1 >= words.size()) throw Usage(word + " needs a value");
      return words[++i];
    };
    if (word == "--json") args.json = true;
    else if (word == "--threads") args.threads = parse_int(value(), word);
    else if (word == "--prepack") args.prepack = value();
    else if (scoring && word == "--streams") args.streams = parse_int(value(), word);
    else if (!scoring && word == "--prompt") args.prompts.push_back(value());
    else if (!scoring && word == "--prompt-file") args.prompts.push_back(read_bytes(value(), "prompt file"));
    else if (!scoring && word == "--max-new-tokens") args.max_new_tokens = parse_int(value(), word);
    else if (!scoring && word == "--greedy") args.greedy = true;
    else if (!scoring && word == "--temperature") args.temperature = parse_double(value(), word);
    else if (!scoring && word == "--top-k") args.top_k = parse_int(value(), word);
    else if (!scoring && word == "--top-p") args.top_p = parse_double(value(), word);
    else if (!scoring && word == "--stop") args.stops.push_back(value());
    else if (!scoring && word == "--seed") {
      args.seed = parse_seed(value(), word);
      args.seeded = true;
    } else if (word.rfind("--", 0) == 0) throw Usage("unknown option " + word + " for " + args.command);
    else if (args.engine.empty()) args.engine = word;
    else if (scoring) args.files.push_back(word);
    else throw Usage("unexpected argument '" + word + "'");
  }
  if (args.engine.empty()) throw Usage("no ENGINE directory given");
  if (scoring && args.files.empty()) throw Usage("no FILE to score given");
  if (!scoring && args.prompts.empty()) throw Usage("no prompt given: add --prompt TEXT or --prompt-file PATH");
  if (args.threads < 0) throw Usage("--threads must be >= 1 (or omitted: every core)");
  if (args.streams < 1) throw Usage("--streams must be >= 1");
  if (args.max_new_tokens < 0) throw Usage("--max-new-tokens must be >= 0");
  return args;
}

std::shared_ptr<ctrt::Engine> open_engine(const Args& args, int max_streams) {
  ctrt::EngineOptions options;
  options.threads = static_cast<int>(args.threads);
  options.prepack = args.prepack;
  options.max_batch = max_streams;
  return ctrt::Engine::open(args.engine, options);
}

// -log2 p(target) summed over positions, from logits [n, V]
double target_bits(const float* logits, const uint8_t* targets, size_t n, size_t vocab) {
  double bits = 0;
  for (size_t t = 0; t < n; ++t) {
    const float* row = logits + t * vocab;
    double peak = row[0];
    for (size_t i = 1; i < vocab; ++i) peak = std::max(peak, static_cast<double>(row[i]));
    double total = 0;
    for (size_t i = 0; i < vocab; ++i) total += std::exp(static_cast<double>(row[i]) - peak);
    bits += (std::log(total) + peak - static_cast<double>(row[targets[t]])) / std::log(2.0);
  }
  return bits;
}

nlohmann::json bits_per_byte(double bits, size_t bytes) {
  return bytes >= 2 ? nlohmann::json(bits / static_cast<double>(bytes - 1)) : nlohmann::json(nullptr);
}

int score(const Args& args) {
  std::vector<std::string> documents;
  for (const auto& file : args.files) documents.push_back(read_bytes(file, "document"));
  const int max_streams = static_cast<int>(std::max<size_t>(1, std::min<size_t>(args.streams, documents.size())));
  auto engine = open_engine(args, max_streams);
  ctrt::Session session(engine, max_streams);
  const size_t vocab = static_cast<size_t>(session.dims().vocab_size);
  if (vocab < 256) throw ctrt::InputError("score reads bytes: the engine's vocabulary has " + std::to_string(vocab) + " tokens, not 256");
  const size_t chunk = static_cast<size_t>(session.dims().seg_len);
  std::vector<double> bits(documents.size(), 0.0);
  struct Open {
    size_t document, done;
    std::vector<int32_t> tokens;
  };
  std::vector<size_t> queue;
  for (size_t i = 0; i < documents.size(); ++i)
    if (documents[i].size() >= 2) queue.push_back(i);
  std::map<int64_t, Open> open;
  std::vector<float> logits;
  size_t next = 0;
  // each round feeds every open document its next chunk (aligned to segment boundaries)
  while (next < queue.size() || !open.empty()) {
    while (next < queue.size() && static_cast<int>(open.size()) < max_streams) {
      const std::string& data = documents[queue[next]];
      open[session.add_stream()] = Open{queue[next++], 0, std::vector<int32_t>(data.begin(), data.end())};
      for (auto& value : open.rbegin()->second.tokens) value &= 0xff;
    }
    std::vector<ctrt::StreamTokens> feed;
    std::vector<size_t> offsets;
    size_t total = 0;
    for (auto& [stream, doc] : open) {
      offsets.push_back(total);
      total += std::min(chunk, doc.tokens.size() - doc.done);
    }
    logits.resize(total * vocab);
    size_t k = 0;
    for (auto& [stream, doc] : open) {
      const size_t n = std::min(chunk, doc.tokens.size() - doc.done);
      feed.push_back({stream, doc.tokens.data() + doc.done, n, logits.data() + offsets[k++] * vocab});
    }
    session.feed(feed);
    k = 0;
    for (auto it = open.begin(); it != open.end();) {
      Open& doc = it->second;
      const size_t n = feed[k].count;
      const std::string& data = documents[doc.document];
      const size_t targets = std::min(n, data.size() - doc.done - 1);
      bits[doc.document] += target_bits(logits.data() + offsets[k] * vocab,
                                        reinterpret_cast<const uint8_t*>(data.data()) + doc.done + 1, targets, vocab);
      doc.done += n;
      ++k;
      if (doc.done >= doc.tokens.size()) {
        session.remove_stream(it->first);
        it = open.erase(it);
      } else {
        ++it;
      }
    }
  }
  double all_bits = 0;
  size_t predicted = 0;
  nlohmann::json rows = nlohmann::json::array();
  for (size_t i = 0; i < documents.size(); ++i) {
    all_bits += bits[i];
    predicted += documents[i].size() >= 2 ? documents[i].size() - 1 : 0;
    rows.push_back({{"file", args.files[i]}, {"bytes", documents[i].size()}, {"bits", bits[i]},
                    {"bits_per_byte", bits_per_byte(bits[i], documents[i].size())}});
  }
  const nlohmann::json overall = predicted ? nlohmann::json(all_bits / static_cast<double>(predicted)) : nlohmann::json(nullptr);
  if (args.json) {
    std::cout << nlohmann::json{{"backend", engine->backend_name()}, {"bits_per_byte", overall}, {"documents", rows}}.dump()
              << "\n";
    return 0;
  }
  auto text = [](const nlohmann::json& value) {
    if (value.is_null()) return std::string("n/a");
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, "%.4f", value.get<double>());
    return std::string(buffer);
  };
  size_t total_bytes = 0;
  for (const auto& row : rows) {
    std::printf("%8s bpb  %10zu bytes  %s\n", text(row["bits_per_byte"]).c_str(), row["bytes"].get<size_t>(),
                row["file"].get<std::string>().c_str());
    total_bytes += row["bytes"].get<size_t>();
  }
  std::printf("%8s bpb  %10zu bytes  total\n", text(overall).c_str(), total_bytes);
  return 0;
}

int generate(const Args& args) {
  ctrt::Sampling sampling;
  sampling.greedy = args.greedy;
  sampling.temperature = args.temperature;
  sampling.top_k = args.top_k;
  sampling.top_p = args.top_p;
  if (args.seeded) {
    sampling.seed = args.seed;
  } else {  // as the scheduler does for a seed of None: 64 random bits, reported
    std::random_device device;
    sampling.seed = (static_cast<uint64_t>(device()) << 32) ^ device();
  }
  sampling.validate();
  auto engine = open_engine(args, 1);
  const int64_t vocab = engine->dims().vocab_size;
  if (vocab > 256) {  // as `ctrt generate` (runtime/scheduler.py)
    throw ctrt::InputError("generate decodes byte tokens, but this engine's vocab_size is " + std::to_string(vocab) +
                           " (> 256)");
  }
  ctrt::Session session(engine, 1);
  nlohmann::json requests = nlohmann::json::array();
  for (const auto& prompt : args.prompts) {
    if (prompt.empty()) throw ctrt::InputError("a prompt is empty: the model has no start-of-text token");
    const int64_t stream = session.add_stream();
    std::vector<int32_t> tokens;
    for (unsigned char byte : prompt) tokens.push_back(byte);
    std::vector<int32_t> out;
    session.generate(stream, tokens, static_cast<size_t>(args.max_new_tokens), sampling, args.stops, out);
    session.remove_stream(stream);
    std::string text;
    for (int32_t token : out) text += static_cast<char>(token);
    bool stopped = false;
    for (const auto& stop : args.stops)
      stopped |= !stop.empty() && text.size() >= stop.size() && text.compare(text.size() - stop.size(), stop.size(), stop) == 0;
    const std::string reason = stopped ? "stop" : "length";
    if (args.json) {
      requests.push_back({{"prompt", prompt}, {"text", text}, {"tokens", out}, {"finish_reason", reason}});
    } else {
      std::fwrite(text.data(), 1, text.size(), stdout);
      std::fputc('\n', stdout);
    }
  }
  if (args.json) {
    const nlohmann::json out = {
        {"backend", engine->backend_name()},
        {"max_new_tokens", args.max_new_tokens},
        {"sampling", {{"greedy", sampling.greedy}, {"temperature", sampling.temperature}, {"top_k", sampling.top_k},
                      {"top_p", sampling.top_p}, {"seed", sampling.seed}}},
        {"stop", args.stops},
        {"requests", requests}};
    std::cout << out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) {
      std::fputs(kUsage, stdout);
      return 0;
    }
  }
  try {
    const Args args = parse(argc, argv);
    return args.command == "score" ? score(args) : generate(args);
  } catch (const Usage& exc) {
    std::fprintf(stderr, "%serror: %s\n", kUsage, exc.what());
    return 2;
  } catch (const ctrt::Error& exc) {
    std::fprintf(stderr, "error: %s\n", exc.what());
    return 2;
  } catch (const std::exception& exc) {
    std::fprintf(stderr, "internal error: %s\n", exc.what());
    return 1;
  }
}
