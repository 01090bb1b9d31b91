// GPFQ in Gram form (DESIGN.md): with A = X~^T X and B = X~^T X~ (K x K, sample-normalised),
//   v_i = ( sum_{j<=i} A_ij W_j - sum_{j<i} B_ij Q_j ) / B_ii,
// which is Algorithm 1's line 6 with the error state U expanded; no matrix square root, O(K^2)
// memory. The A-term is one triangular GEMM up front; the B-term is the same lazy-batch sweep as
// OPTQ with coupling B and delta = the dequantized code.
#include <atomic>

#include "core/greedy_kernel.h"

namespace axeq {
namespace internal {

template <typename S>
absl::StatusOr<GreedyResult> GpfqImpl(const Eigen::Ref<const MatrixXf>& weights,
                                      const Eigen::Ref<const MatrixXf>& cross,
                                      const Eigen::Ref<const MatrixXf>& gram,
                                      const Eigen::Ref<const MatrixXf>& scales,
                                      const Constraints& constraints, const LayerOptions& opts,
                                      const RunContext& ctx) {
  const int64_t c = weights.rows(), k = weights.cols();
  GreedyResult result;
  result.order = ActOrder(gram, opts.act_order);
  const auto& order = result.order;
  const RowMatS<S> a = PermuteRowsCols<S>(cross, order);
  const RowMatS<S> b = PermuteRowsCols<S>(gram, order);
  VecS<S> inv_pivot(k);
  for (int64_t i = 0; i < k; ++i) {
    const bool dead = !(b(i, i) > S(0));
    result.dead_inputs += dead;
    inv_pivot(i) = dead ? S(0) : S(1) / b(i, i);  // dead input: X~_i = 0, code 0 is optimal
  }
  result.codes.resize(c, k);
  AXEQ_RETURN_IF_ERROR(SweepChannels<S>(
      order, b, opts, scales, constraints, ctx, &result.codes,
      [&](int64_t row0, int64_t rows) {
        MatS<S> w(rows, k);
        for (int64_t i = 0; i < k; ++i)
          w.col(i) = weights.block(row0, order[i], rows, 1).template cast<S>();
        // acc[:, i] = sum_{j<=i} A_ij W_j = (W tril(A)^T)[:, i]
        MatS<S> acc(rows, k);
        acc.noalias() = w * a.transpose().template triangularView<Eigen::Upper>();
        return acc;
      },
      [&](int64_t i, S x) { return x * inv_pivot(i); },
      [&](int64_t, S, S, int q, double s) { return static_cast<S>(q * s); }));
  return result;
}

}  // namespace internal

absl::StatusOr<GreedyResult> RunGpfq(const Eigen::Ref<const MatrixXf>& weights,
                                     const Eigen::Ref<const MatrixXf>& cross,
                                     const Eigen::Ref<const MatrixXf>& gram,
                                     const Eigen::Ref<const MatrixXf>& scales,
                                     const Constraints& constraints, const LayerOptions& opts,
                                     const RunContext& ctx) {
  if (opts.precision == Precision::kFloat64)
    return internal::GpfqImpl<double>(weights, cross, gram, scales, constraints, opts, ctx);
  return internal::GpfqImpl<float>(weights, cross, gram, scales, constraints, opts, ctx);
}

}  // namespace axeq
