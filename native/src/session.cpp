#include "ctrt/session.hpp"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <numeric>

#include "ctrt/error.hpp"
#include "ctrt/snapshot.hpp"
#include "engine_impl.hpp"
#include "state_tensor.hpp"

namespace ctrt {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string list_text(const std::vector<int64_t>& ids) {
  std::string out = "[";
  for (size_t i = 0; i < ids.size(); ++i) out += (i ? ", " : "") + std::to_string(ids[i]);
  return out + "]";
}

size_t product(const std::vector<int64_t>& shape, size_t from = 0, size_t to = SIZE_MAX) {
  const auto end = shape.begin() + static_cast<std::ptrdiff_t>(std::min(to, shape.size()));
  return std::accumulate(shape.begin() + static_cast<std::ptrdiff_t>(from), end, size_t{1},
                         [](size_t total, int64_t dim) { return total * static_cast<size_t>(dim); });
}

}  // namespace

// The IoBinding of one call signature (entry, rows, tokens, the banks of the planes it binds)
// and the values it binds: views of the first rows of planes of the session's buffers, built
// once and reused. `parities` (every memory plane's, in state_ order) tells a hash collision
// of banks_key_ from a hit.
struct Session::Binding {
  Ort::IoBinding io;
  std::vector<Ort::Value> values;
  Entry entry;
  int batch;
  int64_t tokens;
  std::vector<int> parities;
  explicit Binding(Ort::Session& session) : io(session) {}
};

struct Session::RunState {
  Ort::RunOptions options;
};

class Session::Guard {
 public:
  Guard(const Session& session, const char* method) : flag_(session.in_use_) {
    if (flag_.exchange(true)) {
      throw ConcurrentUseError(std::string("Session.") + method +
                               " was called while another thread is using this session: use one "
                               "Session per thread, or serialize calls with your own lock");
    }
  }
  ~Guard() { flag_.store(false); }

 private:
  std::atomic<bool>& flag_;
};

Session::Session(std::shared_ptr<const Engine> engine, int max_streams)
    : engine_(std::move(engine)), max_streams_(max_streams) {
  if (max_streams < 1) throw InputError("max_streams must be >= 1, got " + std::to_string(max_streams));
  if (max_streams > engine_->options().max_batch) {
    throw InputError("max_streams must be <= the engine's max_batch (" + std::to_string(engine_->options().max_batch) +
                     "), got " + std::to_string(max_streams) + ": open the engine with a larger max_batch");
  }
  const Dims& d = dims();
  specs_ = state_specs(d);
  const auto& contract = engine_->manifest().contract;
  const int layers = static_cast<int>(d.n_layers);
  auto add_state = [&](const std::string& name, bool two_banks) {
    const TensorSpec& spec = specs_.at(name);
    state_index_[name] = state_.size();
    // a plane per layer for a tensor the graphs take per layer (`X.{i}`), one for a count
    state_.push_back(std::make_unique<StateTensor>(name, is_per_layer(name) ? layers : 1, max_streams,
                                                   static_cast<size_t>(spec.row_elements()) * dtype_size(spec.dtype),
                                                   two_banks));
    state_names_.push_back(name);
  };
  for (const char* name : kMemoryState)
    if (specs_.count(name)) add_state(name, true);
  for (const char* name : kPartialState) add_state(name, false);
  state_names_.emplace_back("seg_len");
  seg_len_input_ = std::make_unique<PlaneBuffer>(1, max_streams, sizeof(int32_t));
  // scratch shared by segment and extend (one call at a time), sized for T = L: per base name
  // [planes, max, L, ...] (a plane per layer for extend's per-layer new rows)
  const auto& extend = contract.at("extend");
  std::map<std::string, std::pair<int, size_t>> scratch;  // base -> (planes, plane bytes)
  for (const auto* tensors : {&extend.inputs, &extend.outputs}) {
    for (const auto& spec : *tensors) {
      const TensorName name = split_name(spec.name);
      if (name.out || std::find(spec.shape.begin(), spec.shape.end(), kTokens) == spec.shape.end()) continue;
      scratch[name.base] = {name.layer >= 0 ? layers : 1,
                            product(spec.concrete_shape(max_streams, d.seg_len), 1) * dtype_size(spec.dtype)};
    }
  }
  for (const auto& [name, size] : scratch) {
    scratch_[name] = std::make_unique<PlaneBuffer>(size.first, max_streams, size.second);
  }
  for (const auto& spec : extend.outputs) {  // new rows [B, outer..., T, width] of each plane
    const TensorName name = split_name(spec.name);
    const auto new_rows = std::find_if(std::begin(kNewRows), std::end(kNewRows),
                                       [&](const char* rows) { return name.base == rows; });
    if (new_rows == std::end(kNewRows)) continue;
    const char* partial = kPartialState[new_rows - std::begin(kNewRows)];
    row_writes_.push_back({state_.at(state_index_.at(partial)).get(), scratch_.at(name.base).get(),
                           std::max(name.layer, 0), product(spec.shape, 1, spec.shape.size() - 2),
                           static_cast<size_t>(spec.shape.back())});
  }
  for (int entry = 0; entry < 3; ++entry) {
    for (const auto& spec : contract.at(kEntryPoints[entry]).outputs) {
      const TensorName name = split_name(spec.name);
      if (name.out) written_[entry].emplace_back(state_index_.at(name.base), std::max(name.layer, 0));
    }
  }
  tokens_in_ = reinterpret_cast<int32_t*>(scratch_.at("tokens")->at(0, 0));
  logits_out_ = reinterpret_cast<const float*>(scratch_.at("logits")->at(0, 0));
  planned_.reserve(static_cast<size_t>(max_streams));
  call_streams_.reserve(static_cast<size_t>(max_streams));
  feed_index_.reserve(static_cast<size_t>(max_streams));
  seg_len_.assign(static_cast<size_t>(max_streams), 0);
  last_logits_rows_.assign(static_cast<size_t>(max_streams * d.vocab_size), 0.0f);
  run_state_ = std::make_unique<RunState>();
}

