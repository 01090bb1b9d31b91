// OPTQ (GPTQ; Algorithm 2) with act-order, damping with retry, lazy-batch blocks and AXE.
// H^-1's upper Cholesky factor is computed as the Cholesky of the row-and-column-reversed H
// followed by one recursive triangular inverse: H = R R^T with R = J chol(J H J) J upper, so
// H^-1 = R^-T R^-1 and R^-1 is the (unique) upper factor. Cost 2/3 K^3 instead of 4/3 K^3.
#include <algorithm>
#include <atomic>
#include <numeric>

#include "Eigen/Cholesky"
#include "absl/strings/str_cat.h"
#include "core/greedy_kernel.h"

namespace axeq {
namespace internal {
namespace {

// Returns the inverse of the lower-triangular l (recursive blocking: GEMM-bound, K^3/3 flops).
template <typename S>
MatS<S> LowerInverse(const Eigen::Ref<const MatS<S>>& l) {
  const int64_t n = l.rows();
  if (n <= 96) {
    MatS<S> id = MatS<S>::Identity(n, n);
    l.template triangularView<Eigen::Lower>().solveInPlace(id);
    return id;
  }
  const int64_t n1 = n / 2, n2 = n - n1;
  MatS<S> out = MatS<S>::Zero(n, n);
  out.topLeftCorner(n1, n1) = LowerInverse<S>(l.topLeftCorner(n1, n1));
  out.bottomRightCorner(n2, n2) = LowerInverse<S>(l.bottomRightCorner(n2, n2));
  // inv21 = -inv22 * l21 * inv11
  MatS<S> t = l.bottomLeftCorner(n2, n1) *
              out.topLeftCorner(n1, n1).template triangularView<Eigen::Lower>();
  out.bottomLeftCorner(n2, n1).noalias() =
      -(out.bottomRightCorner(n2, n2).template triangularView<Eigen::Lower>() * t);
  return out;
}

}  // namespace

// Returns the upper Cholesky factor U of (H + eta I)^-1 (H^-1 = U^T U), raising eta x10 up to
// max_retries times when H + eta I is not positive definite.
template <typename S>
absl::StatusOr<MatS<S>> UpperFactorOfInverse(const MatS<S>& h, double damping, int max_retries,
                                             double* eta_used, int* retries) {
  const int64_t k = h.rows();
  const double mean_diag = std::max(h.diagonal().template cast<double>().mean(), 1e-30);
  double eta = damping * mean_diag;
  for (int attempt = 0; attempt <= max_retries; ++attempt, eta *= 10) {
    MatS<S> rev = MatS<S>::Zero(k, k);
    for (int64_t j = 0; j < k; ++j)
      for (int64_t i = j; i < k; ++i) rev(i, j) = h(k - 1 - i, k - 1 - j);
    rev.diagonal().array() += static_cast<S>(eta);
    Eigen::LLT<Eigen::Ref<MatS<S>>, Eigen::Lower> llt(rev);
    if (llt.info() != Eigen::Success) continue;
    bool finite = rev.diagonal().allFinite() && (rev.diagonal().array() > S(0)).all();
    if (!finite) continue;
    MatS<S> linv = LowerInverse<S>(rev);
    if (!linv.allFinite()) continue;
    MatS<S> u = MatS<S>::Zero(k, k);
    for (int64_t j = 0; j < k; ++j)
      for (int64_t i = 0; i <= j; ++i) u(i, j) = linv(k - 1 - i, k - 1 - j);
    *eta_used = eta;
    *retries = attempt;
    return u;
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "Hessian X~X~^T is not positive definite even with damping ", eta / 10,
      " (", damping, " x 10^", max_retries, " of its mean diagonal ", mean_diag, ")"));
}

template <typename S>
absl::StatusOr<GreedyResult> OptqImpl(const Eigen::Ref<const MatrixXf>& weights,
                                      const Eigen::Ref<const MatrixXf>& gram,
                                      const Eigen::Ref<const MatrixXf>& scales,
                                      const Constraints& constraints, const LayerOptions& opts,
                                      const RunContext& ctx) {
  const int64_t c = weights.rows(), k = weights.cols();
  GreedyResult result;
  result.order = ActOrder(gram, opts.act_order);
  const auto& order = result.order;
  MatS<S> h = PermuteSymmetric<S>(gram, order) * S(2);
  std::vector<char> dead(k, 0);
  for (int64_t i = 0; i < k; ++i)
    if (!(h(i, i) > S(0))) {
      dead[i] = 1;
      h.row(i).setZero();
      h.col(i).setZero();
      h(i, i) = S(1);
      ++result.dead_inputs;
    }
  MatS<S> u;
  AXEQ_ASSIGN_OR_RETURN(u, UpperFactorOfInverse<S>(h, opts.damping, opts.max_damping_retries,
                                                   &result.damping, &result.damping_retries));
  h.resize(0, 0);
  result.codes.resize(c, k);
  std::atomic<int64_t> done{0};
  const int64_t total = ((c + kRowChunk - 1) / kRowChunk) * k;
  const bool original = opts.optq_error == OptqErrorForm::kOriginal;
  std::atomic<int64_t> breakdowns{0};
  AXEQ_RETURN_IF_ERROR(RunChunked(c, ctx, [&](int64_t row0, int64_t rows) -> absl::Status {
    MatS<S> acc(rows, k);
    for (int64_t i = 0; i < k; ++i)
      acc.col(i) = dead[i] ? VecS<S>::Zero(rows)
                           : VecS<S>(weights.block(row0, order[i], rows, 1).template cast<S>());
    CodeChooser chooser(opts, scales, constraints, k, row0, rows);
    auto step = [&](int64_t i, auto delta) {
      const int64_t o = order[i];
      const S inv_d = S(1) / u(i, i);
      for (int64_t r = 0; r < rows; ++r) {
        const S w = acc(r, i);
        S v;
        const int q = chooser.Choose(r, o, w, &v);
        result.codes(row0 + r, o) = static_cast<int8_t>(q);
        const S qd = static_cast<S>(q * chooser.Scale(r, o));
        delta(r) = ((original ? w : v) - qd) * inv_d;
      }
    };
    auto s = BlockedSweep<S>(acc, u, opts.block_size, ctx, &done, total, step);
    breakdowns += chooser.breakdowns();
    return s;
  }));
  if (breakdowns > 0) return BreakdownError(breakdowns);
  return result;
}

}  // namespace internal

std::vector<int64_t> ActOrder(const Eigen::Ref<const MatrixXf>& gram, bool act_order) {
  std::vector<int64_t> order(gram.rows());
  std::iota(order.begin(), order.end(), 0);
  if (act_order) {
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return gram(a, a) > gram(b, b); });
  }
  return order;
}

absl::StatusOr<GreedyResult> RunOptq(const Eigen::Ref<const MatrixXf>& weights,
                                     const Eigen::Ref<const MatrixXf>& gram,
                                     const Eigen::Ref<const MatrixXf>& scales,
                                     const Constraints& constraints, const LayerOptions& opts,
                                     const RunContext& ctx) {
  if (opts.precision == Precision::kFloat64)
    return internal::OptqImpl<double>(weights, gram, scales, constraints, opts, ctx);
  return internal::OptqImpl<float>(weights, gram, scales, constraints, opts, ctx);
}

}  // namespace axeq
