// Weight and activation quantizers (Eq. 1, 26).
#include "core/quantizer.h"

#include <cstring>

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"

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

MatrixXf ActivationQuantizer::Apply(const Eigen::Ref<const MatrixXf>& x) const {
  const float lo = static_cast<float>(spec.min_code()), hi = static_cast<float>(spec.max_code());
  const float zp = static_cast<float>(zero_point), inv = 1.0f / scale;
  MatrixXf out(x.rows(), x.cols());
  for (int64_t r = 0; r < x.rows(); ++r)
    for (int64_t c = 0; c < x.cols(); ++c) {
      const float code = std::clamp(std::nearbyint(x(r, c) * inv) + zp, lo, hi);
      out(r, c) = scale * (code - zp);
    }
  return out;
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
    for (int64_t c = FirstNonFinite(row, m.cols()); c >= 0;) {  // counted only when something is wrong
      if (bad++ == 0) first_r = r, first_c = c;
      const int64_t next = FirstNonFinite(row + c + 1, m.cols() - c - 1);
      c = next < 0 ? -1 : c + 1 + next;
    }
  }
  if (bad == 0) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(name, " has ", bad,
                                                 " NaN/Inf values (first at row ", first_r,
                                                 ", col ", first_c, ")"));
}

absl::StatusOr<ActivationQuantizer> CalibrateActivations(const Eigen::Ref<const MatrixXf>& x,
                                                         const InputSpec& spec,
                                                         const ActivationCalibration& cal) {
  if (x.size() == 0) return absl::InvalidArgumentError("calibration inputs are empty");
  if (auto s = CheckFinite(x, "calibration inputs"); !s.ok()) return s;
  if (!(cal.low_percentile >= 0 && cal.low_percentile < cal.high_percentile &&
        cal.high_percentile <= 100)) {
    return absl::InvalidArgumentError(absl::StrCat("activation percentiles must satisfy 0 <= low < high <= 100, got ",
                                                   cal.low_percentile, " / ", cal.high_percentile));
  }
  std::vector<float> v(x.data(), x.data() + x.size());
  if (!x.IsRowMajor || x.outerStride() != x.cols()) {
    v.clear();
    for (int64_t r = 0; r < x.rows(); ++r)
      for (int64_t c = 0; c < x.cols(); ++c) v.push_back(x(r, c));
  }
  auto pct = [&](double p) {
    const size_t idx = static_cast<size_t>(std::llround(p / 100.0 * (v.size() - 1)));
    std::nth_element(v.begin(), v.begin() + idx, v.end());
    return v[idx];
  };
  float lo = pct(cal.low_percentile), hi = pct(cal.high_percentile);
  ActivationQuantizer q;
  q.spec = spec;
  if (spec.is_signed) {
    const float m = std::max(std::abs(lo), std::abs(hi));
    q.scale = m > 0 ? m / static_cast<float>(spec.max_code()) : 1.0f;
    q.zero_point = 0;
  } else {
    lo = std::min(lo, 0.0f);  // the range must hold 0 exactly (zero-point is an integer code)
    hi = std::max(hi, 0.0f);
    const float range = hi - lo;
    q.scale = range > 0 ? range / static_cast<float>(spec.max_code()) : 1.0f;
    q.zero_point = static_cast<int32_t>(std::clamp<double>(
        std::nearbyint(-lo / q.scale), 0.0, static_cast<double>(spec.max_code())));
  }
  return q;
}

}  // namespace axeq
