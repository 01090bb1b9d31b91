// Tests of QuantizeLayer: validation errors, infeasible budgets, the baselines, bias correction,
// the statistics accumulator and the quality report against direct computation on samples.
#include "core/layer.h"

#include <random>

#include "core/bounds.h"
#include "core/test_util.h"
#include "core/thread_pool.h"
#include "gtest/gtest.h"

namespace axeq {
namespace {

using testing::MakeRandomLayer;
using testing::StatsOf;
using testing::TestSeed;

class LayerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::mt19937_64 rng(TestSeed(909));
    layer_ = MakeRandomLayer(rng, 12, 32, 128, InputSpec{});
    stats_ = StatsOf(layer_);
  }
  testing::RandomLayer layer_;
  LayerStats stats_;
};

TEST_F(LayerTest, RejectsBadInputWithPreciseErrors) {
  LayerOptions o;
  MatrixXf w = layer_.weights;
  w(2, 17) = std::nanf("");
  auto r = QuantizeLayer(w, nullptr, stats_, o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("row 2, col 17"), std::string::npos) << r.status();
  r = QuantizeLayer(layer_.weights.leftCols(31), nullptr, stats_, o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("[32, 32]"), std::string::npos) << r.status();
  EXPECT_EQ(QuantizeLayer(MatrixXf(0, 0), nullptr, stats_, o).status().code(),
            absl::StatusCode::kInvalidArgument);
  for (int bits : {1, 9, 0, -3}) {
    LayerOptions b = o;
    b.weights.bits = bits;
    r = QuantizeLayer(layer_.weights, nullptr, stats_, b);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("weight_bits"), std::string::npos);
  }
  LayerOptions b = o;
  b.inputs.bits = 17;
  EXPECT_EQ(QuantizeLayer(layer_.weights, nullptr, stats_, b).status().code(),
            absl::StatusCode::kInvalidArgument);
  b = o;
  b.accumulator.bits = 65;
  EXPECT_EQ(QuantizeLayer(layer_.weights, nullptr, stats_, b).status().code(),
            absl::StatusCode::kInvalidArgument);
  Eigen::VectorXf bias = Eigen::VectorXf::Zero(5);
  EXPECT_EQ(QuantizeLayer(layer_.weights, &bias, stats_, o).status().code(),
            absl::StatusCode::kInvalidArgument);
  LayerStats no_cross = stats_;
  no_cross.cross.resize(0, 0);
  b = o;
  b.algorithm = Algorithm::kGpfq;
  r = QuantizeLayer(layer_.weights, nullptr, no_cross, b);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("cross"), std::string::npos);
  LayerStats inf = stats_;
  inf.gram(3, 3) = INFINITY;
  EXPECT_EQ(QuantizeLayer(layer_.weights, nullptr, inf, o).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(LayerTest, InfeasibleBudgetIsFailedPrecondition) {
  LayerOptions o;
  o.accumulator.bits = 8;  // 8-bit unsigned inputs: 255 > 127
  auto r = QuantizeLayer(layer_.weights, nullptr, stats_, o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  o.method = Method::kNaive;
  o.accumulator.bits = 16;
  r = QuantizeLayer(layer_.weights, nullptr, stats_, o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(r.status().message().find("P* = "), std::string::npos) << r.status();
}

TEST_F(LayerTest, BaselinesAreCertifiedOrHonest) {
  LayerOptions o;
  o.accumulator.bits = 14;
  o.method = Method::kBase;
  auto base = QuantizeLayer(layer_.weights, nullptr, stats_, o);
  ASSERT_TRUE(base.ok());
  EXPECT_FALSE(base->certificate.safe);  // the unconstrained codes overflow 14 bits
  o.method = Method::kEpInit;
  auto ep = QuantizeLayer(layer_.weights, nullptr, stats_, o);
  ASSERT_TRUE(ep.ok());
  EXPECT_TRUE(ep->certificate.safe);
  o.method = Method::kAxe;
  auto axe = QuantizeLayer(layer_.weights, nullptr, stats_, o);
  ASSERT_TRUE(axe.ok());
  EXPECT_TRUE(axe->certificate.safe);
  EXPECT_LT(axe->report.relative_error, ep->report.relative_error);
  // Naive at bit widths whose P* fits: safe by construction.
  auto nb = NaiveBitWidths(32, 4, 8, false, 14);
  ASSERT_TRUE(nb.ok());
  o.method = Method::kNaive;
  o.weights.bits = nb->weight_bits;
  o.inputs.bits = nb->input_bits;
  auto naive = QuantizeLayer(layer_.weights, nullptr, stats_, o);
  ASSERT_TRUE(naive.ok()) << naive.status();
  EXPECT_TRUE(naive->certificate.safe);
}

TEST_F(LayerTest, StatsAccumulatorMatchesDirectProducts) {
  StatsAccumulator acc(32, true, true);
  ASSERT_TRUE(acc.Add(layer_.x.topRows(50), layer_.xq.topRows(50)).ok());
  ASSERT_TRUE(acc.Add(layer_.x.bottomRows(78), layer_.xq.bottomRows(78)).ok());
  auto s = acc.Finish();
  ASSERT_TRUE(s.ok());
  const Eigen::MatrixXd x = layer_.x.cast<double>(), xq = layer_.xq.cast<double>();
  const Eigen::MatrixXd gram = xq.transpose() * xq / 128.0;
  const Eigen::MatrixXd cross = xq.transpose() * x / 128.0;
  EXPECT_LT((s->gram.cast<double>() - gram).norm() / gram.norm(), 1e-6);
  EXPECT_LT((s->cross.cast<double>() - cross).norm() / cross.norm(), 1e-6);
  EXPECT_EQ(s->samples, 128);
  EXPECT_EQ(acc.Add(layer_.x.leftCols(3), layer_.xq.leftCols(3)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(StatsAccumulator(4, false, false).Finish().status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(LayerTest, StatsDoNotDependOnHowRowsAreChunked) {
  std::mt19937_64 rng(TestSeed(910));
  auto big = MakeRandomLayer(rng, 4, 24, 700, InputSpec{});
  StatsAccumulator whole(24, true, true);
  ASSERT_TRUE(whole.Add(big.x, big.xq).ok());
  const LayerStats a = *whole.Finish();
  for (int64_t chunk : {1, 37, 256, 300}) {
    StatsAccumulator acc(24, true, true);
    for (int64_t r = 0; r < 700; r += chunk) {
      const int64_t n = std::min<int64_t>(chunk, 700 - r);
      ASSERT_TRUE(acc.Add(big.x.middleRows(r, n), big.xq.middleRows(r, n)).ok());
    }
    const LayerStats b = *acc.Finish();
    EXPECT_EQ(a.gram, b.gram) << chunk;
    EXPECT_EQ(a.cross, b.cross) << chunk;
    EXPECT_EQ(a.xx, b.xx) << chunk;
    EXPECT_EQ(a.mean_xq, b.mean_xq) << chunk;
    EXPECT_EQ(b.samples, 700);
  }
}

TEST_F(LayerTest, StatsDoNotDependOnThreads) {
  // K = 300: three column chunks, spread over 1 or 3 pool threads; the same bits either way, and
  // the same as the serial products up to float summation order.
  std::mt19937_64 rng(TestSeed(911));
  auto big = MakeRandomLayer(rng, 4, 300, 600, InputSpec{});
  StatsAccumulator serial(300, true, true);
  ASSERT_TRUE(serial.Add(big.x, big.xq).ok());
  const LayerStats a = *serial.Finish();
  for (int threads : {1, 3}) {
    ThreadPool pool(threads);
    RunContext ctx;
    ctx.parallel_for = [&](int64_t n, const std::function<void(int64_t)>& f) {
      pool.ParallelFor(n, f);
    };
    StatsAccumulator acc(300, true, true, ctx);
    ASSERT_TRUE(acc.Add(big.x, big.xq).ok());
    const LayerStats b = *acc.Finish();
    EXPECT_EQ(a.gram, b.gram) << threads;
    EXPECT_EQ(a.cross, b.cross) << threads;
    EXPECT_EQ(a.xx, b.xx) << threads;
  }
  const Eigen::MatrixXd xq = big.xq.cast<double>();
  const Eigen::MatrixXd direct = xq.transpose() * xq / 600.0;
  EXPECT_LT((a.gram.cast<double>() - direct).cwiseAbs().maxCoeff() / direct.cwiseAbs().maxCoeff(),
            1e-6);
  EXPECT_TRUE(a.gram.isApprox(a.gram.transpose(), 0));  // exactly symmetric
}

TEST_F(LayerTest, ReportAndBiasCorrectionMatchSamples) {
  Eigen::VectorXf bias = Eigen::VectorXf::LinSpaced(12, -1, 1);
  LayerOptions o;
  o.accumulator.bits = 16;
  auto r = QuantizeLayer(layer_.weights, &bias, stats_, o);
  ASSERT_TRUE(r.ok()) << r.status();
  const Eigen::MatrixXd x = layer_.x.cast<double>(), xq = layer_.xq.cast<double>();
  const Eigen::MatrixXd w = layer_.weights.cast<double>();
  const Eigen::MatrixXd deq = Dequantize(r->codes, r->scales, 0).cast<double>();
  const double direct =
      (x * w.transpose() - xq * deq.transpose()).norm() / (x * w.transpose()).norm();
  EXPECT_NEAR(r->report.relative_error, direct, 1e-4 * direct);
  const double direct_q = (xq * (w - deq).transpose()).norm() / (xq * w.transpose()).norm();
  EXPECT_NEAR(r->report.relative_error_quantized_inputs, direct_q, 1e-4 * direct_q);
  // Bias correction makes the mean outputs agree: mean(x W^T + b) = mean(xq Q^T + b').
  ASSERT_TRUE(r->bias_corrected);
  const Eigen::VectorXd float_mean = w * x.colwise().mean().transpose() + bias.cast<double>();
  const Eigen::VectorXd quant_mean =
      deq * xq.colwise().mean().transpose() + r->bias->cast<double>();
  EXPECT_LT((float_mean - quant_mean).cwiseAbs().maxCoeff(), 1e-4);
  EXPECT_GE(r->report.sparsity, 0.0);
  LayerOptions fast = o;
  fast.quality_report = false;
  auto f = QuantizeLayer(layer_.weights, &bias, stats_, fast);
  ASSERT_TRUE(f.ok());
  EXPECT_TRUE(std::isnan(f->report.relative_error));
  EXPECT_EQ(f->codes, r->codes);
  EXPECT_EQ(f->report.sparsity, r->report.sparsity);
  EXPECT_LE(r->report.min_accumulator_bits, 16);
  EXPECT_EQ(r->report.max_abs_code, r->codes.cast<int>().cwiseAbs().maxCoeff());
}

TEST_F(LayerTest, EpInitProjectsOntoTheSafeBall) {
  MatrixXi8 q(1, 6);
  q << 7, 7, -7, -7, 3, 0;
  InputSpec in;
  in.bits = 4;  // nu = 15
  AccumulatorSpec acc;
  acc.bits = 9;  // 255 / 15 = 17 of L1
  ApplyEpInit(&q, in, acc);
  EXPECT_LE(q.cast<int>().cwiseAbs().sum(), 17);
  EXPECT_TRUE(MakeCertificate(q, 4, in, acc).safe);
}

}  // namespace
}  // namespace axeq
