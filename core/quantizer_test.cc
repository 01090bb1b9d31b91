// Tests of the weight and activation quantizers.
#include "core/quantizer.h"

#include <cmath>
#include <limits>
#include <random>

#include "gtest/gtest.h"

namespace axeq {
namespace {

TEST(WeightQuantizer, ScalesAndGrid) {
  MatrixXf w(2, 4);
  w << 0.875f, -0.4375f, 0.125f, 0.0f, 0, 0, 0, 0;  // scale 0.125, exact
  WeightQuantOptions o;
  o.bits = 4;
  MatrixXf s = WeightScales(w, o);
  EXPECT_FLOAT_EQ(s(0, 0), 0.125f);
  EXPECT_FLOAT_EQ(s(1, 0), 1.0f);  // all-zero channel: scale 1, codes 0
  MatrixXi8 q = RoundWeights(w, s, o, Rounding::kNearest);
  EXPECT_EQ(q(0, 0), 7);
  EXPECT_EQ(q(0, 1), -4);  // -3.5 rounds away from zero
  EXPECT_EQ(q(0, 2), 1);
  EXPECT_EQ(q.row(1).cwiseAbs().maxCoeff(), 0);
  MatrixXi8 z = RoundWeights(w, s, o, Rounding::kToZero);
  EXPECT_EQ(z(0, 1), -3);
  EXPECT_EQ(WeightCodeMin(o), -7);
  o.alphabet = WeightAlphabet::kFull;
  EXPECT_EQ(WeightCodeMin(o), -8);
}

TEST(WeightQuantizer, GroupsAndRequantizationIsIdempotent) {
  std::mt19937_64 rng(7);
  std::normal_distribution<float> n;
  MatrixXf w(5, 10);
  for (int r = 0; r < 5; ++r)
    for (int i = 0; i < 10; ++i) w(r, i) = n(rng);
  WeightQuantOptions o;
  o.bits = 3;
  o.group_size = 4;
  EXPECT_EQ(NumGroups(10, 4), 3);
  MatrixXf s = WeightScales(w, o);
  ASSERT_EQ(s.cols(), 3);
  MatrixXi8 q = RoundWeights(w, s, o, Rounding::kNearest);
  EXPECT_LE(q.cast<int>().cwiseAbs().maxCoeff(), 3);
  MatrixXf deq = Dequantize(q, s, 4);
  MatrixXi8 q2 = RoundWeights(deq, WeightScales(deq, o), o, Rounding::kNearest);
  EXPECT_EQ(q, q2);
}

TEST(ActivationQuantizer, UnsignedHoldsZeroAndPercentilesClip) {
  MatrixXf x(1, 6);
  x << -1.0f, 0.0f, 0.5f, 1.0f, 2.0f, 100.0f;
  InputSpec in;
  in.bits = 8;
  auto q = CalibrateActivations(x, in, {});
  ASSERT_TRUE(q.ok());
  EXPECT_NEAR(q->scale, 101.0f / 255.0f, 1e-6);
  MatrixXf xq = q->Apply(x);
  EXPECT_EQ(xq(0, 1), 0.0f);  // zero is exactly representable
  EXPECT_NEAR(xq(0, 5), 100.0f, q->scale);
  auto p = CalibrateActivations(x, in, {0.0, 80.0});  // 80th percentile = 2.0
  ASSERT_TRUE(p.ok());
  EXPECT_NEAR(p->Apply(x)(0, 5), 2.0f, p->scale);  // the outlier is clipped
  in.is_signed = true;
  auto s = CalibrateActivations(x, in, {});
  EXPECT_EQ(s->zero_point, 0);
  EXPECT_NEAR(s->scale, 100.0f / 127.0f, 1e-5);
}

TEST(ActivationQuantizer, RejectsBadInput) {
  MatrixXf x(2, 2);
  x << 1, std::nanf(""), 3, 4;
  auto q = CalibrateActivations(x, InputSpec{}, {});
  EXPECT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(q.status().message().find("row 0, col 1"), std::string::npos) << q.status();
  EXPECT_EQ(CalibrateActivations(MatrixXf(0, 3), InputSpec{}, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  x(0, 1) = 2;
  EXPECT_EQ(CalibrateActivations(x, InputSpec{}, {50, 40}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Finite, FirstNonFiniteAndCheckFinite) {
  std::vector<float> x(5000, 1.0f);
  EXPECT_EQ(FirstNonFinite(x.data(), 5000), -1);
  EXPECT_EQ(FirstNonFinite(x.data(), 0), -1);
  x[4321] = std::numeric_limits<float>::infinity();
  x[4999] = std::nanf("");
  EXPECT_EQ(FirstNonFinite(x.data(), 5000), 4321);
  x[17] = -std::numeric_limits<float>::infinity();
  EXPECT_EQ(FirstNonFinite(x.data(), 5000), 17);
  x[3] = std::numeric_limits<float>::max();  // finite
  x[2] = std::numeric_limits<float>::denorm_min();
  EXPECT_EQ(FirstNonFinite(x.data(), 17), -1);
  MatrixXf m = MatrixXf::Ones(3, 2000);
  EXPECT_TRUE(CheckFinite(m, "w").ok());
  m(1, 1500) = std::nanf("");
  m(2, 3) = std::numeric_limits<float>::infinity();
  m(2, 1999) = -std::numeric_limits<float>::infinity();
  auto s = CheckFinite(m, "w");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "w has 3 NaN/Inf values (first at row 1, col 1500)");
  EXPECT_EQ(CheckFinite(m.block(0, 1000, 3, 600), "b").message(), "b has 1 NaN/Inf values (first at row 1, col 500)");
}

}  // namespace
}  // namespace axeq
