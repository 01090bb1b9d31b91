// Reference twins of the optimized quantizers, written as the paper states them and nothing more:
// OPTQ one column at a time with an explicit H^-1 (Algorithm 2), and GPFQ on the calibration
// samples with the per-sample error state U (Algorithm 1). Double precision throughout.
#include <cmath>

#include "Eigen/Cholesky"
#include "Eigen/LU"
#include "absl/strings/str_cat.h"
#include "core/greedy_kernel.h"

namespace axeq {

using internal::CodeChooser;
using internal::MatS;
using internal::VecS;

absl::StatusOr<GreedyResult> OptqReference(const Eigen::Ref<const MatrixXf>& weights,
                                           const Eigen::Ref<const MatrixXf>& gram,
                                           const Eigen::Ref<const MatrixXf>& scales,
                                           const Constraints& constraints,
                                           const LayerOptions& opts) {
  const int64_t c = weights.rows(), k = weights.cols();
  GreedyResult result;
  result.order = ActOrder(gram, opts.act_order);
  MatS<double> h = internal::PermuteSymmetric<double>(gram, result.order) * 2.0;
  MatS<double> w(c, k);
  for (int64_t i = 0; i < k; ++i) w.col(i) = weights.col(result.order[i]).cast<double>();
  for (int64_t i = 0; i < k; ++i)
    if (!(h(i, i) > 0)) {
      h.row(i).setZero();
      h.col(i).setZero();
      h(i, i) = 1;
      w.col(i).setZero();
      ++result.dead_inputs;
    }
  const double mean_diag = h.diagonal().mean();
  double eta = opts.damping * mean_diag;
  MatS<double> u;
  for (int attempt = 0;; ++attempt, eta *= 10) {
    if (attempt > opts.max_damping_retries)
      return absl::FailedPreconditionError("Hessian not positive definite after max damping");
    MatS<double> hd = h;
    hd.diagonal().array() += eta;
    Eigen::LLT<MatS<double>> llt(hd);
    if (llt.info() != Eigen::Success) continue;
    const MatS<double> hinv = llt.solve(MatS<double>::Identity(k, k));
    Eigen::LLT<MatS<double>> llt_inv(hinv);
    if (llt_inv.info() != Eigen::Success) continue;
    u = llt_inv.matrixU();
    result.damping = eta;
    result.damping_retries = attempt;
    break;
  }
  result.codes.resize(c, k);
  CodeChooser chooser(opts, scales, constraints, k, 0, c);
  const bool original = opts.optq_error == OptqErrorForm::kOriginal;
  for (int64_t i = 0; i < k; ++i) {
    const int64_t o = result.order[i];
    chooser.SetColumn(o);
    for (int64_t r = 0; r < c; ++r) {
      double v, s;
      const double wi = w(r, i);
      const int q = chooser.Choose(r, wi, &v, &s);
      result.codes(r, o) = static_cast<int8_t>(q);
      const double err = ((original ? wi : v) - q * s) / u(i, i);
      for (int64_t j = i + 1; j < k; ++j) w(r, j) -= err * u(i, j);
    }
  }
  if (chooser.breakdowns() > 0) return internal::BreakdownErrorFor(chooser.breakdowns());
  return result;
}

absl::StatusOr<GreedyResult> GpfqReference(const Eigen::Ref<const MatrixXf>& weights,
                                           const Eigen::Ref<const MatrixXf>& x,
                                           const Eigen::Ref<const MatrixXf>& xq,
                                           const Eigen::Ref<const MatrixXf>& scales,
                                           const Constraints& constraints,
                                           const LayerOptions& opts) {
  const int64_t c = weights.rows(), k = weights.cols(), d = x.rows();
  GreedyResult result;
  const MatS<double> xd = x.cast<double>(), xqd = xq.cast<double>();
  MatrixXf diag = MatrixXf::Zero(k, k);
  for (int64_t i = 0; i < k; ++i) diag(i, i) = static_cast<float>(xqd.col(i).squaredNorm() / d);
  result.order = ActOrder(diag, opts.act_order);
  MatS<double> u = MatS<double>::Zero(d, c);  // per-sample error, one column per channel
  result.codes.resize(c, k);
  CodeChooser chooser(opts, scales, constraints, k, 0, c);
  VecS<double> qd(c);
  for (int64_t i = 0; i < k; ++i) {
    const int64_t o = result.order[i];
    const auto xi = xd.col(o);
    const auto xqi = xqd.col(o);
    const double norm = xqi.squaredNorm();
    const VecS<double> wi = weights.col(o).cast<double>();
    VecS<double> v = VecS<double>::Zero(c);
    if (norm > 0) v = (wi * xqi.dot(xi) + u.transpose() * xqi) / norm;  // line 6
    chooser.SetColumn(o);
    for (int64_t r = 0; r < c; ++r) {
      double constrained, s = 0;
      const int q = norm > 0 ? chooser.Choose(r, v(r), &constrained, &s) : 0;
      result.codes(r, o) = static_cast<int8_t>(q);
      qd(r) = q * s;
    }
    result.dead_inputs += norm > 0 ? 0 : 1;
    u.noalias() += xi * wi.transpose() - xqi * qd.transpose();  // line 11
  }
  if (chooser.breakdowns() > 0) return internal::BreakdownErrorFor(chooser.breakdowns());
  return result;
}

}  // namespace axeq