Session::~Session() = default;

// ---- streams --------------------------------------------------------------------------------
int Session::row_of(int64_t stream) const {
  const auto found = rows_.find(stream);
  if (found == rows_.end()) {
    throw InputError("no stream " + std::to_string(stream) + " in this session (streams: " +
                     list_text(added_) + ")");
  }
  return found->second;
}

const StateTensor& Session::state_tensor(const std::string& name) const {
  return *state_.at(state_index_.at(name));
}

int64_t Session::add_stream() {
  Guard guard(*this, "add_stream");
  return add_stream_unguarded();
}

int64_t Session::add_stream_unguarded() {
  const int row = static_cast<int>(row_streams_.size());
  if (row == max_streams_) {
    throw InputError("all " + std::to_string(max_streams_) + " stream slots are in use: remove a "
                     "stream or open the session with a larger max_streams");
  }
  clear_row(row);
  const int64_t stream = next_id_++;
  row_streams_.push_back(stream);
  rows_[stream] = row;
  added_.push_back(stream);
  positions_[stream] = 0;
  return stream;
}

void Session::remove_stream(int64_t stream) {
  Guard guard(*this, "remove_stream");
  const int hole = row_of(stream);
  const int last = static_cast<int>(row_streams_.size()) - 1;
  if (hole != last) {  // keep rows packed: the last stream moves into the hole
    copy_row(last, hole);
    const int64_t moved = row_streams_[static_cast<size_t>(last)];
    row_streams_[static_cast<size_t>(hole)] = moved;
    rows_[moved] = hole;
  }
  row_streams_.pop_back();
  rows_.erase(stream);
  positions_.erase(stream);
  fed_.erase(stream);
  added_.erase(std::find(added_.begin(), added_.end(), stream));
}

void Session::reset_stream(int64_t stream) {
  Guard guard(*this, "reset_stream");
  clear_row(row_of(stream));
  positions_[stream] = 0;
  fed_.erase(stream);
}

std::vector<int64_t> Session::streams() const {
  Guard guard(*this, "streams");
  return added_;
}

int64_t Session::position(int64_t stream) const {
  Guard guard(*this, "position");
  row_of(stream);
  return positions_.at(stream);
}

