// Euclidean projection onto the L1 ball (Eq. 14-15; Duchi et al. 2008, sort-based, O(K log K)) and
// the per-(channel, tile) soft thresholds lambda that AXE derives from it before quantization.
#ifndef AXEQ_CORE_L1_PROJECTION_H_
#define AXEQ_CORE_L1_PROJECTION_H_

#include <cstdint>

#include "absl/types/span.h"
#include "core/context.h"
#include "core/quantizer.h"

namespace axeq {

// Returns lambda such that sign(v) * max(|v| - lambda, 0) is the Euclidean projection of v onto
// {x : ||x||_1 <= radius} (Eq. 15); 0 when v is already inside. radius >= 0.
double L1ProjectionThreshold(absl::Span<const double> v, double radius);

// Returns the soft thresholds in code units, shape [C, tiles], for weights [C, K] and their
// scales: each (channel, tile) row of w/s is mean-centred and lambda is the threshold of the
// projection of that row onto the L1 ball of radius `radius` (as Brevitas v0.12.0 does).
// tile_size 0 means one tile per channel. Runs channel chunks through ctx.parallel_for.
MatrixXd SoftThresholds(const Eigen::Ref<const MatrixXf>& weights,
                        const Eigen::Ref<const MatrixXf>& scales, int group_size, int64_t tile_size,
                        double radius, const RunContext& ctx = {});

}  // namespace axeq

#endif  // AXEQ_CORE_L1_PROJECTION_H_
