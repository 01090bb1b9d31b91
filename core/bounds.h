// Accumulator bounds of the AXE paper in exact integer arithmetic: the data-type bound P* (Eq. 3),
// the naive bit-width choice it implies, the L1 radius Z (Eq. 4), the greedy per-code limits that
// keep the worst-case dot product inside a P-bit register for unsigned or signed inputs (Eq. 6-8,
// 16-20), the outer accumulator of multi-stage accumulation (Eq. 21) and the smallest register
// that holds a given [lo, hi] range.
#ifndef AXEQ_CORE_BOUNDS_H_
#define AXEQ_CORE_BOUNDS_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "core/options.h"

namespace axeq {

// Returns P* of Eq. 3 for a K-deep dot product of M-bit weights and N-bit inputs.
int DataTypeBoundBits(int64_t k, int weight_bits, int input_bits, bool signed_inputs);

struct BitWidths {
  int weight_bits;
  int input_bits;
};
// Returns the naive bit-width manipulation baseline: the (M', N') with M' <= M, N' <= N and
// P*(K, M', N') <= P that maximises M' + N', then min(M', N'), then N'. FAILED_PRECONDITION when
// not even M' = N' = 2 fits.
absl::StatusOr<BitWidths> NaiveBitWidths(int64_t k, int weight_bits, int input_bits,
                                         bool signed_inputs, int accumulator_bits);

// Returns Z = (2^P - 2) / (2^N - 1), the L1 radius of Eq. 4 used for the soft threshold.
double L1Radius(int accumulator_bits, int input_bits);

// Largest value a P-bit register holds (2^(P-1) - 1), and the magnitude of its most negative value
// (the same, or 2^(P-1) with two's complement). P is capped at 62 internally: no sum of M <= 8 bit
// codes and N <= 16 bit inputs comes near that.
int64_t AccumulatorMax(int bits);
int64_t AccumulatorMinMagnitude(int bits, bool twos_complement);

// Returns the smallest P such that [lo, hi] fits a P-bit register (lo <= 0 <= hi).
int MinAccumulatorBits(int64_t lo, int64_t hi, bool twos_complement);

// Returns P_O of Eq. 21, ceil(P_I + log2(K) - log2(T)), exactly, for P_I = acc.bits and
// T = acc.EffectiveTile(K); P_I when monolithic.
int OuterAccumulatorBits(const AccumulatorSpec& acc, int64_t k);

// The exact greedy budget of one (channel, tile): with beta = sum of positive codes and
// a = |sum of negative codes| chosen so far, the worst-case sums are
//   hi  = nu*beta + |mu|*a  <= 2^(P-1) - 1      (Eq. 7 with the maximising input of Eq. 6)
//   -lo = |mu|*beta + nu*a  <= 2^(P-1) - 1 (or 2^(P-1) in two's complement)   (Eq. 8)
// MaxPositive/MaxNegative return how far the next code may go without breaking either; they are
// the integer form of Eq. 18-20 (B - beta_i, with the rounding slack max|Delta| folded in exactly
// because the limits are integers and rounding an in-range value cannot leave an integer range).
class AccumulatorBudget {
 public:
  AccumulatorBudget(const InputSpec& inputs, const AccumulatorSpec& acc);
  int64_t MaxPositive(int64_t beta, int64_t a) const;
  int64_t MaxNegative(int64_t beta, int64_t a) const;  // a magnitude, >= 0
  // True if the budget lets any nonzero code through at all.
  bool Feasible() const { return MaxPositive(0, 0) >= 1 || MaxNegative(0, 0) >= 1; }
  int64_t nu() const { return nu_; }
  int64_t mu_magnitude() const { return m_; }

 private:
  int64_t pos_limit_, neg_limit_, nu_, m_;
  double inv_nu_, inv_m_;
};

}  // namespace axeq

#endif  // AXEQ_CORE_BOUNDS_H_
