// Sampling version 2 (docs/DESIGN.md; runtime/sampling.py in Python): a counter-based random
// stream per request, so both runtimes draw the same tokens for the same seed.
//   u_n = (mix(seed + (n + 1) * 0x9E3779B97F4A7C15) >> 11) * 2^-53   (splitmix64's n-th output)
// Token from float32 logits [V]: greedy takes the first index of the maximum; otherwise
// z = double(logits) / temperature, top-k keeps z >= the k-th largest, p = exp(z - max z),
// top-p keeps the smallest prefix of p sorted descending whose sum reaches top_p of the total
// (and every p equal to its last), then the smallest i with cumsum(p)_i > u_n * sum(p).
#pragma once

#include <cstddef>
#include <cstdint>

namespace ctrt {

struct Sampling {
  bool greedy = false;
  double temperature = 1.0;
  int64_t top_k = 0;   // 0: off
  double top_p = 1.0;  // 1.0: off
  uint64_t seed = 0;

  void validate() const;  // InputError with what to change
};

uint64_t splitmix64_mix(uint64_t x);
double sampling_uniform(uint64_t seed, uint64_t n);
int32_t sample_token(const float* logits, size_t vocab, const Sampling& sampling, double uniform);

}  // namespace ctrt
