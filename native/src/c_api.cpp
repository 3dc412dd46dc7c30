// extern "C" over ctrt::Session: every exception becomes a status code and a thread-local
// message; nothing escapes into the caller.
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <string>

#include "ctrt/ctrt.h"
#include "ctrt/error.hpp"
#include "ctrt/session.hpp"
#include "handles.hpp"
#include "ort.hpp"

namespace {

static_assert(sizeof(void*) == sizeof(uint64_t), "handles are 64-bit ids carried in pointers");

ctrt::HandleTable<ctrt::Session>& sessions() {
  static ctrt::HandleTable<ctrt::Session> table(0x5e);
  return table;
}

ctrt::HandleTable<ctrt::Engine>& engines() {
  static ctrt::HandleTable<ctrt::Engine> table(0xe9);
  return table;
}

template <typename Handle>
uint64_t id_of(const Handle* handle) { return reinterpret_cast<uintptr_t>(handle); }

thread_local std::string last_error;

template <typename Body>
ctrt_status guarded(Body&& body) {
  try {
    body();
    return CTRT_OK;
  } catch (const ctrt::Error& exc) {
    last_error = exc.what();
    return exc.status();
  } catch (const Ort::Exception& exc) {
    last_error = std::string("ONNX Runtime: ") + exc.what();
    return CTRT_ENGINE_ERROR;
  } catch (const std::bad_alloc&) {
    last_error = "out of memory";
    return CTRT_INTERNAL_ERROR;
  } catch (const std::exception& exc) {
    last_error = std::string("internal error: ") + exc.what();
    return CTRT_INTERNAL_ERROR;
  }
}

// The open session a handle names; the caller keeps it alive for the call (a close on another
// thread meanwhile frees it only after the call returns).
std::shared_ptr<ctrt::Session> session_of(ctrt_session* session) {
  auto found = sessions().find(id_of(session));
  if (!found) throw ctrt::InputError("session is NULL, closed or not a session handle");
  return found;
}

void need(const void* pointer, const char* what) {
  if (!pointer) throw ctrt::InputError(std::string(what) + " is NULL");
}

ctrt::Entry entry_named(const char* name) {
  need(name, "entry");
  for (int i = 0; i < 3; ++i)
    if (std::strcmp(name, ctrt::kEntryPoints[i]) == 0) return static_cast<ctrt::Entry>(i);
  throw ctrt::InputError(std::string("no entry point '") + name + "': choose segment, extend or commit");
}

// A caller's options struct: struct_size must be this header's (the only version so far).
template <typename Options>
void check_size(const Options* options, const char* name) {
  if (options->struct_size != sizeof(Options)) {
    throw ctrt::InputError(std::string(name) + ".struct_size is " + std::to_string(options->struct_size) +
                           ", this library's " + name + " has " + std::to_string(sizeof(Options)) +
                           " bytes: start from " + name + "_default()");
  }
}

ctrt::Sampling sampling_of(const ctrt_sampling* sampling) {
  need(sampling, "sampling");
  check_size(sampling, "ctrt_sampling");
  ctrt::Sampling out;
  out.greedy = sampling->greedy != 0;
  out.temperature = sampling->temperature;
  out.top_k = sampling->top_k;
  out.top_p = sampling->top_p;
  out.seed = sampling->seed;
  out.validate();
  return out;
}

}  // namespace

