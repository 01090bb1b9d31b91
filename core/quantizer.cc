// Weight and activation quantizers (Eq. 1, 26).
#include "core/quantizer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace axeq {

int64_t NumGroups(int64_t k, int group_size) {
  if (group_size <= 0 || group_size >= k) return 1;
  return (k + group_size - 1) / group_size;
}

MatrixXf WeightScales(const Eigen::Ref<const MatrixXf>& weights, const WeightQuantOptions& opts) {
  const int64_t c = weights.rows(), k = weights.cols();
  const int64_t groups = NumGroups(k, opts.group_size);
  const int64_t g = groups == 1 ? k : opts.group_size;
  const float qmax = static_cast<float>(WeightCodeMax(opts));
  MatrixXf scales(c, groups);
  for (int64_t r = 0; r < c; ++r) {
    for (int64_t j = 0; j < groups; ++j) {
      const int64_t begin = j * g, len = std::min(g, k - begin);
      const float m = weights.row(r).segment(begin, len).cwiseAbs().maxCoeff();
      scales(r, j) = m > 0.0f ? m / qmax : 1.0f;
    }
  }
  return scales;
}

MatrixXi8 RoundWeights(const Eigen::Ref<const MatrixXf>& weights,
                       const Eigen::Ref<const MatrixXf>& scales, const WeightQuantOptions& opts,
                       Rounding rounding) {
  const int64_t c = weights.rows(), k = weights.cols();
  const int64_t g = scales.cols() == 1 ? k : opts.group_size;
  const double lo = WeightCodeMin(opts), hi = WeightCodeMax(opts);
  MatrixXi8 codes(c, k);
  for (int64_t r = 0; r < c; ++r)
    for (int64_t i = 0; i < k; ++i) {
      const double v = static_cast<double>(weights(r, i)) / scales(r, i / g);
      codes(r, i) = static_cast<int8_t>(std::clamp(RoundCode(v, rounding), lo, hi));
    }
  return codes;
}

MatrixXf Dequantize(const Eigen::Ref<const MatrixXi8>& codes,
                    const Eigen::Ref<const MatrixXf>& scales, int group_size) {
  const int64_t c = codes.rows(), k = codes.cols();
  const int64_t g = scales.cols() == 1 ? k : group_size;
  MatrixXf w(c, k);
  for (int64_t r = 0; r < c; ++r)
    for (int64_t i = 0; i < k; ++i) w(r, i) = static_cast<float>(codes(r, i)) * scales(r, i / g);
  return w;
}

namespace {

// One value through the quantizer: the single definition Apply and MeanSquaredError share.
struct FakeQuant {
  explicit FakeQuant(const ActivationQuantizer& q)
      : lo(static_cast<float>(q.spec.min_code())),
        hi(static_cast<float>(q.spec.max_code())),
        zp(static_cast<float>(q.zero_point)),
        inv(1.0f / q.scale),
        scale(q.scale) {}
  float operator()(float x) const {
    return scale * (std::clamp(std::nearbyint(x * inv) + zp, lo, hi) - zp);
  }
  float lo, hi, zp, inv, scale;
};

}  // namespace

MatrixXf ActivationQuantizer::Apply(const Eigen::Ref<const MatrixXf>& x) const {
  const FakeQuant f(*this);
  MatrixXf out(x.rows(), x.cols());
  for (int64_t r = 0; r < x.rows(); ++r)
    for (int64_t c = 0; c < x.cols(); ++c) out(r, c) = f(x(r, c));
  return out;
}

double ActivationQuantizer::MeanSquaredError(const float* x, int64_t n) const {
  if (n <= 0) return 0.0;
  const FakeQuant f(*this);
  // Eight fixed lanes (value i goes to lane i % 8), added in lane order: deterministic and fast.
  constexpr int kLanes = 8;
  double lane[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) {
      const double e = static_cast<double>(x[i + j]) - static_cast<double>(f(x[i + j]));
      lane[j] += e * e;
    }
  for (int j = 0; i < n; ++i, ++j) {
    const double e = static_cast<double>(x[i]) - static_cast<double>(f(x[i]));
    lane[j] += e * e;
  }
  double sum = 0;
  for (double l : lane) sum += l;
  return sum / static_cast<double>(n);
}

