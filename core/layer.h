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
#include "core/quantized_layer.h"
#include "core/quantizer.h"
#include "core/stats.h"

namespace axeq {

// Returns options with the naive method's bit widths resolved for a K-deep layer: the (M', N') of
// NaiveBitWidths with P* <= P replace M and N (the method stays kNaive, so QuantizeLayer runs the
// base algorithm). Other methods are returned unchanged. INVALID_ARGUMENT from Validate();
// FAILED_PRECONDITION when no bit widths fit P. Call it before calibrating the activations: X~
// must be made at the resolved N.
absl::StatusOr<LayerOptions> ResolveOptions(const LayerOptions& options, int64_t k);

// Quantizes weights [C, K] (and bias [C] if given) with `options`. Errors:
//  INVALID_ARGUMENT   empty or mismatched shapes, NaN/Inf, options out of range, missing stats;
//  FAILED_PRECONDITION an accumulator budget that admits no nonzero code, naive bit widths that
//                      do not fit P (see ResolveOptions), a Hessian that stays indefinite after
//                      max damping;
//  CANCELLED          ctx.should_stop fired (checked once per block).
// Deterministic: same inputs and options give bit-identical results for any thread count.
// The result's name, activation scale/zero point and timing are the caller's to fill; its
// activations.spec, group size, certificate, report and run info are set here.
absl::StatusOr<QuantizedLayer> QuantizeLayer(const Eigen::Ref<const MatrixXf>& weights,
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
