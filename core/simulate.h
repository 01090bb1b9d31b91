// An integer datapath simulator: runs quantized layers on integer input codes with a P-bit
// accumulator that wraps (two's complement) or saturates, monolithic or tiled with an outer
// accumulator, and counts overflows and the output error against a wide (int64) accumulator. It
// shows what a certificate promises: no overflow for certified codes on any input, including the
// worst-case inputs of Eq. 6, and what uncertified codes suffer at the same P.
#ifndef AXEQ_CORE_SIMULATE_H_
#define AXEQ_CORE_SIMULATE_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "core/options.h"
#include "core/quantizer.h"

namespace axeq {

enum class OverflowMode { kWrap, kSaturate };

struct DatapathSpec {
  // P (P_I per tile), T in the original input order (0 = monolithic) and the register range:
  // two's complement [-2^(P-1), 2^(P-1)-1] (the simulator's default, as most hardware) or
  // symmetric.
  AccumulatorSpec accumulator{16, 0, /*twos_complement=*/true};
  int outer_bits = 0;  // P_O of the tile-sum register; 0 = wide (no outer overflow)
  OverflowMode mode = OverflowMode::kWrap;
};

struct SimulationStats {
  int64_t dot_products = 0;
  int64_t overflowing_dot_products = 0;  // at least one partial sum left the register's range
  int64_t overflow_events = 0;           // partial sums out of range (inner and outer)
  int64_t wrong_outputs = 0;             // final value differs from the wide accumulator
  int64_t max_abs_error = 0;             // in integer units
  double relative_error = 0;             // ||y - y_wide||_F / ||y_wide||_F over the integer outputs
};

using MatrixXi32 = Eigen::Matrix<int32_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Simulates codes [C, K] against input codes [D, K] (the integers the accumulator sees; zero-point
// correction and bias are outside it). Accumulation runs in input order, tile by tile.
// INVALID_ARGUMENT on mismatched shapes or bit widths out of [2, 62].
absl::StatusOr<SimulationStats> SimulateDatapath(const Eigen::Ref<const MatrixXi8>& codes,
                                                 const Eigen::Ref<const MatrixXi32>& inputs,
                                                 const DatapathSpec& spec);

using MatrixXi64 = Eigen::Matrix<int64_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// What the datapath outputs: the register value of every dot product [D, C] (wrapped or
// saturated exactly as the hardware would), and the overflow statistics of SimulateDatapath.
struct DatapathOutputs {
  MatrixXi64 outputs;
  SimulationStats stats;
};
absl::StatusOr<DatapathOutputs> RunDatapath(const Eigen::Ref<const MatrixXi8>& codes,
                                            const Eigen::Ref<const MatrixXi32>& inputs,
                                            const DatapathSpec& spec);

// The worst-case inputs of Eq. 6 for every channel: rows 2c and 2c+1 are the maximising and the
// minimising input vector of channel c, for input codes in [mu, nu]. [2C, K].
MatrixXi32 WorstCaseInputs(const Eigen::Ref<const MatrixXi8>& codes, const InputSpec& inputs);

// Simulates each channel only against its own two worst-case input vectors (Eq. 6).
absl::StatusOr<SimulationStats> SimulateWorstCase(const Eigen::Ref<const MatrixXi8>& codes,
                                                  const InputSpec& inputs,
                                                  const DatapathSpec& spec);

// Returns the integer input codes of float inputs under an activation quantizer (zero-point
// removed: code - zero_point is what a zero-point-free accumulator sees for signed inputs; for
// unsigned inputs the raw code in [0, 2^N - 1] is accumulated and the zero-point corrected
// outside).
MatrixXi32 InputCodes(const Eigen::Ref<const MatrixXf>& x, const ActivationQuantizer& q);

}  // namespace axeq

#endif  // AXEQ_CORE_SIMULATE_H_