void Session::clear_row(int row) {
  for (auto& tensor : state_) tensor->clear_row(row);
  seg_len_[static_cast<size_t>(row)] = 0;
}

void Session::copy_row(int src, int dst) {
  for (auto& tensor : state_) tensor->copy_row(src, dst);
  const size_t vocab = static_cast<size_t>(dims().vocab_size);
  seg_len_[static_cast<size_t>(dst)] = seg_len_[static_cast<size_t>(src)];
  std::memcpy(&last_logits_rows_[static_cast<size_t>(dst) * vocab],
              &last_logits_rows_[static_cast<size_t>(src) * vocab], vocab * sizeof(float));
}

void Session::swap_rows(int a, int b) {
  for (auto& tensor : state_) tensor->swap_rows(a, b);
  const size_t vocab = static_cast<size_t>(dims().vocab_size);
  std::swap(seg_len_[static_cast<size_t>(a)], seg_len_[static_cast<size_t>(b)]);
  std::swap_ranges(&last_logits_rows_[static_cast<size_t>(a) * vocab],
                   &last_logits_rows_[static_cast<size_t>(a) * vocab] + vocab,
                   &last_logits_rows_[static_cast<size_t>(b) * vocab]);
  const int64_t stream_a = row_streams_[static_cast<size_t>(a)];
  const int64_t stream_b = row_streams_[static_cast<size_t>(b)];
  std::swap(row_streams_[static_cast<size_t>(a)], row_streams_[static_cast<size_t>(b)]);
  rows_[stream_a] = b;
  rows_[stream_b] = a;
}

// Swap the given streams into rows [0, r) (r = how many); a swap copies two streams' state
// once, far less than computing idle rows; when every stream takes part nothing moves.
int Session::to_front(const std::vector<int64_t>& streams) {
  const int count = static_cast<int>(streams.size());
  std::vector<int64_t> outside;
  for (int64_t s : streams)
    if (rows_.at(s) >= count) outside.push_back(s);
  if (!outside.empty()) {
    std::vector<int> holes;
    for (int row = 0; row < count; ++row) {
      const int64_t there = row_streams_[static_cast<size_t>(row)];
      if (std::find(streams.begin(), streams.end(), there) == streams.end()) holes.push_back(row);
    }
    for (size_t i = 0; i < outside.size(); ++i) swap_rows(rows_.at(outside[i]), holes[i]);
  }
  return count;
}

// ---- feeding --------------------------------------------------------------------------------
void Session::check_tokens(const StreamTokens& item) const {
  const int64_t vocab = dims().vocab_size;
  if (item.count && !item.tokens) throw InputError("stream " + std::to_string(item.stream) + ": no token array");
  for (size_t i = 0; i < item.count; ++i) {
    if (item.tokens[i] < 0 || item.tokens[i] >= vocab) {
      throw InputError("token id " + std::to_string(item.tokens[i]) + " is out of range [0, " +
                       std::to_string(vocab) + ")");
    }
  }
}

void Session::feed(const std::vector<StreamTokens>& feed, std::vector<size_t>* consumed) {
  Guard guard(*this, "feed");
  feed_unguarded(feed, consumed);
}

void Session::feed_unguarded(const std::vector<StreamTokens>& feed, std::vector<size_t>* consumed) {
  const auto started = Clock::now();
  for (size_t i = 0; i < feed.size(); ++i) {
    row_of(feed[i].stream);
    for (size_t j = 0; j < i; ++j) {  // feeds hold a few streams: no set to allocate
      if (feed[j].stream == feed[i].stream) {
        throw InputError("stream " + std::to_string(feed[i].stream) + " appears twice in one feed");
      }
    }
    check_tokens(feed[i]);
  }
  std::vector<size_t> done(feed.size(), 0);
  try {
    run_planned(feed, done);
  } catch (const std::exception& exc) {
    if (consumed) *consumed = done;
    std::string progress;
    for (size_t i = 0; i < feed.size(); ++i) {
      if (!feed[i].count) continue;
      progress += (progress.empty() ? "" : ", ") + std::string("stream ") + std::to_string(feed[i].stream) +
                  ": " + std::to_string(done[i]) + " of " + std::to_string(feed[i].count);
    }
    timing_.feed_seconds += seconds_since(started);
    throw EngineCallError(std::string("an engine call failed during feed (") + exc.what() +
                              "); tokens consumed before it: " + progress +
                              ". Each stream's position counts exactly these; feed the rest to continue",
                          done);
  }
  if (consumed) *consumed = done;
  timing_.feed_seconds += seconds_since(started);
}

