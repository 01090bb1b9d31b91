// Tests of the weight and activation quantizers.
#include "core/quantizer.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/test_util.h"
#include "gtest/gtest.h"

namespace axeq {
namespace {

using testing::HeavyTailed;

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
  auto q = CalibrateActivations(x, in, ActivationRange::kMinMax);
  ASSERT_TRUE(q.ok());
  EXPECT_NEAR(q->scale, 101.0f / 255.0f, 1e-6);
  MatrixXf xq = q->Apply(x);
  EXPECT_EQ(xq(0, 1), 0.0f);  // zero is exactly representable
  EXPECT_NEAR(xq(0, 5), 100.0f, q->scale);
  auto p = CalibrateActivations(x, in, {0.0, 80.0});  // 80th percentile = 2.0
  ASSERT_TRUE(p.ok());
  EXPECT_NEAR(p->Apply(x)(0, 5), 2.0f, p->scale);  // the outlier is clipped
  in.is_signed = true;
  auto s = CalibrateActivations(x, in, ActivationRange::kMinMax);
  EXPECT_EQ(s->zero_point, 0);
  EXPECT_NEAR(s->scale, 100.0f / 127.0f, 1e-5);
}

double InputMse(const MatrixXf& x, const ActivationQuantizer& q) {
  return (x - q.Apply(x)).cast<double>().squaredNorm() / static_cast<double>(x.size());
}

// The search as the header specifies it, written plainly through Apply(): the argmin over the 100
// multipliers of the min/max range and the percentile range, first on ties.
ActivationQuantizer MseSearchTwin(const MatrixXf& x, const InputSpec& in) {
  const double lo = x.minCoeff(), hi = x.maxCoeff();
  std::vector<ActivationQuantizer> cand;
  for (int i = 0; i < 100; ++i) {
    const double a = i == 99 ? 1.0 : 0.3 + i * (0.7 / 99);
    cand.push_back(QuantizerForRange(a * lo, a * hi, in));
  }
  cand.push_back(*CalibrateActivations(x, in, ActivationRange::kPercentile));
  size_t best = 0;
  for (size_t i = 1; i < cand.size(); ++i)
    if (InputMse(x, cand[i]) < InputMse(x, cand[best])) best = i;
  return cand[best];
}

TEST(ActivationRangeSearch, NeverWorseThanMinMaxOrPercentileAndEqualsItsTwin) {
  const uint64_t seed = testing::TestSeed(31);
  int clipped = 0;
  for (bool tail : {false, true})
    for (bool is_signed : {false, true})
      for (int bits : {4, 8}) {
        MatrixXf x = HeavyTailed(768, 256, seed + bits + 2 * is_signed, tail);
        if (!is_signed) x = x.cwiseMax(-0.17f);  // a GELU-like floor: unsigned inputs are skewed
        InputSpec in;
        in.bits = bits;
        in.is_signed = is_signed;
        auto mse = CalibrateActivations(x, in, {});  // the default is the search
        auto mm = CalibrateActivations(x, in, ActivationRange::kMinMax);
        auto pct = CalibrateActivations(x, in, ActivationRange::kPercentile);
        ASSERT_TRUE(mse.ok() && mm.ok() && pct.ok());
        const std::string what = absl::StrCat("tail=", tail, " signed=", is_signed, " N=", bits);
        EXPECT_LE(InputMse(x, *mse), InputMse(x, *mm)) << what;
        EXPECT_LE(InputMse(x, *mse), InputMse(x, *pct)) << what;
        clipped += mse->scale < mm->scale;
        const ActivationQuantizer twin = MseSearchTwin(x, in);
        EXPECT_EQ(mse->scale, twin.scale) << what;
        EXPECT_EQ(mse->zero_point, twin.zero_point) << what;
        // Deterministic: the same bits again.
        auto again = CalibrateActivations(x, in, {});
        EXPECT_EQ(again->scale, mse->scale);
        EXPECT_EQ(again->zero_point, mse->zero_point);
      }
  EXPECT_GT(clipped, 0) << "heavy tails: the search should clip the min/max range somewhere";
}

// ||(x - q(x)) W^T||^2 over all rows, in double: the output error kOutput minimizes, written
// plainly.
double OutputErr(const MatrixXf& x, const MatrixXf& w, const ActivationQuantizer& q) {
  return ((x - q.Apply(x)).cast<double>() * w.cast<double>().transpose()).squaredNorm();
}

TEST(ActivationRangeSearch, OutputErrorNeverWorseThanTheOtherRulesAndNearTheExhaustiveBest) {
  const uint64_t seed = testing::TestSeed(37);
  std::mt19937_64 rng(seed);
  int differs_from_mse = 0;
  for (bool is_signed : {false, true})
    for (int64_t c : {96, 384}) {  // C < K (direct) and C > K (through W^T W)
      const int64_t k = 192;
      MatrixXf x = HeavyTailed(k, 300, seed + c + is_signed, true);
      if (!is_signed) x = x.cwiseMax(-0.17f);
      MatrixXf w = MatrixXf::Random(c, k);
      for (int j = 0; j < 6; ++j) w.col(rng() % k) *= 8.0f;  // channels the output weighs heavily
      InputSpec in;
      in.is_signed = is_signed;
      auto out = CalibrateActivations(x, in, ActivationRange::kOutput, &w);
      ASSERT_TRUE(out.ok()) << out.status();
      const double e = OutputErr(x, w, *out);
      const std::string what = absl::StrCat("signed=", is_signed, " C=", c);
      double exhaustive = std::numeric_limits<double>::infinity();
      for (ActivationRange m :
           {ActivationRange::kMinMax, ActivationRange::kPercentile, ActivationRange::kMse}) {
        auto q = CalibrateActivations(x, in, m);
        ASSERT_TRUE(q.ok());
        EXPECT_LE(e, OutputErr(x, w, *q) * (1 + 1e-6)) << what << " vs " << ActivationRangeName(m);
        if (m == ActivationRange::kMse) differs_from_mse += q->scale != out->scale;
      }
      const double lo = x.minCoeff(), hi = x.maxCoeff();
      for (int i = 0; i < 100; ++i) {
        const double a = i == 99 ? 1.0 : 0.3 + i * (0.7 / 99);
        exhaustive = std::min(exhaustive, OutputErr(x, w, QuantizerForRange(a * lo, a * hi, in)));
      }
      EXPECT_LE(e, exhaustive * 1.01) << what << ": the shortlist missed the grid's best by > 1%";
      auto again = CalibrateActivations(x, in, ActivationRange::kOutput, &w);
      EXPECT_EQ(again->scale, out->scale);
      EXPECT_EQ(again->zero_point, out->zero_point);
    }
  EXPECT_GT(differs_from_mse, 0) << "weighted channels should move the choice away from input MSE";
}

TEST(ActivationRangeSearch, OutputErrorNeedsWeightsOfTheRightWidth) {
  const MatrixXf x = HeavyTailed(16, 32, 3, true);
  EXPECT_EQ(CalibrateActivations(x, InputSpec{}, ActivationRange::kOutput).status().code(),
            absl::StatusCode::kInvalidArgument);
  const MatrixXf narrow = MatrixXf::Ones(4, 15);
  auto bad = CalibrateActivations(x, InputSpec{}, ActivationRange::kAuto, &narrow);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("K = 16"), std::string::npos) << bad.status();
  MatrixXf nan = MatrixXf::Ones(4, 16);
  nan(1, 2) = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(CalibrateActivations(x, InputSpec{}, ActivationRange::kOutput, &nan).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ActivationRangeSearch, AutoCandidatesAreOutputThenDistinctMinMaxAndPercentile) {
  const MatrixXf x = HeavyTailed(64, 128, 9, true);
  const MatrixXf w = MatrixXf::Random(32, 64);
  auto c = ActivationCandidates(x, InputSpec{}, ActivationRange::kAuto, &w);
  ASSERT_TRUE(c.ok()) << c.status();
  auto out = CalibrateActivations(x, InputSpec{}, ActivationRange::kOutput, &w);
  ASSERT_EQ(c->size(), 3u) << "heavy tails: output, min/max and percentile ranges all differ";
  EXPECT_EQ((*c)[0].scale, out->scale);
  for (size_t i = 0; i < c->size(); ++i)
    for (size_t j = 0; j < i; ++j)
      EXPECT_FALSE((*c)[i].scale == (*c)[j].scale && (*c)[i].zero_point == (*c)[j].zero_point);
  // Percentiles equal to min/max (0 and 100): one fewer candidate.
  ActivationCalibration cal(ActivationRange::kAuto);
  cal.low_percentile = 0, cal.high_percentile = 100;
  auto fewer = ActivationCandidates(x, InputSpec{}, cal, &w);
  ASSERT_TRUE(fewer.ok());
  EXPECT_EQ(fewer->size(), 2u);
  EXPECT_EQ(ActivationCandidates(x, InputSpec{}, ActivationRange::kMinMax, nullptr)->size(), 1u);
}

TEST(ActivationRangeSearch, LargeInputsAreScoredOnAFixedStrideSubsample) {
  // 1,100 x 1,000 values > kMseMaxValues: errors are scored on every 2nd value. Deterministic, and
  // (half a million values estimate the error well) still better than min/max on all values.
  const MatrixXf x = HeavyTailed(1000, 1100, 5, true);
  ASSERT_GT(x.size(), kMseMaxValues);
  auto a = CalibrateActivations(x, InputSpec{}, {});
  auto b = CalibrateActivations(x, InputSpec{}, {});
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->scale, b->scale);
  EXPECT_EQ(a->zero_point, b->zero_point);
  auto mm = CalibrateActivations(x, InputSpec{}, ActivationRange::kMinMax);
  EXPECT_LE(InputMse(x, *a), InputMse(x, *mm));
}

