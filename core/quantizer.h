// Uniform integer quantizers of the paper (Eq. 1, 26). Weights: symmetric, zero-point 0, one scale
// per output channel or per group of G inputs, narrow or full alphabet, round-to-nearest or -zero.
// Activations: per-tensor N-bit codes, unsigned with a zero-point (asymmetric) or signed, with the
// range chosen by min/max, percentiles or the least squared error (heavy-tailed inputs waste the
// grid with min/max; which fixed rule is best depends on the tensor).
#ifndef AXEQ_CORE_QUANTIZER_H_
#define AXEQ_CORE_QUANTIZER_H_

#include <cmath>
#include <cstdint>
#include <vector>

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

// Rounds x to an integer: half away from zero (kNearest) or toward zero (kToZero). Equal to
// std::round / std::trunc for every double, but inlined: nearbyint (ties to even, one
// instruction) corrected on exact ties, where x +- 0.5 is an exact integer.
inline double RoundCode(double x, Rounding r) {
  if (r == Rounding::kToZero) return std::trunc(x);
  const double e = std::nearbyint(x);
  return std::abs(x - e) == 0.5 ? x + std::copysign(0.5, x) : e;
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

// How the per-tensor activation range is chosen.
//  kMinMax     [min x, max x].
//  kPercentile [P_low(x), P_high(x)] (linear interpolation between order statistics, numpy's
//              default, computed in double and rounded to float).
//  kMse        the candidate range with the smallest mean squared quantization error of x:
//              r0 = the min/max range; candidates r0 * a for a = 0.3 + i * (0.7 / 99), i = 0..99
//              (numpy.linspace(0.3, 1.0, 100); a = 1 exactly for i = 99), then the percentile
//              range of kPercentile; each candidate becomes an ActivationQuantizer exactly as for a
//              given range (QuantizerForRange); its error is mean((x - Apply(x))^2) summed in
//              double; the smallest wins, the first on ties. Never worse on x than kMinMax (i = 99)
//              or kPercentile (the last candidate) on the values it scores. When x has more than
//              kMseMaxValues values, the errors are scored on the strided subsample
//              x_flat[0 :: ceil(n / kMseMaxValues)] (row-major), deterministic; min/max and the
//              percentiles always use all of x. The Python helper (axeq.config) must run the
//              same search so that the CLI and Python pipelines choose the same range.
//  kOutput     the candidate of kMse with the smallest error of the layer's OUTPUT with its float
//              weights W [C, K]: sum over rows x of ||(x - Apply(x)) W^T||^2 (via G = W^T W when
//              C > K), in double, on at most kOutputMaxRows rows: all of them, or the
//              kOutputTopRows rows with the largest max|x| (outlier tokens; ties: lower index) plus
//              every s-th of the other rows in order (s = ceil(rest / (kOutputMaxRows -
//              kOutputTopRows))), each of those weighted rest / taken. Scored: the grid points i =
//              0, 10, ..., 90, 99 (min/max), the percentile range, the kOutputInputFinalists best
//              by input MSE (so the kMse choice is always among them), then a pattern search around
//              the best grid point
//              (+-5, +-3, +-2, +-1); the smallest output error wins, the lowest index on ties.
//              Never worse in output error than kMinMax, kPercentile or kMse on the rows it scores.
//              Needs the weights (CalibrateActivations' `weights`).
//  kAuto       end to end: the layer is quantized with each distinct range of ActivationCandidates
//              (kOutput's, kMinMax's, kPercentile's) and the result with the least relative output
//              error on the calibration rows (QualityReport::relative_error) is kept. The job
//              runner does that (client/job.h); CalibrateActivations returns kOutput's range.
//              Never worse than min/max or percentile in the layer's actual output error on the
//              calibration rows, at up to 3x the quantization work.
// In every case a range [lo, hi] becomes lo' = min(lo, 0), hi' = max(hi, 0) for unsigned inputs
// and the symmetric [-m, m], m = max(|lo|, |hi|), for signed ones (QuantizerForRange).
enum class ActivationRange { kMinMax, kPercentile, kMse, kOutput, kAuto };
const char* ActivationRangeName(ActivationRange r);

struct ActivationCalibration {
  ActivationCalibration() = default;
  ActivationCalibration(ActivationRange m) : method(m) {}  // NOLINT: implicit by design
  // Percentile calibration with the given ends (older callers' {low, high}).
  ActivationCalibration(double low, double high)
      : method(ActivationRange::kPercentile), low_percentile(low), high_percentile(high) {}

  ActivationRange method = ActivationRange::kMse;
  // Percentiles (0..100) of all input values for kPercentile and kMse's percentile candidate
  // (0.001 / 99.999, the reference implementation's choice); 0 and 100 are min and max.
  double low_percentile = 0.001;
  double high_percentile = 99.999;
};

// kMse scores at most this many values (a fixed-stride subsample beyond it).
inline constexpr int64_t kMseMaxValues = int64_t{1} << 20;
// kOutput: rows scored (of which outlier rows), coarse grid stride, input-MSE finalists.
inline constexpr int64_t kOutputMaxRows = 512;
inline constexpr int64_t kOutputTopRows = 128;
inline constexpr int kOutputCoarseStep = 10;
inline constexpr int kOutputInputFinalists = 4;

// The activation quantizer the codes assume: x~ = scale * (code - zero_point), code in
// [min_code, max_code] of `spec`. For signed inputs zero_point is 0 (symmetric).
struct ActivationQuantizer {
  InputSpec spec;
  float scale = 1.0f;
  int32_t zero_point = 0;

  // Returns the dequantized quantized inputs X~ for float inputs X (any shape).
  MatrixXf Apply(const Eigen::Ref<const MatrixXf>& x) const;
  // Returns the mean of (x_i - Apply(x_i))^2 over n values, in double: eight fixed lanes (value i
  // in lane i % 8) added in lane order, so the result is deterministic.
  double MeanSquaredError(const float* x, int64_t n) const;
};

// Returns the quantizer whose grid covers [lo, hi]: unsigned: [min(lo, 0), max(hi, 0)],
// scale = range / (2^N - 1), zero_point = round(-lo' / scale); signed: m = max(|lo|, |hi|),
// scale = m / (2^(N-1) - 1). Computed in double, scale rounded to float once; a zero,
// non-finite or sub-float range gives scale 1.
ActivationQuantizer QuantizerForRange(double lo, double hi, const InputSpec& spec);

// Fits a per-tensor quantizer to X (rows are samples) with cal's range method (default kMse;
// kOutput needs the layer's float weights [C, K], the rest ignore them). INVALID_ARGUMENT on empty
// or non-finite X (or weights), missing or mis-shaped weights for kOutput, or percentiles outside
// 0 <= low < high <= 100. Deterministic.
absl::StatusOr<ActivationQuantizer> CalibrateActivations(const Eigen::Ref<const MatrixXf>& x,
                                                         const InputSpec& spec,
                                                         const ActivationCalibration& cal,
                                                         const MatrixXf* weights = nullptr);

// The ranges kAuto tries, in order: kOutput's, then kMinMax's and kPercentile's when they differ
// from every earlier one (same scale and zero-point). For other methods, the one range of
// CalibrateActivations.
absl::StatusOr<std::vector<ActivationQuantizer>> ActivationCandidates(
    const Eigen::Ref<const MatrixXf>& x, const InputSpec& spec, const ActivationCalibration& cal,
    const MatrixXf* weights);

// Returns INVALID_ARGUMENT naming the count and first position of NaN/Inf values in `m`.
absl::Status CheckFinite(const Eigen::Ref<const MatrixXf>& m, const char* name);
// Index of the first NaN/Inf among n floats, or -1: a branch-free (vectorised) scan per block.
int64_t FirstNonFinite(const float* x, int64_t n);

}  // namespace axeq

#endif  // AXEQ_CORE_QUANTIZER_H_