const char* ActivationRangeName(ActivationRange r) {
  switch (r) {
    case ActivationRange::kMinMax:
      return "minmax";
    case ActivationRange::kPercentile:
      return "percentile";
    case ActivationRange::kMse:
      return "mse";
    case ActivationRange::kOutput:
      return "output";
    case ActivationRange::kAuto:
      return "auto";
  }
  return "unknown";
}

ActivationQuantizer QuantizerForRange(double lo, double hi, const InputSpec& spec) {
  ActivationQuantizer q;
  q.spec = spec;
  const double max_code = static_cast<double>(spec.max_code());
  double scale = 1.0;
  if (spec.is_signed) {
    const double m = std::max(std::abs(lo), std::abs(hi));
    if (m > 0) scale = m / max_code;
  } else {
    lo = std::min(lo, 0.0);  // the range must hold 0 exactly (the zero-point is an integer code)
    hi = std::max(hi, 0.0);
    if (hi > lo) scale = (hi - lo) / max_code;
    q.zero_point = static_cast<int32_t>(std::clamp(std::nearbyint(-lo / scale), 0.0, max_code));
  }
  q.scale = static_cast<float>(scale);
  if (!(q.scale > 0.0f) || !std::isfinite(q.scale)) q.scale = 1.0f;  // below float's resolution
  return q;
}

int64_t FirstNonFinite(const float* x, int64_t n) {
  constexpr int64_t kBlock = 1024;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = std::min(n, b + kBlock);
    uint32_t bad = 0;
    for (int64_t i = b; i < e; ++i) {
      uint32_t u;
      std::memcpy(&u, x + i, 4);
      bad |= static_cast<uint32_t>((u & 0x7f800000u) == 0x7f800000u);
    }
    if (bad)
      for (int64_t i = b; i < e; ++i)
        if (!std::isfinite(x[i])) return i;
  }
  return -1;
}

absl::Status CheckFinite(const Eigen::Ref<const MatrixXf>& m, const char* name) {
  int64_t bad = 0, first_r = -1, first_c = -1;
  for (int64_t r = 0; r < m.rows(); ++r) {
    const float* row = m.row(r).data();
    for (int64_t c = FirstNonFinite(row, m.cols());
         c >= 0;) {  // counted only when something is wrong
      if (bad++ == 0) first_r = r, first_c = c;
      const int64_t next = FirstNonFinite(row + c + 1, m.cols() - c - 1);
      c = next < 0 ? -1 : c + 1 + next;
    }
  }
  if (bad == 0) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      name, " has ", bad, " NaN/Inf values (first at row ", first_r, ", col ", first_c, ")"));
}

