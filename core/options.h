// Options of the engine: weight and activation quantizers, the accumulator target, the algorithm
// and its variant. Plain structs whose defaults follow the AXE paper (W4A8, OPTQ, act-order, 1%
// damping); Validate() returns the first problem as INVALID_ARGUMENT naming the field and value.
#ifndef AXEQ_CORE_OPTIONS_H_
#define AXEQ_CORE_OPTIONS_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace axeq {

enum class Algorithm { kOptq, kGpfq };
// kBase: the algorithm alone. kAxe: soft L1 threshold + greedy hard clip (Sec. 3.2-3.3).
// kEpInit: base algorithm, then L1-ball projection and round-to-zero (Appendix C).
// kNaive: base algorithm at bit widths whose data-type bound P* (Eq. 3) fits the accumulator.
enum class Method { kBase, kAxe, kEpInit, kNaive };
enum class Rounding { kNearest, kToZero };
// kNarrow: [-(2^(M-1)-1), 2^(M-1)-1] (the paper). kFull: two's complement, adds -2^(M-1).
enum class WeightAlphabet { kNarrow, kFull };
// Which weight OPTQ propagates the error of: kOriginal uses W_i before the soft threshold and clip
// (Algorithm 2, line 8); kConstrained uses the thresholded-and-clipped value (Brevitas v0.12.0).
enum class OptqErrorForm { kOriginal, kConstrained };
enum class Precision { kFloat32, kFloat64 };

const char* AlgorithmName(Algorithm a);
const char* MethodName(Method m);
const char* RoundingName(Rounding r);

struct WeightQuantOptions {
  int bits = 4;  // M, 2..8
  WeightAlphabet alphabet = WeightAlphabet::kNarrow;
  int group_size = 0;  // G; 0 = one scale per output channel (Eq. 26)
};

// The integer input codes the accumulator sees: unsigned [0, 2^N - 1] (asymmetric, zero-point
// handled outside the accumulator) or signed [-2^(N-1), 2^(N-1) - 1].
struct InputSpec {
  int bits = 8;  // N, 2..16
  bool is_signed = false;
  int64_t min_code() const { return is_signed ? -(int64_t{1} << (bits - 1)) : 0; }
  int64_t max_code() const {
    return is_signed ? (int64_t{1} << (bits - 1)) - 1 : (int64_t{1} << bits) - 1;
  }
};

struct AccumulatorSpec {
  int bits = 32;      // P (monolithic) or P_I (inner accumulator of a tile), 2..64
  int tile_size = 0;  // T in the ORIGINAL input order; 0 = monolithic
  // Whether the accumulator may hold -2^(P-1) (two's complement). The paper assumes
  // sign-magnitude, i.e. the symmetric range [-(2^(P-1)-1), 2^(P-1)-1]; that is the default.
  bool twos_complement = false;

  // The one rule for tiles: the number of inputs per inner accumulator in a K-deep dot product
  // (T, or K when monolithic: tile_size 0 or >= K).
  int64_t EffectiveTile(int64_t k) const {
    return tile_size <= 0 || tile_size >= k ? k : tile_size;
  }
  bool IsTiled(int64_t k) const { return EffectiveTile(k) < k; }
};

struct LayerOptions {
  Algorithm algorithm = Algorithm::kOptq;
  Method method = Method::kAxe;
  WeightQuantOptions weights;
  InputSpec inputs;
  AccumulatorSpec accumulator;
  Rounding rounding = Rounding::kNearest;  // RTN; kToZero gives AXE-RTZ
  bool soft_threshold = true;              // false gives AXE-HCO (hard constraint only)
  bool act_order = true;                   // descending diag(X~X~^T), both algorithms
  double damping = 0.01;                   // eta as a fraction of mean(diag H)
  int max_damping_retries = 6;             // x10 each retry when Cholesky fails
  int block_size = 128;                    // lazy-batch block width (columns)
  OptqErrorForm optq_error = OptqErrorForm::kOriginal;
  Precision precision = Precision::kFloat32;
  bool bias_correction = true;  // when a bias and the mean inputs are given
  // The relative-error part of the quality report costs 2-4 GEMMs of the layer's size (more than
  // the quantization itself for large layers); false skips it (sparsity, L1 and bits remain).
  bool quality_report = true;

  // Returns the first invalid field as INVALID_ARGUMENT, naming it and its value.
  absl::Status Validate() const;
};

}  // namespace axeq

#endif  // AXEQ_CORE_OPTIONS_H_
