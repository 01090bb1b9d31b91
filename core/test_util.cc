// Random layers for property tests (see test_util.h).
#include "core/test_util.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace axeq::testing {

uint64_t TestSeed(uint64_t fallback) {
  uint64_t seed = fallback;
  if (const char* s = std::getenv("AXEQ_SEED")) seed = std::stoull(s);
  std::fprintf(stderr, "[seed] AXEQ_SEED=%llu\n", static_cast<unsigned long long>(seed));
  return seed;
}

RandomLayer MakeRandomLayer(std::mt19937_64& rng, int64_t c, int64_t k, int64_t d,
                            const InputSpec& inputs) {
  std::student_t_distribution<float> heavy(3.0f);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> unif(0.0f, 1.0f);
  RandomLayer l;
  l.weights.resize(c, k);
  for (int64_t r = 0; r < c; ++r) {
    const float row_scale = unif(rng) < 0.05f ? 4.0f : 1.0f;
    for (int64_t i = 0; i < k; ++i) l.weights(r, i) = 0.05f * row_scale * heavy(rng);
  }
  Eigen::VectorXf ch_scale(k);
  for (int64_t i = 0; i < k; ++i)
    ch_scale(i) = std::exp(1.2f * normal(rng));  // heavy-tailed channels
  l.x.resize(d, k);
  for (int64_t s = 0; s < d; ++s)
    for (int64_t i = 0; i < k; ++i) {
      float v = ch_scale(i) * normal(rng);
      if (!inputs.is_signed) v = std::max(v, -0.2f * ch_scale(i));  // GELU-like skew
      l.x(s, i) = v;
    }
  l.act = *CalibrateActivations(l.x, inputs, ActivationCalibration{});
  l.xq = l.act.Apply(l.x);
  return l;
}

LayerStats StatsOf(const RandomLayer& layer) {
  StatsAccumulator acc(layer.x.cols(), /*keep_cross=*/true, /*keep_xx=*/true);
  (void)acc.Add(layer.x, layer.xq);
  return *acc.Finish();
}

}  // namespace axeq::testing

namespace axeq::testing {
RandomLayer MakeExactLayer(std::mt19937_64& rng, int64_t c, int64_t k, int64_t d_pow2) {
  InputSpec spec;
  spec.bits = 5;
  spec.is_signed = true;
  RandomLayer l = MakeRandomLayer(rng, c, k, d_pow2, spec);
  for (int64_t s = 0; s < l.x.rows(); ++s)
    for (int64_t i = 0; i < k; ++i) {
      const float v = std::clamp(std::round(l.x(s, i) * 8.0f) / 8.0f, -15.5f, 15.5f);
      l.x(s, i) = v;
      l.xq(s, i) = std::round(v);
    }
  l.act.scale = 1.0f;
  l.act.zero_point = 0;
  return l;
}
MatrixXf HeavyTailed(int64_t k, int64_t d, uint64_t seed, bool tail) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n;
  std::student_t_distribution<float> t(3.0f);
  Eigen::VectorXf s(k);
  for (int64_t i = 0; i < k; ++i) s(i) = std::exp(0.8f * n(rng));
  for (int j = 0; j < 8; ++j) s(rng() % k) *= 12.0f;
  MatrixXf x(d, k);
  for (int64_t r = 0; r < d; ++r)
    for (int64_t i = 0; i < k; ++i) x(r, i) = s(i) * (tail ? t(rng) : n(rng));
  return x;
}

}  // namespace axeq::testing