namespace {

// The p-th percentile (0..100) of v with linear interpolation between order statistics (numpy's
// default): v is reordered. Computed in double, rounded to float as numpy does for float32 data.
double Percentile(std::vector<float>& v, double p) {
  const double pos = p / 100.0 * static_cast<double>(v.size() - 1);
  const size_t i = static_cast<size_t>(std::floor(pos));
  std::nth_element(v.begin(), v.begin() + i, v.end());
  const double a = v[i];
  if (i + 1 >= v.size()) return a;
  const double b = *std::min_element(v.begin() + i + 1, v.end());
  return static_cast<float>(a + (pos - static_cast<double>(i)) * (b - a));
}

// Output error of `q` on the sampled rows xs: sum over rows of ||(x - q(x)) W^T||^2 in double;
// through G = W^T W (gram, K x K) when W has more rows than columns.
double OutputError(const MatrixXf& xs, const Eigen::VectorXd& weight, const MatrixXf& w,
                   const MatrixXf* gram, const ActivationQuantizer& q) {
  const MatrixXf e = xs - q.Apply(xs);
  const MatrixXf y = gram ? MatrixXf(e * *gram) : MatrixXf(e * w.transpose());
  double sum = 0;
  for (int64_t r = 0; r < e.rows(); ++r)
    sum += weight(r) * (gram ? e.row(r).cast<double>().dot(y.row(r).cast<double>())
                             : y.row(r).cast<double>().squaredNorm());
  return sum;
}

// kOutput (see quantizer.h): scores a shortlist of the kMse candidates by output error.
ActivationQuantizer OutputErrorSearch(const Eigen::Ref<const MatrixXf>& x, const MatrixXf& w,
                                      const std::vector<ActivationQuantizer>& cand,
                                      const std::vector<double>& input_err) {
  // The rows scored: all, or the kOutputTopRows with the largest max|x| (weight 1) and a fixed
  // stride over the others, each standing for n_rest / n_taken of them.
  const int64_t n = x.rows();
  std::vector<int64_t> pick;
  std::vector<double> weight;
  if (n <= kOutputMaxRows) {
    for (int64_t r = 0; r < n; ++r) pick.push_back(r), weight.push_back(1.0);
  } else {
    std::vector<float> peak(n);
    for (int64_t r = 0; r < n; ++r) peak[r] = x.row(r).cwiseAbs().maxCoeff();
    std::vector<int64_t> order(n);
    for (int64_t r = 0; r < n; ++r) order[r] = r;
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return peak[a] > peak[b]; });
    std::vector<char> top(n, 0);
    for (int64_t i = 0; i < kOutputTopRows; ++i)
      top[order[i]] = 1, pick.push_back(order[i]), weight.push_back(1.0);
    const int64_t rest = n - kOutputTopRows, stride = (rest + kOutputMaxRows - kOutputTopRows - 1) /
                                                      (kOutputMaxRows - kOutputTopRows);
    std::vector<int64_t> taken;
    for (int64_t r = 0, j = 0; r < n; ++r)
      if (!top[r] && j++ % stride == 0) taken.push_back(r);
    for (int64_t r : taken)
      pick.push_back(r), weight.push_back(static_cast<double>(rest) / taken.size());
  }
  MatrixXf xs(static_cast<int64_t>(pick.size()), x.cols());
  for (size_t i = 0; i < pick.size(); ++i) xs.row(static_cast<int64_t>(i)) = x.row(pick[i]);
  const Eigen::VectorXd row_weight =
      Eigen::Map<const Eigen::VectorXd>(weight.data(), weight.size());
  MatrixXf gram;
  if (w.rows() > w.cols()) gram = w.transpose() * w;
  const MatrixXf* g = w.rows() > w.cols() ? &gram : nullptr;
  const int grid = static_cast<int>(cand.size()) - 1;  // the percentile candidate is last
  std::vector<double> err(cand.size(), -1.0);
  auto score = [&](int i) {
    if (i >= 0 && i < static_cast<int>(cand.size()) && err[i] < 0)
      err[i] = OutputError(xs, row_weight, w, g, cand[i]);
  };
  for (int i = 0; i < grid; i += kOutputCoarseStep) score(i);
  score(grid - 1);  // min/max
  score(grid);      // percentile
  std::vector<int> order(cand.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int>(i);
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return input_err[a] < input_err[b]; });
  for (int i = 0; i < kOutputInputFinalists; ++i) score(order[i]);
  auto argmin = [&] {
    int b = -1;
    for (int i = 0; i <= grid; ++i)
      if (err[i] >= 0 && (b < 0 || err[i] < err[b])) b = i;
    return b;
  };
  for (int step : {5, 3, 2, 1}) {  // local pattern search around the best grid point
    const int b = argmin();
    if (b < grid) score(b - step), score(b + step);
  }
  return cand[argmin()];
}
// CalibrateActivations; for kAuto also appends the min/max and percentile ranges it already has
// to `fixed` (so that ActivationCandidates passes over X once).
absl::StatusOr<ActivationQuantizer> Calibrate(const Eigen::Ref<const MatrixXf>& x,
                                              const InputSpec& spec,
                                              const ActivationCalibration& cal,
                                              const MatrixXf* weights,
                                              std::vector<ActivationQuantizer>* fixed) {
  if (x.size() == 0) return absl::InvalidArgumentError("calibration inputs are empty");
  if (auto s = CheckFinite(x, "calibration inputs"); !s.ok()) return s;
  if (!(cal.low_percentile >= 0 && cal.low_percentile < cal.high_percentile &&
        cal.high_percentile <= 100)) {
    return absl::InvalidArgumentError(
        absl::StrCat("activation percentiles must satisfy 0 <= low < high <= 100, got ",
                     cal.low_percentile, " / ", cal.high_percentile));
  }
  if (cal.method == ActivationRange::kOutput || cal.method == ActivationRange::kAuto) {
    if (weights == nullptr)
      return absl::InvalidArgumentError(
          "the output-error activation range needs the layer's weights");
    if (weights->cols() != x.cols() || weights->size() == 0)
      return absl::InvalidArgumentError(
          absl::StrCat("the output-error activation range needs weights with K = ", x.cols(),
                       " columns, got ", weights->rows(), " x ", weights->cols()));
    if (auto s = CheckFinite(*weights, "weights"); !s.ok()) return s;
  }
  std::vector<float> v;  // all values, row-major
  v.reserve(x.size());
  for (int64_t r = 0; r < x.rows(); ++r)
    for (int64_t c = 0; c < x.cols(); ++c) v.push_back(x(r, c));
  const auto [mn, mx] = std::minmax_element(v.begin(), v.end());
  const double lo = *mn, hi = *mx;
  if (cal.method == ActivationRange::kMinMax) return QuantizerForRange(lo, hi, spec);
  std::vector<float> sample;  // kMse scores these (before v is reordered by the percentiles)
  if (cal.method != ActivationRange::kPercentile) {
    const int64_t n = static_cast<int64_t>(v.size());
    const int64_t stride = (n + kMseMaxValues - 1) / kMseMaxValues;
    sample.reserve((n + stride - 1) / stride);
    for (int64_t i = 0; i < n; i += stride) sample.push_back(v[i]);
  }
  const double p_lo = Percentile(v, cal.low_percentile), p_hi = Percentile(v, cal.high_percentile);
  const ActivationQuantizer pct = QuantizerForRange(p_lo, p_hi, spec);
  if (cal.method == ActivationRange::kPercentile) return pct;
  constexpr int kSteps = 100;
  std::vector<ActivationQuantizer> cand;  // grid a_0..a_99 (a_99 = 1: min/max), then percentile
  cand.reserve(kSteps + 1);
  for (int i = 0; i < kSteps; ++i) {
    const double a =
        i == kSteps - 1 ? 1.0 : 0.3 + static_cast<double>(i) * ((1.0 - 0.3) / (kSteps - 1));
    cand.push_back(QuantizerForRange(a * lo, a * hi, spec));
  }
  cand.push_back(pct);
  std::vector<double> input_err(cand.size());
  for (size_t i = 0; i < cand.size(); ++i)
    input_err[i] = cand[i].MeanSquaredError(sample.data(), static_cast<int64_t>(sample.size()));
  size_t best = 0;
  for (size_t i = 1; i < cand.size(); ++i)
    if (input_err[i] < input_err[best]) best = i;
  if (cal.method == ActivationRange::kMse) return cand[best];
  if (fixed != nullptr && cal.method == ActivationRange::kAuto) {
    fixed->push_back(cand[kSteps - 1]);  // a = 1: the min/max range
    fixed->push_back(pct);
  }
  return OutputErrorSearch(x, *weights, cand, input_err);
}

}  // namespace

absl::StatusOr<ActivationQuantizer> CalibrateActivations(const Eigen::Ref<const MatrixXf>& x,
                                                         const InputSpec& spec,
                                                         const ActivationCalibration& cal,
                                                         const MatrixXf* weights) {
  return Calibrate(x, spec, cal, weights, nullptr);
}

absl::StatusOr<std::vector<ActivationQuantizer>> ActivationCandidates(
    const Eigen::Ref<const MatrixXf>& x, const InputSpec& spec, const ActivationCalibration& cal,
    const MatrixXf* weights) {
  std::vector<ActivationQuantizer> fixed;  // kAuto: min/max and percentile, from the same pass
  AXEQ_ASSIGN_OR_RETURN(ActivationQuantizer first, Calibrate(x, spec, cal, weights, &fixed));
  std::vector<ActivationQuantizer> out = {first};
  for (const ActivationQuantizer& q : fixed) {
    bool seen = false;
    for (const ActivationQuantizer& o : out)
      seen |= o.scale == q.scale && o.zero_point == q.zero_point;
    if (!seen) out.push_back(q);
  }
  return out;
}

}  // namespace axeq
