// The greedy layer quantizers: OPTQ (Algorithm 2) and GPFQ in Gram form (DESIGN.md; equivalent to
// Algorithm 1), each with optional AXE constraints (soft L1 threshold, exact greedy hard clip, per
// channel or per tile of T inputs in the original input order), lazy-batch blocks and act-order.
// Plus their reference twins: unblocked OPTQ and sample-based GPFQ (Algorithm 1 as written).
#ifndef AXEQ_CORE_ALGORITHMS_H_
#define AXEQ_CORE_ALGORITHMS_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "core/context.h"
#include "core/options.h"
#include "core/quantizer.h"

namespace axeq {

// What the AXE constraints of a run are (both empty for the base algorithm).
struct Constraints {
  bool hard_clip = false;  // the greedy accumulator-aware clip (Eq. 17-20)
  MatrixXd lambdas;        // soft thresholds [C, tiles] in code units; empty = none
};

struct GreedyResult {
  MatrixXi8 codes;             // [C, K]
  double damping = 0;          // eta actually used (absolute), OPTQ only
  int damping_retries = 0;     // how often Cholesky failed and eta grew x10
  int64_t dead_inputs = 0;     // inputs whose quantized calibration values are all zero
  std::vector<int64_t> order;  // the column order used (act-order permutation)
};

// OPTQ's input-only preparation: the column order, dead inputs and the upper Cholesky factor of
// H^-1 (2/3 K^3 flops). It depends on the Gram matrix and options only, so a server can compute it
// while the weights are still arriving. Made by PrepareOptq; RunOptq uses it when it matches.
struct OptqFactor {
  std::vector<int64_t> order;
  std::vector<char> dead;
  int64_t dead_inputs = 0;
  double damping = 0;
  int damping_retries = 0;
  Precision precision = Precision::kFloat32;
  bool act_order = true;
  double damping_fraction = 0.01;
  int max_damping_retries = 6;
  // The factor U (upper triangle; the strictly lower one is zero), column-major, in the precision
  // that ran.
  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic> u32;
  Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic> u64;
  bool Matches(const LayerOptions& o, int64_t k) const {
    return precision == o.precision && act_order == o.act_order && damping_fraction == o.damping &&
           max_damping_retries == o.max_damping_retries && static_cast<int64_t>(order.size()) == k;
  }
};

// Computes OPTQ's factor from gram = X~^T X~ / D. FAILED_PRECONDITION as RunOptq.
absl::StatusOr<std::shared_ptr<const OptqFactor>> PrepareOptq(
    const Eigen::Ref<const MatrixXf>& gram, const LayerOptions& opts, const RunContext& ctx);

// Returns the act-order permutation: inputs by descending diag(gram), ties by index.
std::vector<int64_t> ActOrder(const Eigen::Ref<const MatrixXf>& gram, bool act_order);

// Quantizes weights [C, K] with OPTQ given gram = X~^T X~ / D [K, K]. Errors: FAILED_PRECONDITION
// when H stays indefinite after max_damping_retries, CANCELLED when ctx.should_stop fires.
// Deterministic for a given precision; independent of the number of threads.
// `prepared` (optional) is used when it Matches the options; results are identical either way.
absl::StatusOr<GreedyResult> RunOptq(const Eigen::Ref<const MatrixXf>& weights,
                                     const Eigen::Ref<const MatrixXf>& gram,
                                     const Eigen::Ref<const MatrixXf>& scales,
                                     const Constraints& constraints, const LayerOptions& opts,
                                     const RunContext& ctx, const OptqFactor* prepared = nullptr);

// Quantizes weights with GPFQ from cross = X~^T X / D and gram = X~^T X~ / D (both [K, K]):
//   v_i = (sum_{j<=i} A_ij W_j - sum_{j<i} B_ij Q_j) / B_ii   (Algorithm 1, line 6, expanded).
absl::StatusOr<GreedyResult> RunGpfq(const Eigen::Ref<const MatrixXf>& weights,
                                     const Eigen::Ref<const MatrixXf>& cross,
                                     const Eigen::Ref<const MatrixXf>& gram,
                                     const Eigen::Ref<const MatrixXf>& scales,
                                     const Constraints& constraints, const LayerOptions& opts,
                                     const RunContext& ctx);

// Reference twin of RunOptq: double precision, one column at a time, explicit H^-1.
absl::StatusOr<GreedyResult> OptqReference(const Eigen::Ref<const MatrixXf>& weights,
                                           const Eigen::Ref<const MatrixXf>& gram,
                                           const Eigen::Ref<const MatrixXf>& scales,
                                           const Constraints& constraints,
                                           const LayerOptions& opts);

// Reference twin of RunGpfq: Algorithm 1 on the samples x, xq [D, K] with the error state
// U [D, C], in double precision.
absl::StatusOr<GreedyResult> GpfqReference(const Eigen::Ref<const MatrixXf>& weights,
                                           const Eigen::Ref<const MatrixXf>& x,
                                           const Eigen::Ref<const MatrixXf>& xq,
                                           const Eigen::Ref<const MatrixXf>& scales,
                                           const Constraints& constraints,
                                           const LayerOptions& opts);

}  // namespace axeq

#endif  // AXEQ_CORE_ALGORITHMS_H_
