// Test helpers: seeded random layers with heavy-tailed input channels, their statistics, and a
// logged, overridable seed (AXEQ_SEED) so that any failing property test can be replayed.
#ifndef AXEQ_CORE_TEST_UTIL_H_
#define AXEQ_CORE_TEST_UTIL_H_

#include <cstdint>
#include <random>

#include "core/layer.h"

namespace axeq::testing {

// Returns AXEQ_SEED from the environment if set, else `fallback`; logs it to stderr.
uint64_t TestSeed(uint64_t fallback);

struct RandomLayer {
  MatrixXf weights;  // [C, K], Student-t-like tails, a few outlier channels
  MatrixXf x;        // [D, K] float inputs with heavy-tailed per-channel scales
  MatrixXf xq;       // [D, K] inputs through an N-bit activation quantizer
  ActivationQuantizer act;
};

RandomLayer MakeRandomLayer(std::mt19937_64& rng, int64_t c, int64_t k, int64_t d,
                            const InputSpec& inputs);

// Returns exact (double-accumulated) statistics of the layer's samples.
LayerStats StatsOf(const RandomLayer& layer);

// The golden tests' calibration recipe (tests/golden_test.cc, bench/fidelity.cc): [d, k] inputs,
// channel i scaled by exp(0.8 z_i), 8 outlier channels x 12; values scale * N(0, 1), or scale *
// Student-t(3) with `tail` (heavy tails).
MatrixXf HeavyTailed(int64_t k, int64_t d, uint64_t seed, bool tail);

}  // namespace axeq::testing

#endif  // AXEQ_CORE_TEST_UTIL_H_

namespace axeq::testing {
// Returns a layer whose inputs are exact binary fractions (x multiples of 1/8, |x| <= 16; xq =
// round(x)) and D a power of two, so that float Gram matrices are exact and the Gram-form and
// sample-form algorithms can be compared code for code.
RandomLayer MakeExactLayer(std::mt19937_64& rng, int64_t c, int64_t k, int64_t d_pow2);
}  // namespace axeq::testing