TEST(ActivationRangeSearch, PercentilesInterpolateLikeNumpy) {
  MatrixXf x(1, 5);
  x << 4, 0, 3, 1, 2;  // sorted 0 1 2 3 4: p-th percentile = 4 p / 100
  ActivationCalibration cal(10.0, 62.5);
  InputSpec in;
  in.is_signed = true;
  in.bits = 8;
  auto q = CalibrateActivations(x, in, cal);  // range [0.4, 2.5] -> symmetric m = 2.5
  ASSERT_TRUE(q.ok());
  EXPECT_FLOAT_EQ(q->scale, 2.5f / 127.0f);
  EXPECT_EQ(cal.method, ActivationRange::kPercentile);
  EXPECT_EQ(ActivationCalibration{}.method, ActivationRange::kMse);
  EXPECT_STREQ(ActivationRangeName(ActivationRange::kMse), "mse");
}

TEST(RoundCode, EqualsStdRoundAndTruncBitForBit) {
  std::mt19937_64 rng(testing::TestSeed(5));
  std::uniform_real_distribution<double> u(-300, 300);
  int64_t bad = 0;
  auto check = [&](double x) {
    const double a = RoundCode(x, Rounding::kNearest), b = std::round(x);
    const double c = RoundCode(x, Rounding::kToZero), d = std::trunc(x);
    bad += std::memcmp(&a, &b, sizeof a) != 0 || std::memcmp(&c, &d, sizeof c) != 0;
  };
  for (double x : {0.5, -0.5, 1.5, -2.5, 0.49999999999999994, -0.0, 4503599627370495.5, 1e300})
    check(x);
  for (int i = 0; i < 200000; ++i) {
    check(u(rng));
    const double tie = std::ldexp(static_cast<double>(static_cast<int64_t>(rng() % 601) - 300), -1);
    check(tie);
    check(std::nextafter(tie, 0.0));
    check(std::nextafter(tie, tie * 2));
  }
  EXPECT_EQ(bad, 0);
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
  EXPECT_EQ(CheckFinite(m.block(0, 1000, 3, 600), "b").message(),
            "b has 1 NaN/Inf values (first at row 1, col 500)");
}

}  // namespace
}  // namespace axeq