size_t Session::feed_index(int64_t stream) const {
  for (const auto& [id, index] : feed_index_)
    if (id == stream) return index;
  throw Error(CTRT_INTERNAL_ERROR, "stream " + std::to_string(stream) + " is not in this feed");
}

void Session::run_planned(const std::vector<StreamTokens>& feed, std::vector<size_t>& done) {
  const int64_t seg_len = dims().seg_len;
  planned_.clear();
  feed_index_.clear();
  for (size_t i = 0; i < feed.size(); ++i) {
    planned_.push_back({feed[i].stream, seg_len_[static_cast<size_t>(rows_.at(feed[i].stream))],
                        static_cast<int64_t>(feed[i].count)});
    feed_index_.emplace_back(feed[i].stream, i);
  }
  // The decoding step is the one extend plan_feed plans for it, made here without the
  // planner's allocations (call_streams_ holds max_streams).
  const int64_t step = decoding_step(planned_, seg_len, call_streams_);
  if (step) {
    run_tokens(Entry::extend, call_streams_, step, feed, done);
    return;
  }
  for (const PlannedCall& call : plan_feed(planned_, seg_len)) {
    if (call.entry == Entry::commit) commit(call.streams);
    else run_tokens(call.entry, call.streams, call.tokens, feed, done);
  }
}

// One segment or extend call of `count` tokens per stream, packed in rows [0, r); then the
// bookkeeping that makes its tokens consumed.
void Session::run_tokens(Entry entry, const std::vector<int64_t>& streams, int64_t count,
                         const std::vector<StreamTokens>& feed, std::vector<size_t>& done) {
  const size_t vocab = static_cast<size_t>(dims().vocab_size), tokens = static_cast<size_t>(count);
  const int batch = to_front(streams);
  for (int64_t s : streams) {
    const size_t i = feed_index(s);
    std::memcpy(tokens_in_ + static_cast<size_t>(rows_.at(s)) * tokens, feed[i].tokens + done[i],
                tokens * sizeof(int32_t));
  }
  if (entry == Entry::segment) {
    run_call(Entry::segment, batch, count);
    flip(Entry::segment, batch);
  } else {
    std::memcpy(seg_len_input_->at(0, 0), seg_len_.data(), static_cast<size_t>(batch) * sizeof(int32_t));
    run_call(Entry::extend, batch, count);
    flip(Entry::extend, batch);
    write_new_rows(batch, count);
    for (int row = 0; row < batch; ++row) seg_len_[static_cast<size_t>(row)] += static_cast<int32_t>(count);
  }
  // The call's effect is in the state: its tokens count as consumed from here on.
  for (int row = 0; row < batch; ++row) {
    std::memcpy(&last_logits_rows_[static_cast<size_t>(row) * vocab],
                logits_out_ + (static_cast<size_t>(row) * tokens + tokens - 1) * vocab, vocab * sizeof(float));
  }
  for (int64_t s : streams) {
    const size_t i = feed_index(s);
    if (feed[i].logits) {
      std::memcpy(feed[i].logits + done[i] * vocab, logits_out_ + static_cast<size_t>(rows_.at(s)) * tokens * vocab,
                  tokens * vocab * sizeof(float));
    }
    done[i] += tokens;
    positions_[s] += count;
    fed_.insert(s);
  }
}

namespace {

// splitmix64: the Zobrist constant of a memory plane, and the mix of a call's signature
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t plane_key(size_t tensor, int plane) { return mix(static_cast<uint64_t>(tensor) << 32 | static_cast<uint32_t>(plane)); }

}  // namespace

