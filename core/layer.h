// The engine's entry point: quantize one linear layer y = x W^T + b from its calibration
// statistics with OPTQ or GPFQ, with or without AXE (or a baseline), and return integer codes,
// scales, the corrected bias, a quality report and an overflow certificate. Memory O(K^2 + KC).
#ifndef AXEQ_CORE_LAYER_H_
#define AXEQ_CORE_LAYER_H_

#include <cstdint>
#include <limits>
#include <optional>
#include <string>

#include "Eigen/Core"
#include "absl/status/statusor.h"
#include "core/algorithms.h"
#include "core/certificate.h"
#include "core/context.h"
#include "core/options.h"
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

// Accumulates LayerStats from chunks of rows in double precision (symmetric rank-k updates, one
// triangle) over fixed blocks of rows, so that rows are not kept and the result does not depend
// on how the caller chunks them (bit-identical embedded and over the wire). Which matrices it keeps is chosen up front.
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
  Eigen::MatrixXd gram_, cross_, xx_;
  Eigen::VectorXd sum_x_, sum_xq_;
};

struct QualityReport {
  // ||X W^T - X~ Q~^T||_F / ||X W^T||_F with Q~ the dequantized weights; NaN without xx & cross.
  double relative_error = std::numeric_limits<double>::quiet_NaN();
  // ||X~ W^T - X~ Q~^T||_F / ||X~ W^T||_F (gram only; the OPTQ objective).
  double relative_error_quantized_inputs = std::numeric_limits<double>::quiet_NaN();
  double sparsity = 0;          // fraction of zero codes
  int max_abs_code = 0;
  double mean_l1 = 0;           // mean over channels of ||q_c||_1
  int64_t max_l1 = 0;           // max over channels of ||q_c||_1
  int min_accumulator_bits = 0; // smallest P (P_I when tiled) the codes need (certificate)
  int min_outer_accumulator_bits = 0;
};

struct LayerResult {
  MatrixXi8 codes;   // [C, K]
  MatrixXf scales;   // [C, groups]
  std::optional<Eigen::VectorXf> bias;  // corrected (or passed-through) bias
  bool bias_corrected = false;
  Certificate certificate;
  QualityReport report;
  // What actually ran (naive resolves bit widths; EP-init and AXE name their form).
  int weight_bits = 0;
  int input_bits = 0;
  std::string description;
  double damping = 0;
  int damping_retries = 0;
  int64_t dead_inputs = 0;
};

// Quantizes weights [C, K] (and bias [C] if given) with `options`. Errors:
//  INVALID_ARGUMENT   empty or mismatched shapes, NaN/Inf, options out of range, missing stats;
//  FAILED_PRECONDITION an accumulator budget that admits no nonzero code, naive bit widths that
//                      do not fit P, a Hessian that stays indefinite after max damping;
//  CANCELLED          ctx.should_stop fired (checked once per block).
// Deterministic: same inputs and options give bit-identical results for any thread count.
absl::StatusOr<LayerResult> QuantizeLayer(const Eigen::Ref<const MatrixXf>& weights,
                                          const Eigen::VectorXf* bias, const LayerStats& stats,
                                          const LayerOptions& options,
                                          const RunContext& ctx = {});

// Checks shapes and finiteness of weights, bias and stats against options (INVALID_ARGUMENT).
absl::Status ValidateLayer(const Eigen::Ref<const MatrixXf>& weights, const Eigen::VectorXf* bias,
                           const LayerStats& stats, const LayerOptions& options);

// Computes the quality report of dequantized weights against float weights from the statistics.
QualityReport MakeQualityReport(const Eigen::Ref<const MatrixXf>& weights,
                                const Eigen::Ref<const MatrixXi8>& codes,
                                const Eigen::Ref<const MatrixXf>& scales, int group_size,
                                const LayerStats& stats, const Certificate& cert,
                                const RunContext& ctx = {});

// Applies EP-init (Appendix C) to codes in place: each (channel, tile) is projected onto the L1
// ball of radius min(2^(P-1)-1, neg. limit) / max(nu, |mu|) and rounded toward zero. Without
// zero-centering that radius is what guarantees Eq. 7-8 for any sign pattern.
void ApplyEpInit(MatrixXi8* codes, const InputSpec& inputs, const AccumulatorSpec& acc);

}  // namespace axeq

#endif  // AXEQ_CORE_LAYER_H_
