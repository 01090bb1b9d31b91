// Exact integer forms of the paper's accumulator bounds (Eq. 3, 4, 6-8, 16-21).
#include "core/bounds.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace axeq {
namespace {

// Smallest b >= 0 with 2^b >= v (v >= 1).
int CeilLog2(int64_t v) {
  int b = 0;
  while (b < 62 && (int64_t{1} << b) < v) ++b;
  return b;
}

}  // namespace

int DataTypeBoundBits(int64_t k, int weight_bits, int input_bits, bool signed_inputs) {
  // 2^(log2 K + N + M - 1 - s) = K * 2^(N + M - 1 - s); P* = ceil(log2(that + 1)) + 1.
  const int e = input_bits + weight_bits - 1 - (signed_inputs ? 1 : 0);
  const long double v = static_cast<long double>(k) * std::ldexp(1.0L, e) + 1.0L;
  int b = 0;
  while (std::ldexp(1.0L, b) < v) ++b;
  return b + 1;
}

absl::StatusOr<BitWidths> NaiveBitWidths(int64_t k, int weight_bits, int input_bits,
                                         bool signed_inputs, int accumulator_bits) {
  bool found = false;
  BitWidths best{0, 0};
  auto better = [](BitWidths a, BitWidths b) {  // is a better than b
    if (a.weight_bits + a.input_bits != b.weight_bits + b.input_bits)
      return a.weight_bits + a.input_bits > b.weight_bits + b.input_bits;
    if (std::min(a.weight_bits, a.input_bits) != std::min(b.weight_bits, b.input_bits))
      return std::min(a.weight_bits, a.input_bits) > std::min(b.weight_bits, b.input_bits);
    return a.input_bits > b.input_bits;
  };
  for (int m = 2; m <= weight_bits; ++m) {
    for (int n = 2; n <= input_bits; ++n) {
      if (DataTypeBoundBits(k, m, n, signed_inputs) > accumulator_bits) continue;
      BitWidths c{m, n};
      if (!found || better(c, best)) best = c;
      found = true;
    }
  }
  if (!found) {
    return absl::FailedPreconditionError(absl::StrCat(
        "naive bit-width manipulation cannot reach a ", accumulator_bits,
        "-bit accumulator for K = ", k,
        ": even W2A2 needs P* = ", DataTypeBoundBits(k, 2, 2, signed_inputs), " bits"));
  }
  return best;
}

double L1Radius(int accumulator_bits, int input_bits) {
  return (std::ldexp(1.0, accumulator_bits) - 2.0) / (std::ldexp(1.0, input_bits) - 1.0);
}

int64_t AccumulatorMax(int bits) { return (int64_t{1} << (std::min(bits, 62) - 1)) - 1; }

int64_t AccumulatorMinMagnitude(int bits, bool twos_complement) {
  return AccumulatorMax(bits) + (twos_complement ? 1 : 0);
}

int MinAccumulatorBits(int64_t lo, int64_t hi, bool twos_complement) {
  for (int p = 1; p < 62; ++p) {
    const int64_t pos = (int64_t{1} << (p - 1)) - 1;
    const int64_t neg = pos + (twos_complement ? 1 : 0);
    if (hi <= pos && -lo <= neg) return p;
  }
  return 62;
}

int OuterAccumulatorBits(const AccumulatorSpec& acc, int64_t k) {
  const int64_t t = acc.EffectiveTile(k);
  // ceil(P_I + log2(K/T)) = P_I + smallest e with T * 2^e >= K.
  int e = 0;
  while ((t << e) < k) ++e;
  return acc.bits + e;
}

AccumulatorBudget::AccumulatorBudget(const InputSpec& inputs, const AccumulatorSpec& acc)
    : pos_limit_(AccumulatorMax(acc.bits)),
      neg_limit_(AccumulatorMinMagnitude(acc.bits, acc.twos_complement)),
      nu_(inputs.max_code()),
      m_(-inputs.min_code()),
      inv_nu_(1.0 / static_cast<double>(nu_)),
      inv_m_(m_ > 0 ? 1.0 / static_cast<double>(m_) : 0.0) {}

namespace {
// floor(x / d) for d > 0 without an integer division on the hot path: a double estimate corrected
// to the exact integer (|x| < 2^62, so the estimate is off by at most one).
inline int64_t FloorDiv(int64_t x, int64_t d, double inv_d) {
  int64_t q = static_cast<int64_t>(std::floor(static_cast<double>(x) * inv_d));
  while (q * d > x) --q;
  while ((q + 1) * d <= x) ++q;
  return q;
}
}  // namespace

int64_t AccumulatorBudget::MaxPositive(int64_t beta, int64_t a) const {
  // nu*(beta + t) + m*a <= pos  and  m*(beta + t) + nu*a <= neg.
  int64_t r = FloorDiv(pos_limit_ - m_ * a, nu_, inv_nu_) - beta;
  if (m_ > 0) r = std::min(r, FloorDiv(neg_limit_ - nu_ * a, m_, inv_m_) - beta);
  return std::max<int64_t>(r, 0);
}

int64_t AccumulatorBudget::MaxNegative(int64_t beta, int64_t a) const {
  // nu*beta + m*(a + t) <= pos  and  m*beta + nu*(a + t) <= neg.
  int64_t r = FloorDiv(neg_limit_ - m_ * beta, nu_, inv_nu_) - a;
  if (m_ > 0) r = std::min(r, FloorDiv(pos_limit_ - nu_ * beta, m_, inv_m_) - a);
  return std::max<int64_t>(r, 0);
}

}  // namespace axeq