Session::Binding& Session::binding(Entry entry, int batch, int64_t tokens) {
  const uint64_t key = mix(static_cast<uint64_t>(entry) | static_cast<uint64_t>(batch) << 2 |
                           static_cast<uint64_t>(tokens) << 18) ^ banks_key_;
  auto found = bindings_.find(key);
  if (found != bindings_.end()) {
    const Binding& bound = *found->second;
    bool same = bound.entry == entry && bound.batch == batch && bound.tokens == tokens;
    size_t at = 0;
    for (const auto& tensor : state_)
      for (int p = 0; same && p < tensor->planes(); ++p) same = at < bound.parities.size() && bound.parities[at++] == tensor->parity(p);
    if (same) return *found->second;
    bindings_.erase(found);  // a collision of the hash: bound again below
  }
  Engine::Impl& impl = engine_->impl();
  auto made = std::make_unique<Binding>(impl.session(entry));
  made->entry = entry;
  made->batch = batch;
  made->tokens = tokens;
  for (const auto& tensor : state_)
    for (int p = 0; p < tensor->planes(); ++p) made->parities.push_back(tensor->parity(p));
  // rows [0, batch) of one plane: contiguous
  auto first_row = [&](const std::string& graph_name) -> uint8_t* {
    const TensorName name = split_name(graph_name);
    const int plane = std::max(name.layer, 0);
    if (name.base == "seg_len") return seg_len_input_->at(0, 0);
    const auto state = state_index_.find(name.base);
    if (state == state_index_.end()) return scratch_.at(name.base)->at(plane, 0);
    const StateTensor& tensor = *state_[state->second];
    return (name.out ? tensor.written(plane) : tensor.current(plane)).at(plane, 0);
  };
  auto bind = [&](const TensorSpec& spec, bool input) {
    const auto shape = spec.concrete_shape(batch, tokens);
    made->values.push_back(Ort::Value::CreateTensor(impl.host_memory, first_row(spec.name),
                                                    product(shape) * dtype_size(spec.dtype),
                                                    shape.data(), shape.size(), onnx_type(spec.dtype)));
    if (input) made->io.BindInput(spec.name.c_str(), made->values.back());
    else made->io.BindOutput(spec.name.c_str(), made->values.back());
  };
  const EntryPoint& spec = engine_->manifest().contract.at(entry_name(entry));
  for (const auto& tensor : spec.inputs) bind(tensor, true);
  for (const auto& tensor : spec.outputs) bind(tensor, false);
  return *bindings_.emplace(key, std::move(made)).first->second;
}

void Session::run_call(Entry entry, int batch, int64_t tokens) {
  Binding& bound = binding(entry, batch, tokens);
  Ort::Session& session = engine_->impl().session(entry);
  Ort::RunOptions& options = run_state_->options;
  int& failing = fail_next_[static_cast<int>(entry)];
  const bool terminate = failing > 0;
  if (terminate) {
    --failing;
    options.SetTerminate();
  }
  const auto started = Clock::now();
  try {
    session.Run(options, bound.io);
  } catch (...) {
    timing_.engine_seconds += seconds_since(started);
    ++timing_.engine_calls;
    if (terminate) options.UnsetTerminate();
    throw;
  }
  timing_.engine_seconds += seconds_since(started);
  ++timing_.engine_calls;
  if (terminate) options.UnsetTerminate();
}

// extend's T new rows of h, k, v into the partial segment at each row's offset seg_len:
// dst[row, o, offset:offset+T, :] = src[row, o, :T, :] for every outer index o (layer, head).
// The destination rows are cold after a call (the engine streamed the weights through the
// caches), so every line is prefetched first and the misses overlap instead of queueing one
// small copy at a time.
void Session::write_new_rows(int batch, int64_t count) {
  const size_t seg_len = static_cast<size_t>(dims().seg_len), tokens = static_cast<size_t>(count);
  for (int pass = 0; pass < 2; ++pass) {
    for (const RowWrite& write : row_writes_) {
      const size_t span = tokens * write.width * sizeof(float);
      const PlaneBuffer& partial = write.partial->current(write.plane);
      const uint8_t* fresh = write.fresh->at(write.plane, 0);
      for (int row = 0; row < batch; ++row) {
        const size_t offset = static_cast<size_t>(seg_len_[static_cast<size_t>(row)]);
        for (size_t o = 0; o < write.outer; ++o) {
          uint8_t* dst = partial.at(write.plane, row) + (o * seg_len + offset) * write.width * sizeof(float);
          const uint8_t* src = fresh + ((static_cast<size_t>(row) * write.outer + o) * tokens) * write.width * sizeof(float);
          if (pass == 0) {
            for (size_t line = 0; line < span; line += 64) __builtin_prefetch(dst + line, 1);
          } else {
            std::memcpy(dst, src, span);
          }
        }
      }
    }
  }
}

