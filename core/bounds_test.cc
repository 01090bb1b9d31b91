// Tests of the exact accumulator bounds against brute force and the paper's formulas.
#include "core/bounds.h"

#include <cmath>

#include "gtest/gtest.h"

namespace axeq {
namespace {

TEST(DataTypeBound, MatchesEq3) {
  // W4A8, K = 768, unsigned: log2(768 * 2^11 + 1) = 20.58.. -> ceil + 1 = 22.
  EXPECT_EQ(DataTypeBoundBits(768, 4, 8, false), 22);
  EXPECT_EQ(DataTypeBoundBits(768, 4, 8, true), 21);
  for (int64_t k : {1, 7, 64, 172, 768, 4096, 14336})
    for (int m = 2; m <= 8; ++m)
      for (int n = 2; n <= 16; n += 3)
        for (bool s : {false, true}) {
          const double v = std::log2(std::ldexp(static_cast<double>(k), n + m - 1 - s) + 1.0) + 1.0;
          EXPECT_EQ(DataTypeBoundBits(k, m, n, s), static_cast<int>(std::ceil(v - 1e-12)))
              << k << " " << m << " " << n << " " << s;
        }
}

TEST(NaiveBitWidths, PicksLargestFittingPair) {
  auto nb = NaiveBitWidths(768, 4, 8, false, 20);
  ASSERT_TRUE(nb.ok());
  EXPECT_LE(DataTypeBoundBits(768, nb->weight_bits, nb->input_bits, false), 20);
  EXPECT_EQ(nb->weight_bits + nb->input_bits, 10);
  EXPECT_EQ(nb->weight_bits, 4);  // (4, 6) beats (3, 7) and (2, 8) on min(M, N)
  auto none = NaiveBitWidths(4096, 4, 8, false, 8);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kFailedPrecondition);
  auto full = NaiveBitWidths(768, 4, 8, false, 32);
  ASSERT_TRUE(full.ok());
  EXPECT_EQ(full->weight_bits, 4);
  EXPECT_EQ(full->input_bits, 8);
}

TEST(Accumulator, MinBitsAndOuter) {
  EXPECT_EQ(MinAccumulatorBits(0, 0, false), 1);
  EXPECT_EQ(MinAccumulatorBits(-1, 1, false), 2);
  EXPECT_EQ(MinAccumulatorBits(-2, 1, false), 3);
  EXPECT_EQ(MinAccumulatorBits(-2, 1, true), 2);
  EXPECT_EQ(MinAccumulatorBits(-32767, 32767, false), 16);
  EXPECT_EQ(MinAccumulatorBits(-32768, 0, false), 17);
  EXPECT_EQ(MinAccumulatorBits(-32768, 0, true), 16);
  EXPECT_EQ(OuterAccumulatorBits(AccumulatorSpec{16, 128}, 4096), 21);
  EXPECT_EQ(OuterAccumulatorBits(AccumulatorSpec{16, 100}, 4096), 22);  // ceil(16 + 5.356)
  EXPECT_EQ(OuterAccumulatorBits(AccumulatorSpec{16, 0}, 4096), 16);
  EXPECT_EQ(OuterAccumulatorBits(AccumulatorSpec{16, 64}, 64), 16);
  EXPECT_EQ(OuterAccumulatorBits(AccumulatorSpec{16, 43}, 172), 18);
  EXPECT_DOUBLE_EQ(L1Radius(16, 8), (65536.0 - 2) / 255.0);
}

// The greedy budget equals a brute-force search of the largest admissible next code.
TEST(AccumulatorBudget, MatchesBruteForce) {
  for (bool is_signed : {false, true})
    for (int n : {2, 3, 4})
      for (int p : {4, 6, 8})
        for (bool twos : {false, true}) {
          InputSpec in;
          in.bits = n;
          in.is_signed = is_signed;
          AccumulatorSpec acc;
          acc.bits = p;
          acc.twos_complement = twos;
          AccumulatorBudget b(in, acc);
          const int64_t mu = in.min_code(), nu = in.max_code();
          const int64_t pos = (1 << (p - 1)) - 1, neg = pos + twos;
          auto ok = [&](int64_t beta, int64_t a) {
            return nu * beta + (-mu) * a <= pos && (-mu) * beta + nu * a <= neg;
          };
          for (int64_t beta = 0; beta < 12; ++beta)
            for (int64_t a = 0; a < 12; ++a) {
              if (!ok(beta, a)) continue;
              int64_t up = 0, down = 0;
              while (ok(beta + up + 1, a)) ++up;
              while (ok(beta, a + down + 1)) ++down;
              EXPECT_EQ(b.MaxPositive(beta, a), up) << beta << " " << a;
              EXPECT_EQ(b.MaxNegative(beta, a), down) << beta << " " << a;
            }
        }
}

TEST(AccumulatorBudget, Feasibility) {
  InputSpec in;  // 8-bit unsigned: nu = 255
  AccumulatorSpec acc;
  acc.bits = 8;  // max 127 < 255: no nonzero code fits
  EXPECT_FALSE(AccumulatorBudget(in, acc).Feasible());
  acc.bits = 9;  // 255 fits once
  EXPECT_TRUE(AccumulatorBudget(in, acc).Feasible());
}

}  // namespace
}  // namespace axeq
