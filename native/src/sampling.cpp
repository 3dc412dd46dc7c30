#include "ctrt/sampling.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "ctrt/error.hpp"

namespace ctrt {

void Sampling::validate() const {
  if (!(temperature > 0)) {
    throw InputError("temperature must be > 0, got " + std::to_string(temperature) +
                     " (use greedy decoding for a deterministic argmax)");
  }
  if (top_k < 0) throw InputError("top_k must be >= 0, got " + std::to_string(top_k));
  if (!(top_p > 0 && top_p <= 1)) throw InputError("top_p must be in (0, 1], got " + std::to_string(top_p));
}

uint64_t splitmix64_mix(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

double sampling_uniform(uint64_t seed, uint64_t n) {
  return static_cast<double>(splitmix64_mix(seed + (n + 1) * 0x9E3779B97F4A7C15ULL) >> 11) *
         0x1.0p-53;
}

int32_t sample_token(const float* logits, size_t vocab, const Sampling& sampling, double uniform) {
  if (vocab == 0) throw InputError("cannot sample from an empty vocabulary");
  if (sampling.greedy) {
    return static_cast<int32_t>(std::max_element(logits, logits + vocab) - logits);
  }
  std::vector<double> z(vocab);
  for (size_t i = 0; i < vocab; ++i) z[i] = static_cast<double>(logits[i]) / sampling.temperature;
  const double top = *std::max_element(z.begin(), z.end());
  std::vector<bool> kept(vocab, true);
  if (sampling.top_k > 0 && static_cast<size_t>(sampling.top_k) < vocab) {
    std::vector<double> sorted = z;
    std::nth_element(sorted.begin(), sorted.begin() + (sampling.top_k - 1), sorted.end(),
                     std::greater<double>());
    const double kth = sorted[static_cast<size_t>(sampling.top_k - 1)];
    for (size_t i = 0; i < vocab; ++i) kept[i] = z[i] >= kth;
  }
  std::vector<double> p(vocab, 0.0);
  for (size_t i = 0; i < vocab; ++i)
    if (kept[i]) p[i] = std::exp(z[i] - top);
  if (sampling.top_p < 1.0) {
    std::vector<double> q;
    for (size_t i = 0; i < vocab; ++i)
      if (kept[i]) q.push_back(p[i]);
    std::sort(q.begin(), q.end(), std::greater<double>());
    std::vector<double> c(q.size());
    double running = 0;
    for (size_t j = 0; j < q.size(); ++j) c[j] = running += q[j];
    const double bound = sampling.top_p * c.back();
    size_t j = 0;
    while (j + 1 < c.size() && !(c[j] >= bound)) ++j;
    for (size_t i = 0; i < vocab; ++i)
      if (p[i] < q[j]) p[i] = 0.0;
  }
  std::vector<double> cumulative(vocab);
  double running = 0;
  for (size_t i = 0; i < vocab; ++i) cumulative[i] = running += p[i];
  const double threshold = uniform * cumulative[vocab - 1];
  for (size_t i = 0; i < vocab; ++i)
    if (cumulative[i] > threshold) return static_cast<int32_t>(i);
  for (size_t i = vocab; i-- > 0;)  // through rounding only: the largest i with p_i > 0
    if (p[i] > 0) return static_cast<int32_t>(i);
  return 0;
}

}  // namespace ctrt