// The call of `entry` on rows [0, batch) succeeded and wrote the other bank of the planes it
// outputs: each is flipped in (StateTensor::flip: one block copy per plane, whichever is fewer).
void Session::flip(Entry entry, int batch) {
  const int streams = static_cast<int>(row_streams_.size());
  for (const auto& [tensor, plane] : written_[static_cast<int>(entry)]) {
    if (state_[tensor]->flip(plane, batch, streams)) banks_key_ ^= plane_key(tensor, plane);
  }
}

void Session::commit(const std::vector<int64_t>& streams) {
  const int batch = to_front(streams);
  run_call(Entry::commit, batch, 0);
  flip(Entry::commit, batch);
  std::fill(seg_len_.begin(), seg_len_.begin() + batch, 0);
}

const float* Session::last_logits(int64_t stream) const {
  Guard guard(*this, "last_logits");
  const int row = row_of(stream);
  if (!fed_.count(stream)) throw InputError("stream " + std::to_string(stream) + " has not been fed any tokens yet");
  return &last_logits_rows_[static_cast<size_t>(row) * static_cast<size_t>(dims().vocab_size)];
}

// ---- state access, snapshots ----------------------------------------------------------------
const TensorSpec& Session::state_spec(const std::string& name) const {
  const auto found = specs_.find(name);
  if (found == specs_.end()) throw InputError("no state tensor '" + name + "' in this engine");
  return found->second;
}

void Session::read_state(int64_t stream, const std::string& name, void* out, size_t bytes) const {
  Guard guard(*this, "stream_state");
  const int row = row_of(stream);
  const TensorSpec& spec = state_spec(name);
  const size_t row_bytes = static_cast<size_t>(spec.row_elements()) * dtype_size(spec.dtype);
  if (bytes != row_bytes) {
    throw InputError("state tensor " + name + " holds " + std::to_string(row_bytes) + " bytes per stream, not " +
                     std::to_string(bytes));
  }
  if (name == "seg_len") {
    std::memcpy(out, &seg_len_[static_cast<size_t>(row)], sizeof(int32_t));
  } else {
    state_tensor(name).read_row(row, static_cast<uint8_t*>(out));
  }
}

std::vector<uint8_t> Session::snapshot(int64_t stream) {
  Guard guard(*this, "snapshot");
  int row = row_of(stream);
  if (seg_len_[static_cast<size_t>(row)] == dims().seg_len) {  // a commit failed earlier: commit first
    try {
      commit({stream});
    } catch (const std::exception& exc) {
      throw Error(CTRT_ENGINE_CALL_FAILED, std::string("the commit of stream ") + std::to_string(stream) +
                                               "'s full partial segment before its snapshot failed: " + exc.what());
    }
    row = row_of(stream);
  }
  std::map<std::string, RowTensor> state;
  for (const auto& name : state_names_) {
    const TensorSpec& spec = specs_.at(name);
    RowTensor tensor{spec.dtype, spec.row_shape(), {}};
    tensor.data.resize(static_cast<size_t>(spec.row_elements()) * dtype_size(spec.dtype));
    if (name == "seg_len") std::memcpy(tensor.data.data(), &seg_len_[static_cast<size_t>(row)], sizeof(int32_t));
    else state_tensor(name).read_row(row, tensor.data.data());
    state[name] = std::move(tensor);
  }
  const float* logits = fed_.count(stream)
                            ? &last_logits_rows_[static_cast<size_t>(row) * static_cast<size_t>(dims().vocab_size)]
                            : nullptr;
  return write_snapshot(engine_->manifest(), state_names_, state, positions_.at(stream), logits);
}

void Session::snapshot_to_file(int64_t stream, const std::string& path) {
  write_file_atomically(path, snapshot(stream));
}