extern "C" {

const char* ctrt_version(void) { return CTRT_VERSION; }

const char* ctrt_last_error(void) { return last_error.c_str(); }

const char* ctrt_onnxruntime_library(void) { return ctrt::ort::library_path(); }

ctrt_engine_options ctrt_engine_options_default(void) {
  return ctrt_engine_options{sizeof(ctrt_engine_options), 0, "all", "cpu", 0, 64};
}

ctrt_session_options ctrt_session_options_default(void) {
  return ctrt_session_options{sizeof(ctrt_session_options), 1};
}

ctrt_sampling ctrt_sampling_default(void) { return ctrt_sampling{sizeof(ctrt_sampling), 0, 1.0, 0, 1.0, 0}; }

ctrt_status ctrt_engine_open(const char* engine_dir, const ctrt_engine_options* options, ctrt_engine** out) {
  if (out) *out = nullptr;
  return guarded([&] {
    need(engine_dir, "engine_dir");
    need(out, "out");
    if (options) check_size(options, "ctrt_engine_options");
    const ctrt_engine_options chosen = options ? *options : ctrt_engine_options_default();
    ctrt::EngineOptions engine_options;
    engine_options.threads = chosen.threads;
    engine_options.prepack = chosen.prepack ? chosen.prepack : "all";
    engine_options.provider = chosen.provider ? chosen.provider : "cpu";
    engine_options.device_id = chosen.device_id;
    engine_options.max_batch = chosen.max_batch;
    const uint64_t id = engines().insert(ctrt::Engine::open(engine_dir, engine_options));
    *out = reinterpret_cast<ctrt_engine*>(static_cast<uintptr_t>(id));
  });
}

void ctrt_engine_close(ctrt_engine* engine) {
  engines().remove(id_of(engine));  // sessions over it hold it until they close
}

ctrt_status ctrt_session_open(ctrt_engine* engine, const ctrt_session_options* options, ctrt_session** out) {
  if (out) *out = nullptr;
  return guarded([&] {
    need(out, "out");
    auto opened = engines().find(id_of(engine));
    if (!opened) throw ctrt::InputError("engine is NULL, closed or not an engine handle");
    if (options) check_size(options, "ctrt_session_options");
    const ctrt_session_options chosen = options ? *options : ctrt_session_options_default();
    const uint64_t id = sessions().insert(std::make_shared<ctrt::Session>(std::move(opened), chosen.max_streams));
    *out = reinterpret_cast<ctrt_session*>(static_cast<uintptr_t>(id));
  });
}

void ctrt_session_close(ctrt_session* session) {
  std::shared_ptr<ctrt::Session> closed = sessions().remove(id_of(session));
  // destroyed here, or when a call still running on another thread returns
}

ctrt_status ctrt_session_dims(ctrt_session* session, ctrt_dims* out) {
  return guarded([&] {
    need(out, "out");
    const auto s = session_of(session);
    const auto& d = s->dims();
    *out = ctrt_dims{d.vocab_size, d.n_layers, d.d_model, d.n_heads, d.seg_len, d.mem_len, d.cmem_len,
                     s->max_streams()};
  });
}

ctrt_status ctrt_add_stream(ctrt_session* session, int64_t* stream_id) {
  return guarded([&] {
    need(stream_id, "stream_id");
    *stream_id = session_of(session)->add_stream();
  });
}

ctrt_status ctrt_remove_stream(ctrt_session* session, int64_t stream_id) {
  return guarded([&] { session_of(session)->remove_stream(stream_id); });
}

ctrt_status ctrt_reset_stream(ctrt_session* session, int64_t stream_id) {
  return guarded([&] { session_of(session)->reset_stream(stream_id); });
}

ctrt_status ctrt_streams(ctrt_session* session, int64_t* ids, size_t capacity, size_t* count) {
  return guarded([&] {
    need(count, "count");
    const auto streams = session_of(session)->streams();
    if (capacity) need(ids, "ids");
    for (size_t i = 0; i < streams.size() && i < capacity; ++i) ids[i] = streams[i];
    *count = streams.size();
  });
}

ctrt_status ctrt_position(ctrt_session* session, int64_t stream_id, int64_t* position) {
  return guarded([&] {
    need(position, "position");
    *position = session_of(session)->position(stream_id);
  });
}

ctrt_status ctrt_feed(ctrt_session* session, size_t n_streams, const int64_t* stream_ids,
                      const int32_t* const* tokens, const size_t* counts, float* const* logits,
                      size_t* consumed) {
  return guarded([&] {
    const auto s = session_of(session);
    if (n_streams) {
      need(stream_ids, "stream_ids");
      need(tokens, "tokens");
      need(counts, "counts");
    }
    std::vector<ctrt::StreamTokens> feed(n_streams);
    for (size_t i = 0; i < n_streams; ++i) {
      feed[i] = {stream_ids[i], tokens[i], counts[i], logits ? logits[i] : nullptr};
    }
    std::vector<size_t> done;
    try {
      s->feed(feed, &done);
    } catch (const ctrt::EngineCallError&) {
      if (consumed) std::copy(done.begin(), done.end(), consumed);
      throw;
    } catch (...) {
      if (consumed) std::fill(consumed, consumed + n_streams, 0);
      throw;
    }
    if (consumed) std::copy(done.begin(), done.end(), consumed);
  });
}

ctrt_status ctrt_last_logits(ctrt_session* session, int64_t stream_id, const float** logits) {
  return guarded([&] {
    need(logits, "logits");
    *logits = session_of(session)->last_logits(stream_id);
  });
}

size_t ctrt_state_count(ctrt_session* session) {
  const auto s = sessions().find(id_of(session));
  return s ? s->state_names().size() : 0;
}

const char* ctrt_state_name(ctrt_session* session, size_t index) {
  const auto s = sessions().find(id_of(session));
  if (!s || index >= s->state_names().size()) return nullptr;
  return s->state_names()[index].c_str();
}

ctrt_status ctrt_state_info(ctrt_session* session, const char* name, ctrt_tensor_info* info) {
  return guarded([&] {
    need(name, "name");
    need(info, "info");
    const auto s = session_of(session);
    const auto& spec = s->state_spec(name);
    const auto shape = spec.row_shape();
    info->dtype = spec.dtype == ctrt::DType::int32 ? 1 : 0;
    info->ndim = static_cast<int32_t>(shape.size());
    for (size_t i = 0; i < 8; ++i) info->shape[i] = i < shape.size() ? shape[i] : 0;
    info->bytes = static_cast<size_t>(spec.row_elements()) * ctrt::dtype_size(spec.dtype);
  });
}

ctrt_status ctrt_stream_state(ctrt_session* session, int64_t stream_id, const char* name,
                              void* out, size_t bytes) {
  return guarded([&] {
    need(name, "name");
    need(out, "out");
    session_of(session)->read_state(stream_id, name, out, bytes);
  });
}

ctrt_status ctrt_snapshot(ctrt_session* session, int64_t stream_id, const char* path) {
  return guarded([&] {
    need(path, "path");
    session_of(session)->snapshot_to_file(stream_id, path);
  });
}

ctrt_status ctrt_snapshot_bytes(ctrt_session* session, int64_t stream_id, uint8_t** bytes,
                                size_t* size) {
  return guarded([&] {
    need(bytes, "bytes");
    need(size, "size");
    const auto data = session_of(session)->snapshot(stream_id);
    auto* copy = static_cast<uint8_t*>(std::malloc(data.size()));
    if (!copy) throw std::bad_alloc();
    std::memcpy(copy, data.data(), data.size());
    *bytes = copy;
    *size = data.size();
  });
}

ctrt_status ctrt_restore(ctrt_session* session, const char* path, int64_t stream_id,
                         int64_t* restored) {
  return guarded([&] {
    need(path, "path");
    need(restored, "restored");
    *restored = session_of(session)->restore_file(
        path, stream_id < 0 ? std::nullopt : std::optional<int64_t>(stream_id));
  });
}

ctrt_status ctrt_restore_bytes(ctrt_session* session, const uint8_t* bytes, size_t size,
                               int64_t stream_id, int64_t* restored) {
  return guarded([&] {
    need(bytes, "bytes");
    need(restored, "restored");
    *restored = session_of(session)->restore(
        bytes, size, stream_id < 0 ? std::nullopt : std::optional<int64_t>(stream_id));
  });
}

void ctrt_free(void* pointer) { std::free(pointer); }

ctrt_status ctrt_sample(const float* logits, size_t vocab, const ctrt_sampling* sampling,
                        uint64_t n, int32_t* token) {
  return guarded([&] {
    need(logits, "logits");
    need(token, "token");
    const ctrt::Sampling chosen = sampling_of(sampling);
    *token = ctrt::sample_token(logits, vocab, chosen, ctrt::sampling_uniform(chosen.seed, n));
  });
}

double ctrt_uniform(uint64_t seed, uint64_t n) { return ctrt::sampling_uniform(seed, n); }

ctrt_status ctrt_generate(ctrt_session* session, int64_t stream_id, const int32_t* prompt,
                          size_t prompt_count, size_t max_new_tokens,
                          const ctrt_sampling* sampling, const char* const* stops,
                          size_t n_stops, int32_t* out, size_t* generated) {
  if (generated) *generated = 0;
  return guarded([&] {
    need(generated, "generated");
    if (max_new_tokens) need(out, "out");
    if (prompt_count) need(prompt, "prompt");
    if (n_stops) need(stops, "stops");
    std::vector<std::string> stop_strings;
    for (size_t i = 0; i < n_stops; ++i) {
      need(stops[i], "a stop string");
      stop_strings.emplace_back(stops[i]);
    }
    std::vector<int32_t> tokens;
    try {
      session_of(session)->generate(stream_id, std::vector<int32_t>(prompt, prompt + prompt_count),
                                    max_new_tokens, sampling_of(sampling), stop_strings, tokens);
    } catch (const ctrt::EngineCallError&) {
      std::copy(tokens.begin(), tokens.end(), out);
      *generated = tokens.size();
      throw;
    }
    std::copy(tokens.begin(), tokens.end(), out);
    *generated = tokens.size();
  });
}

ctrt_status ctrt_timing_get(ctrt_session* session, ctrt_timing* out) {
  return guarded([&] {
    need(out, "out");
    const auto timing = session_of(session)->timing();
    *out = ctrt_timing{timing.feed_seconds, timing.engine_seconds, timing.engine_calls};
  });
}

ctrt_status ctrt_timing_reset(ctrt_session* session) {
  return guarded([&] { session_of(session)->reset_timing(); });
}

ctrt_status ctrt_fail_next_calls(ctrt_session* session, const char* entry, int32_t count) {
  return guarded([&] { session_of(session)->fail_next_calls(entry_named(entry), count); });
}

}  // extern "C"
