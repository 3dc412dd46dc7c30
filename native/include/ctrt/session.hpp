// ctrt::Session: the lean loop of runtime/session.py in C++. Streams of one engine packed in
// rows [0, k) of preallocated buffers (a slot pool), stored layer-major as runtime/buffers.py
// stores them: a tensor the graphs take per layer is [N, max_streams, ...] and a call on r
// streams binds, for layer i, the first r rows of plane i (contiguous: no copy); two banks of
// the memory state (ping-pong: a call reads the current bank and writes the other, which
// becomes current, plane by plane, only when the call succeeded); the partial segment written
// by row; IoBindings built once per call signature and reused; calls planned by plan_feed.
//
// Threads: one thread at a time. A call made while another thread is inside one of the
// session's methods throws ConcurrentUseError at once (nothing changes); readers included. Only
// what is fixed at construction (dims, max_streams, state_names, state_spec) is read freely.
//
// Failures: if an engine call fails during feed, no stream's committed state changes for that
// call, calls that succeeded before it stand, and each stream's position counts exactly the
// tokens whose effect is in its state. EngineCallError::consumed says how many tokens of the
// feed each stream consumed; feeding the rest continues as if nothing failed. (A failed commit
// leaves a full partial segment, whose tokens are consumed; the next feed commits it first.)
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "ctrt/engine.hpp"
#include "ctrt/planner.hpp"
#include "ctrt/sampling.hpp"

namespace ctrt {

class PlaneBuffer;
class StateTensor;

struct Timing {
  double feed_seconds = 0;    // inside feed, entry to return
  double engine_seconds = 0;  // inside ONNX Runtime's Run
  int64_t engine_calls = 0;
};

struct StreamTokens {
  int64_t stream;
  const int32_t* tokens;
  size_t count;
  float* logits;  // nullptr, or count x vocab floats for this stream's logits
};

class Session {
 public:
  Session(std::shared_ptr<const Engine> engine, int max_streams);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  const Engine& engine() const { return *engine_; }
  const Dims& dims() const { return engine_->dims(); }
  int max_streams() const { return max_streams_; }

  int64_t add_stream();
  void remove_stream(int64_t stream);
  void reset_stream(int64_t stream);
  std::vector<int64_t> streams() const;  // in the order they were added
  int64_t position(int64_t stream) const;

  // Every input is checked before an engine runs. consumed (same order as the feed) receives
  // the tokens each stream consumed, also when EngineCallError is thrown.
  void feed(const std::vector<StreamTokens>& feed, std::vector<size_t>* consumed = nullptr);
  // Logits [V] after the stream's last token: valid until the session's next call.
  const float* last_logits(int64_t stream) const;

  // Every state tensor of a stream, by name: the engine's row state and seg_len.
  const std::vector<std::string>& state_names() const { return state_names_; }
  const TensorSpec& state_spec(const std::string& name) const;
  void read_state(int64_t stream, const std::string& name, void* out, size_t bytes) const;

  std::vector<uint8_t> snapshot(int64_t stream);
  void snapshot_to_file(int64_t stream, const std::string& path);
  int64_t restore(const uint8_t* bytes, size_t size, std::optional<int64_t> stream,
                  const std::string& source = "bytes");
  int64_t restore_file(const std::string& path, std::optional<int64_t> stream);

  // Feeds the prompt, then samples up to max_new_tokens tokens (u_n of Sampling version 2 with
  // n = 0, 1, ...), feeding each, the last one included; stops after a token that completes
  // one of `stops` (byte strings). `out` receives the generated tokens the stream holds, also
  // when an engine call fails (EngineCallError): the stream's position is then its position
  // before, plus the prompt tokens consumed, plus out.size().
  void generate(int64_t stream, const std::vector<int32_t>& prompt, size_t max_new_tokens,
                const Sampling& sampling, const std::vector<std::string>& stops, std::vector<int32_t>& out);

  Timing timing() const;
  void reset_timing();
  void fail_next_calls(Entry entry, int count);  // tests: Run starts with the terminate flag set

  struct Binding;

 private:
  class Guard;
  int row_of(int64_t stream) const;
  const StateTensor& state_tensor(const std::string& name) const;
  void clear_row(int row);
  void copy_row(int src, int dst);
  void swap_rows(int a, int b);
  int to_front(const std::vector<int64_t>& streams);
  void check_tokens(const StreamTokens& item) const;
  void run_planned(const std::vector<StreamTokens>& feed, std::vector<size_t>& done);
  void run_tokens(Entry entry, const std::vector<int64_t>& streams, int64_t count,
                  const std::vector<StreamTokens>& feed, std::vector<size_t>& done);
  size_t feed_index(int64_t stream) const;
  void run_call(Entry entry, int batch, int64_t tokens);
  Binding& binding(Entry entry, int batch, int64_t tokens);
  void flip(Entry entry, int batch);
  void write_new_rows(int batch, int64_t count);
  void commit(const std::vector<int64_t>& streams);
  int64_t add_stream_unguarded();
  void feed_unguarded(const std::vector<StreamTokens>& feed, std::vector<size_t>* consumed);

  std::shared_ptr<const Engine> engine_;
  int max_streams_;
  std::vector<std::string> state_names_;  // the row state (memory in contract order, then seg_h, seg_k, seg_v) and seg_len
  std::map<std::string, TensorSpec> specs_;
  // the row state, layer-major (state_tensor.hpp), in state_names_ order; state_index_ by name
  std::vector<std::unique_ptr<StateTensor>> state_;
  std::map<std::string, size_t> state_index_;
  // what each entry point writes of the memory state: (index into state_, plane), flipped in
  // after the call succeeded
  std::vector<std::pair<size_t, int>> written_[3];
  uint64_t banks_key_ = 0;  // the planes' parities, hashed (Zobrist): part of a binding's key
  std::map<std::string, std::unique_ptr<PlaneBuffer>> scratch_;  // tokens, logits, new rows: [planes, max, L, ...]
  struct RowWrite {  // extend's new rows of one plane of a partial-state tensor
    const StateTensor* partial;
    const PlaneBuffer* fresh;
    int plane;
    size_t outer, width;  // a row of the plane: [outer..., L or T, width]
  };
  std::vector<RowWrite> row_writes_;
  // per-feed scratch, allocated once: the decoding path allocates nothing
  int32_t* tokens_in_ = nullptr;                      // scratch "tokens" [rows, T]
  const float* logits_out_ = nullptr;                 // scratch "logits" [rows, T, V]
  std::vector<FeedStream> planned_;
  std::vector<std::pair<int64_t, size_t>> feed_index_;  // stream -> its place in the feed
  std::vector<int64_t> call_streams_;
  std::unique_ptr<PlaneBuffer> seg_len_input_;               // extend's seg_len [max_streams]
  std::vector<int32_t> seg_len_;                             // host copy of the partial lengths
  std::vector<float> last_logits_rows_;                      // [max_streams, V]
  std::vector<int64_t> row_streams_;                         // row -> stream, rows [0, k)
  std::unordered_map<int64_t, int> rows_;                    // stream -> row
  std::vector<int64_t> added_;                               // streams in the order added
  std::unordered_map<int64_t, int64_t> positions_;
  std::set<int64_t> fed_;  // streams with last logits
  int64_t next_id_ = 0;
  std::unordered_map<uint64_t, std::unique_ptr<Binding>> bindings_;
  int fail_next_[3] = {0, 0, 0};
  Timing timing_;
  mutable std::atomic<bool> in_use_{false};
  struct RunState;
  std::unique_ptr<RunState> run_state_;
};

}  // namespace ctrt
