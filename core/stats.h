// Second-order statistics of a layer's calibration inputs (X~^T X~, X~^T X, X^T X, means) and
// their accumulation from rows in fixed blocks, so rows are never kept and the result does not
// depend on how the caller chunks them or how many threads run.
#ifndef AXEQ_CORE_STATS_H_
#define AXEQ_CORE_STATS_H_

#include <cstdint>
#include <memory>

#include "Eigen/Core"
#include "absl/status/statusor.h"
#include "core/algorithms.h"
#include "core/context.h"
#include "core/quantizer.h"

namespace axeq {

// Second-order statistics of the calibration inputs, normalised by the number of samples D.
// X are the float model's inputs, X~ the quantized model's (both [D, K]).
struct LayerStats {
  int64_t samples = 0;
  MatrixXf gram;   // X~^T X~ / D  [K, K]; required (OPTQ's H is 2x this)
  MatrixXf cross;  // X~^T X / D   [K, K]; required for GPFQ and for the relative error
  MatrixXf xx;     // X^T X / D    [K, K]; optional, gives the relative error
  Eigen::VectorXf mean_x, mean_xq;  // optional [K]; give bias correction
  // Optional: OPTQ's factor of `gram`, computed ahead (PrepareOptq); used when it matches.
  std::shared_ptr<const OptqFactor> optq_factor;
};

// Accumulates LayerStats from chunks of rows: each fixed block of kBlockRows rows is multiplied in
// float32 (symmetric rank-k updates, one triangle, for X~^T X~ and X^T X; X~^T X in full) and the
// block products are summed across blocks in double, so rows are not kept and the result does not
// depend on how the caller chunks them (bit-identical embedded and over the wire) nor on the thread
// count. Which matrices it keeps is chosen up front. Memory: the kept K x K doubles, one K x K
// float scratch and two kBlockRows x K row buffers.
class StatsAccumulator {
 public:
  // ctx.parallel_for (optional) spreads each block's products over fixed column chunks, so the
  // statistics are the same bits for any thread count.
  StatsAccumulator(int64_t k, bool keep_cross, bool keep_xx, RunContext ctx = {});
  // Adds rows x and xq [n, K] (xq may equal x in content). INVALID_ARGUMENT on shape or NaN/Inf.
  absl::Status Add(const Eigen::Ref<const MatrixXf>& x, const Eigen::Ref<const MatrixXf>& xq);
  int64_t samples() const { return samples_ + pending_; }
  // Returns the normalised statistics. FAILED_PRECONDITION when no rows were added.
  absl::StatusOr<LayerStats> Finish();
  // Rows per internal block; only this many rows are ever buffered.
  static constexpr int64_t kBlockRows = 256;
  // Columns of the statistics per parallel task.
  static constexpr int64_t kBlockCols = 128;

 private:
  void Flush();
  RunContext ctx_;
  int64_t k_, samples_ = 0, pending_ = 0;
  MatrixXf x_buf_, xq_buf_;
  bool keep_cross_, keep_xx_;
  // Allocated by the first block: lower triangles of X~^T X~ and X^T X; X~^T X in full.
  Eigen::MatrixXd gram_, xx_, cross_;
  Eigen::MatrixXf scratch_;  // [K, K] float block products, columns owned per task
  Eigen::VectorXd sum_x_, sum_xq_;
};

}  // namespace axeq

#endif  // AXEQ_CORE_STATS_H_