int64_t Session::restore(const uint8_t* bytes, size_t size, std::optional<int64_t> stream,
                         const std::string& source) {
  Guard guard(*this, "restore");
  if (stream) row_of(*stream);
  std::map<std::string, std::pair<DType, std::vector<int64_t>>> expected;
  for (const auto& name : state_names_) expected[name] = {specs_.at(name).dtype, specs_.at(name).row_shape()};
  StreamSnapshot snapshot = read_snapshot(bytes, size, engine_->manifest(), expected, source);
  const int64_t id = stream ? *stream : add_stream_unguarded();
  const int row = row_of(id);
  for (auto& tensor : state_) {  // every state tensor: nothing of the old stream stays
    tensor->write_row(row, snapshot.state.at(tensor->name()).data.data());
  }
  std::memcpy(&seg_len_[static_cast<size_t>(row)], snapshot.state.at("seg_len").data.data(), sizeof(int32_t));
  positions_[id] = snapshot.position;
  if (snapshot.last_logits) {
    std::copy(snapshot.last_logits->begin(), snapshot.last_logits->end(),
              last_logits_rows_.begin() + static_cast<std::ptrdiff_t>(row * dims().vocab_size));
    fed_.insert(id);
  } else {
    fed_.erase(id);
  }
  return id;
}

int64_t Session::restore_file(const std::string& path, std::optional<int64_t> stream) {
  // the largest snapshot this engine has, with room for headers and the zip directory (a
  // version 1 record is UTF-32: up to 4 MiB)
  size_t bound = (4 << 20) + static_cast<size_t>(dims().vocab_size) * sizeof(float) + (64 << 10);
  for (const auto& name : state_names_) {
    bound += static_cast<size_t>(specs_.at(name).row_elements()) * dtype_size(specs_.at(name).dtype) + (64 << 10);
  }
  const auto bytes = read_snapshot_file(path, bound);
  return restore(bytes.data(), bytes.size(), stream, path);
}

// ---- generation -----------------------------------------------------------------------------
void Session::generate(int64_t stream, const std::vector<int32_t>& prompt, size_t max_new_tokens,
                       const Sampling& sampling, const std::vector<std::string>& stops,
                       std::vector<int32_t>& out) {
  Guard guard(*this, "generate");
  out.clear();
  sampling.validate();
  const int64_t vocab = dims().vocab_size;
  row_of(stream);
  if (prompt.empty() && !fed_.count(stream)) {
    throw InputError("stream " + std::to_string(stream) + " has not been fed: give a prompt (the model has "
                     "no start-of-text token)");
  }
  if (!prompt.empty()) feed_unguarded({{stream, prompt.data(), prompt.size(), nullptr}}, nullptr);
  std::string text;  // the generated tokens as bytes, for the stop strings
  std::vector<size_t> consumed;
  for (uint64_t n = 0; n < max_new_tokens; ++n) {
    const float* logits = &last_logits_rows_[static_cast<size_t>(rows_.at(stream) * vocab)];
    const int32_t token = sample_token(logits, static_cast<size_t>(vocab), sampling, sampling_uniform(sampling.seed, n));
    out.push_back(token);
    try {
      feed_unguarded({{stream, &out.back(), 1, nullptr}}, &consumed);
    } catch (const EngineCallError&) {
      if (consumed.at(0) == 0) out.pop_back();  // out holds exactly the tokens the stream holds
      throw;
    }
    text += static_cast<char>(token & 0xff);
    bool stopped = false;
    for (const auto& stop : stops) {
      stopped |= !stop.empty() && text.size() >= stop.size() &&
                 text.compare(text.size() - stop.size(), stop.size(), stop) == 0;
    }
    if (stopped) break;
  }
}

Timing Session::timing() const {
  Guard guard(*this, "timing");
  return timing_;
}

void Session::reset_timing() {
  Guard guard(*this, "reset_timing");
  timing_ = Timing{};
}

void Session::fail_next_calls(Entry entry, int count) {
  Guard guard(*this, "fail_next_calls");
  fail_next_[static_cast<int>(entry)] = count;
}

}  // namespace ctrt
