// QuantizeLayer: validation, method dispatch (base / AXE / EP-init / naive), certificate, bias
// correction (Nagel et al. 2019) and the quality report; plus the statistics accumulator.
#include "core/layer.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "core/bounds.h"
#include "core/greedy_kernel.h"
#include "core/l1_projection.h"
#include "core/status_macros.h"

namespace axeq {

absl::Status ValidateLayer(const Eigen::Ref<const MatrixXf>& weights, const Eigen::VectorXf* bias,
                           const LayerStats& stats, const LayerOptions& options) {
  AXEQ_RETURN_IF_ERROR(options.Validate());
  const int64_t c = weights.rows(), k = weights.cols();
  if (c == 0 || k == 0)
    return absl::InvalidArgumentError(
        absl::StrCat("weights must be non-empty [C, K], got [", c, ", ", k, "]"));
  if (c > (int64_t{1} << 20) || k > (int64_t{1} << 17))
    return absl::InvalidArgumentError(
        absl::StrCat("weights [", c, ", ", k, "] exceed the limits C <= 2^20, K <= 2^17"));
  AXEQ_RETURN_IF_ERROR(CheckFinite(weights, "weights"));
  auto square = [&](const MatrixXf& m, const char* name, bool required) -> absl::Status {
    if (m.size() == 0) {
      if (required)
        return absl::InvalidArgumentError(
            absl::StrCat(name, " is required for ", AlgorithmName(options.algorithm)));
      return absl::OkStatus();
    }
    if (m.rows() != k || m.cols() != k)
      return absl::InvalidArgumentError(absl::StrCat(name, " must be [", k, ", ", k,
                                                     "] to match weights [", c, ", ", k, "], got [",
                                                     m.rows(), ", ", m.cols(), "]"));
    return CheckFinite(m, name);
  };
  AXEQ_RETURN_IF_ERROR(square(stats.gram, "statistics gram (X~^T X~)", true));
  AXEQ_RETURN_IF_ERROR(
      square(stats.cross, "statistics cross (X~^T X)", options.algorithm == Algorithm::kGpfq));
  AXEQ_RETURN_IF_ERROR(square(stats.xx, "statistics xx (X^T X)", false));
  if (stats.samples <= 0)
    return absl::InvalidArgumentError(
        absl::StrCat("statistics must come from at least one sample, got ", stats.samples));
  for (const auto* v : {&stats.mean_x, &stats.mean_xq}) {
    if (v->size() != 0 && v->size() != k)
      return absl::InvalidArgumentError(
          absl::StrCat("mean inputs must have ", k, " entries, got ", v->size()));
    if (v->size() != 0 && !v->allFinite())
      return absl::InvalidArgumentError("mean inputs contain NaN/Inf");
  }
  if (bias != nullptr) {
    if (bias->size() != c)
      return absl::InvalidArgumentError(absl::StrCat(
          "bias must have ", c, " entries (one per output channel), got ", bias->size()));
    if (!bias->allFinite()) return absl::InvalidArgumentError("bias contains NaN/Inf values");
  }
  return absl::OkStatus();
}

void ApplyEpInit(MatrixXi8* codes, const InputSpec& inputs, const AccumulatorSpec& acc) {
  const int64_t k = codes->cols();
  const int64_t t = acc.EffectiveTile(k);
  const double radius =
      static_cast<double>(std::min(AccumulatorMax(acc.bits),
                                   AccumulatorMinMagnitude(acc.bits, acc.twos_complement))) /
      static_cast<double>(std::max(inputs.max_code(), -inputs.min_code()));
  std::vector<double> v;
  for (int64_t r = 0; r < codes->rows(); ++r) {
    for (int64_t begin = 0; begin < k; begin += t) {
      const int64_t len = std::min(t, k - begin);
      v.resize(len);
      for (int64_t i = 0; i < len; ++i) v[i] = (*codes)(r, begin + i);
      const double lam = L1ProjectionThreshold(v, radius);
      if (lam <= 0) continue;
      for (int64_t i = 0; i < len; ++i)
        (*codes)(r, begin + i) = static_cast<int8_t>(
            std::trunc(std::copysign(std::max(std::abs(v[i]) - lam, 0.0), v[i])));
    }
  }
}

QualityReport MakeQualityReport(const Eigen::Ref<const MatrixXf>& weights,
                                const Eigen::Ref<const MatrixXi8>& codes,
                                const Eigen::Ref<const MatrixXf>& scales, int group_size,
                                const LayerStats& stats, const Certificate& cert,
                                const RunContext& ctx) {
  QualityReport rep;
  const int64_t c = codes.rows(), k = codes.cols();
  int64_t zeros = 0, l1_sum = 0;
  for (int64_t r = 0; r < c; ++r) {
    int64_t l1 = 0;
    for (int64_t i = 0; i < k; ++i) {
      const int q = codes(r, i);
      zeros += q == 0;
      l1 += std::abs(q);
      rep.max_abs_code = std::max(rep.max_abs_code, std::abs(q));
    }
    rep.max_l1 = std::max(rep.max_l1, l1);
    l1_sum += l1;
  }
  rep.sparsity = static_cast<double>(zeros) / static_cast<double>(c * k);
  rep.mean_l1 = static_cast<double>(l1_sum) / static_cast<double>(c);
  rep.min_accumulator_bits = cert.min_accumulator_bits;
  rep.min_outer_accumulator_bits = cert.min_outer_accumulator_bits;
  if (stats.gram.size() == 0) return rep;
  // Per chunk of channels: <W B, W>, <Q B, W>, <Q B, Q> and, with xx and cross, <W XX, W>, <Q A,
  // W>.
  const bool full = stats.xx.size() != 0 && stats.cross.size() != 0;
  const int64_t chunks = (c + internal::kRowChunk - 1) / internal::kRowChunk;
  std::vector<std::array<double, 5>> part(chunks, {0, 0, 0, 0, 0});
  (void)internal::RunChunked(c, ctx, [&](int64_t row0, int64_t rows) -> absl::Status {
    const MatrixXf w = weights.middleRows(row0, rows);
    const MatrixXf q =
        Dequantize(codes.middleRows(row0, rows), scales.middleRows(row0, rows), group_size);
    auto dot = [](const MatrixXf& a, const MatrixXf& b) {
      return (a.cast<double>().array() * b.cast<double>().array()).sum();
    };
    auto& p = part[row0 / internal::kRowChunk];
    MatrixXf g = w * stats.gram;
    p[0] = dot(g, w);
    p[1] = dot(g, q);
    g.noalias() = q * stats.gram;
    p[2] = dot(g, q);
    if (full) {
      g.noalias() = w * stats.xx;
      p[3] = dot(g, w);
      g.noalias() = q * stats.cross;
      p[4] = dot(g, w);
    }
    return absl::OkStatus();
  });
  std::array<double, 5> s{0, 0, 0, 0, 0};
  for (const auto& p : part)
    for (int i = 0; i < 5; ++i) s[i] += p[i];
  if (s[0] > 0)
    rep.relative_error_quantized_inputs = std::sqrt(std::max(s[0] - 2 * s[1] + s[2], 0.0) / s[0]);
  if (full && s[3] > 0)
    rep.relative_error = std::sqrt(std::max(s[3] - 2 * s[4] + s[2], 0.0) / s[3]);
  return rep;
}

absl::StatusOr<LayerOptions> ResolveOptions(const LayerOptions& options, int64_t k) {
  AXEQ_RETURN_IF_ERROR(options.Validate());
  LayerOptions o = options;
  if (o.method != Method::kNaive) return o;
  BitWidths bw;
  AXEQ_ASSIGN_OR_RETURN(
      bw, NaiveBitWidths(k, o.weights.bits, o.inputs.bits, o.inputs.is_signed, o.accumulator.bits));
  o.weights.bits = bw.weight_bits;
  o.inputs.bits = bw.input_bits;
  return o;
}

absl::StatusOr<QuantizedLayer> QuantizeLayer(const Eigen::Ref<const MatrixXf>& weights,
                                             const Eigen::VectorXf* bias, const LayerStats& stats,
                                             const LayerOptions& options, const RunContext& ctx) {
  AXEQ_RETURN_IF_ERROR(ValidateLayer(weights, bias, stats, options));
  const int64_t k = weights.cols();
  const LayerOptions& o = options;
  QuantizedLayer out;
  out.group_size = o.weights.group_size;
  out.activations.spec = o.inputs;
  out.run.samples = stats.samples;
  const AccumulatorBudget budget(o.inputs, o.accumulator);
  const int p_star = DataTypeBoundBits(k, o.weights.bits, o.inputs.bits, o.inputs.is_signed);
  Constraints constraints;
  std::string what = absl::StrCat(o.algorithm == Algorithm::kOptq ? "OPTQ" : "GPFQ");
  switch (o.method) {
    case Method::kBase:
      break;
    case Method::kNaive:
      if (p_star > o.accumulator.bits) {
        auto nb = NaiveBitWidths(k, o.weights.bits, o.inputs.bits, o.inputs.is_signed,
                                 o.accumulator.bits);
        return absl::FailedPreconditionError(absl::StrCat(
            "naive: W", o.weights.bits, "A", o.inputs.bits, " with K = ", k, " needs P* = ", p_star,
            " > ", o.accumulator.bits, " bits",
            nb.ok() ? absl::StrCat("; W", nb->weight_bits, "A", nb->input_bits, " fits")
                    : std::string()));
      }
      absl::StrAppend(&what, " naive (P* = ", p_star, ")");
      break;
    case Method::kAxe:
    case Method::kEpInit:
      if (!budget.Feasible()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "a ", o.accumulator.bits,
            "-bit accumulator cannot hold even one product of a nonzero "
            "weight code and an input code in [",
            o.inputs.min_code(), ", ", o.inputs.max_code(), "]: every weight would be zero"));
      }
      if (o.method == Method::kAxe) {
        constraints.hard_clip = true;
        absl::StrAppend(&what, " + AXE (", RoundingName(o.rounding), ", ",
                        o.soft_threshold ? "soft+hard" : "hard only",
                        o.algorithm == Algorithm::kOptq ? (o.optq_error == OptqErrorForm::kOriginal
                                                               ? ", error from W"
                                                               : ", error from constrained W")
                                                        : "",
                        ")");
      } else {
        absl::StrAppend(&what, " + EP-init");
      }
      break;
  }
  if (o.accumulator.IsTiled(k))
    absl::StrAppend(&what, ", P_I = ", o.accumulator.bits, ", T = ", o.accumulator.tile_size);
  else
    absl::StrAppend(&what, ", P = ", o.accumulator.bits);
  out.run.description = what;
  out.scales = WeightScales(weights, o.weights);
  if (constraints.hard_clip && o.soft_threshold) {
    constraints.lambdas =
        SoftThresholds(weights, out.scales, o.weights.group_size, o.accumulator.tile_size,
                       L1Radius(o.accumulator.bits, o.inputs.bits), ctx);
  }
  LayerOptions run = o;
  if (o.method != Method::kAxe) run.rounding = Rounding::kNearest;  // baselines round to nearest
  GreedyResult g;
  if (o.algorithm == Algorithm::kOptq) {
    AXEQ_ASSIGN_OR_RETURN(g, RunOptq(weights, stats.gram, out.scales, constraints, run, ctx,
                                     stats.optq_factor.get()));
  } else {
    AXEQ_ASSIGN_OR_RETURN(
        g, RunGpfq(weights, stats.cross, stats.gram, out.scales, constraints, run, ctx));
  }
  out.codes = std::move(g.codes);
  out.run.damping = g.damping;
  out.run.damping_retries = g.damping_retries;
  out.run.dead_inputs = g.dead_inputs;
  if (o.method == Method::kEpInit) ApplyEpInit(&out.codes, o.inputs, o.accumulator);
  out.certificate = MakeCertificate(out.codes, o.weights.bits, o.inputs, o.accumulator, ctx);
  if (bias != nullptr) {
    Eigen::VectorXf b = *bias;
    if (o.bias_correction && stats.mean_x.size() == k && stats.mean_xq.size() == k) {
      const MatrixXf deq = Dequantize(out.codes, out.scales, o.weights.group_size);
      b += (weights * stats.mean_x - deq * stats.mean_xq);
      out.bias_corrected = true;
    }
    out.bias = std::move(b);
  }
  LayerStats no_stats;
  out.report = MakeQualityReport(weights, out.codes, out.scales, o.weights.group_size,
                                 o.quality_report ? stats : no_stats, out.certificate, ctx);
  return out;
}

}  // namespace axeq
