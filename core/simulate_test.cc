// The simulator finds no overflow on certified codes (calibration-like and worst-case inputs,
// wrapping and saturating) and finds them on codes that exceed their P; register arithmetic is
// checked against hand-computed cases.
#include "core/simulate.h"

#include <random>

#include "core/layer.h"
#include "core/test_util.h"
#include "gtest/gtest.h"

namespace axeq {
namespace {

TEST(Simulate, WrapAndSaturateByHand) {
  MatrixXi8 q(1, 3);
  q << 100, 100, -100;
  MatrixXi32 x(1, 3);
  x << 1, 1, 1;  // partial sums 100, 200, 100
  DatapathSpec spec;
  spec.accumulator.bits = 8;  // [-128, 127]
  auto wrap = SimulateDatapath(q, x, spec);
  ASSERT_TRUE(wrap.ok());
  EXPECT_EQ(wrap->overflow_events, 2);  // 200 wraps to -56; -56 - 100 = -156 wraps back
  EXPECT_EQ(wrap->wrong_outputs, 0);    // wrapping is exact when the final sum fits
  spec.mode = OverflowMode::kSaturate;
  auto sat = SimulateDatapath(q, x, spec);
  ASSERT_TRUE(sat.ok());
  EXPECT_EQ(sat->wrong_outputs, 1);  // 127 - 100 = 27 != 100
  EXPECT_EQ(sat->max_abs_error, 73);
  spec.accumulator.bits = 9;
  auto ok = SimulateDatapath(q, x, spec);
  EXPECT_EQ(ok->overflow_events, 0);
  EXPECT_EQ(SimulateDatapath(q, MatrixXi32(1, 2), spec).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Simulate, CertifiedCodesNeverOverflowUncertifiedDo) {
  std::mt19937_64 rng(testing::TestSeed(1301));
  for (bool is_signed : {false, true})
    for (int tile : {0, 16}) {
      InputSpec in;
      in.is_signed = is_signed;
      auto layer = testing::MakeRandomLayer(rng, 24, 64, 200, in);
      LayerOptions o;
      o.inputs = in;
      const int p = tile ? 11 : 14;
      o.accumulator.bits = p;
      o.accumulator.tile_size = tile;
      auto axe = QuantizeLayer(layer.weights, nullptr, testing::StatsOf(layer), o);
      o.method = Method::kBase;
      auto base = QuantizeLayer(layer.weights, nullptr, testing::StatsOf(layer), o);
      ASSERT_TRUE(axe.ok() && base.ok());
      ASSERT_TRUE(axe->certificate.safe);
      ASSERT_FALSE(base->certificate.safe);
      DatapathSpec spec;
      spec.accumulator.bits = p;
      spec.accumulator.tile_size = tile;
      spec.outer_bits = axe->certificate.outer_accumulator_bits;
      spec.accumulator.twos_complement = false;
      const MatrixXi32 xcodes = InputCodes(layer.x, layer.act);
      for (auto mode : {OverflowMode::kWrap, OverflowMode::kSaturate}) {
        spec.mode = mode;
        auto a = SimulateDatapath(axe->codes, xcodes, spec);
        auto aw = SimulateWorstCase(axe->codes, in, spec);
        ASSERT_TRUE(a.ok() && aw.ok());
        EXPECT_EQ(a->overflow_events, 0);
        EXPECT_EQ(a->wrong_outputs, 0);
        EXPECT_EQ(aw->overflow_events, 0);
        auto bw = SimulateWorstCase(base->codes, in, spec);
        ASSERT_TRUE(bw.ok());
        EXPECT_GT(bw->overflow_events, 0);  // the certificate said unsafe: the worst case overflows
        EXPECT_GT(bw->wrong_outputs, 0);
      }
    }
}

}  // namespace
}  // namespace axeq
