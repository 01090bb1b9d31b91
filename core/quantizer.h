// Uniform integer quantizers of the paper (Eq. 1, 26). Weights: symmetric, zero-point 0, one scale
// per output channel or per group of G inputs, narrow or full alphabet, round-to-nearest or -zero.
// Activations: per-tensor N-bit codes, unsigned with a zero-point (asymmetric) or signed, with the
// range chosen by min/max or by percentiles (heavy-tailed inputs waste the grid with min/max).
#ifndef AXEQ_CORE_QUANTIZER_H_
#define AXEQ_CORE_QUANTIZER_H_

#include <cmath>
#include <cstdint>

#include "Eigen/Core"
#include "absl/status/statusor.h"
#include "core/options.h"

namespace axeq {

using MatrixXf = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatrixXd = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatrixXi8 = Eigen::Matrix<int8_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Smallest and largest weight code of the M-bit alphabet.
inline int WeightCodeMin(const WeightQuantOptions& w) {
  const int half = 1 << (w.bits - 1);
  return w.alphabet == WeightAlphabet::kFull ? -half : -(half - 1);
}
inline int WeightCodeMax(const WeightQuantOptions& w) { return (1 << (w.bits - 1)) - 1; }

// Rounds x to an integer: half away from zero (kNearest) or toward zero (kToZero).
inline double RoundCode(double x, Rounding r) {
  return r == Rounding::kNearest ? std::round(x) : std::trunc(x);
}

// Returns the number of scale groups along K (1 when group_size is 0 or >= K).
int64_t NumGroups(int64_t k, int group_size);

// Returns the per-channel (or per-group) scales s = max|w| / (2^(M-1) - 1) (Eq. 26), shape
// [C, NumGroups]. An all-zero channel/group gets s = 1 so that its codes are 0, never NaN.
MatrixXf WeightScales(const Eigen::Ref<const MatrixXf>& weights, const WeightQuantOptions& opts);

// Returns round-to-nearest codes of `weights` with `scales`, clamped to the alphabet.
MatrixXi8 RoundWeights(const Eigen::Ref<const MatrixXf>& weights,
                       const Eigen::Ref<const MatrixXf>& scales, const WeightQuantOptions& opts,
                       Rounding rounding);

// Returns codes * scales as float weights [C, K].
MatrixXf Dequantize(const Eigen::Ref<const MatrixXi8>& codes,
                    const Eigen::Ref<const MatrixXf>& scales, int group_size);

// How the per-tensor activation range is calibrated.
struct ActivationCalibration {
  // Percentiles of all input values that become the range ends; 0 and 100 mean min/max.
  double low_percentile = 0.0;
  double high_percentile = 100.0;
};

// The activation quantizer the codes assume: x~ = scale * (code - zero_point), code in
// [min_code, max_code] of `spec`. For signed inputs zero_point is 0 (symmetric).
struct ActivationQuantizer {
  InputSpec spec;
  float scale = 1.0f;
  int32_t zero_point = 0;

  // Returns the dequantized quantized inputs X~ for float inputs X (any shape).
  MatrixXf Apply(const Eigen::Ref<const MatrixXf>& x) const;
};

// Fits a per-tensor quantizer to X (rows are samples). INVALID_ARGUMENT on empty or non-finite X.
absl::StatusOr<ActivationQuantizer> CalibrateActivations(const Eigen::Ref<const MatrixXf>& x,
                                                         const InputSpec& spec,
                                                         const ActivationCalibration& cal);

// Returns INVALID_ARGUMENT naming the count and first position of NaN/Inf values in `m`.
absl::Status CheckFinite(const Eigen::Ref<const MatrixXf>& m, const char* name);
// Index of the first NaN/Inf among n floats, or -1: a branch-free (vectorised) scan per block.
int64_t FirstNonFinite(const float* x, int64_t n);

}  // namespace axeq

#endif  // AXEQ_CORE_QUANTIZER_H_
