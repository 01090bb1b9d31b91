// Tests of StatsAccumulator: bit-identical statistics for any thread count and any chunking of the
// rows (fixed row blocks and column chunks), and float32 block products summed in double within
// the classical error bound of a float dot product against a float64 reference.
#include "core/stats.h"

#include <cmath>
#include <random>

#include "core/test_util.h"
#include "core/thread_pool.h"
#include "gtest/gtest.h"

namespace axeq {
namespace {

// Heavy-tailed rows [d, k] with a dead (all-zero) column 5 and a constant column 7.
MatrixXf Rows(int64_t d, int64_t k, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::student_t_distribution<float> t(3.0f);
  std::normal_distribution<float> n;
  Eigen::VectorXf s(k);
  for (int64_t i = 0; i < k; ++i) s(i) = std::exp(n(rng));
  MatrixXf x(d, k);
  for (int64_t r = 0; r < d; ++r)
    for (int64_t i = 0; i < k; ++i) x(r, i) = s(i) * t(rng);
  x.col(5).setZero();
  x.col(7).setConstant(-0.75f);
  return x;
}

RunContext PoolContext(ThreadPool* pool) {
  RunContext ctx;
  if (pool)
    ctx.parallel_for = [pool](int64_t n, const std::function<void(int64_t)>& f) {
      pool->ParallelFor(n, f);
    };
  return ctx;
}

LayerStats Accumulate(const MatrixXf& x, const MatrixXf& xq, int64_t chunk, const RunContext& ctx) {
  StatsAccumulator acc(x.cols(), true, true, ctx);
  for (int64_t r = 0; r < x.rows(); r += chunk) {
    const int64_t n = std::min(chunk, x.rows() - r);
    EXPECT_TRUE(acc.Add(x.middleRows(r, n), xq.middleRows(r, n)).ok());
  }
  auto s = acc.Finish();
  EXPECT_TRUE(s.ok()) << s.status();
  return *s;
}

TEST(Stats, BitIdenticalForAnyThreadCountAndChunking) {
  const uint64_t seed = testing::TestSeed(71);
  // K = 260: three column chunks (the last one partial); D = 2100: three row blocks (one partial).
  const int64_t d = 2100;
  static_assert(StatsAccumulator::kBlockRows * 2 < 2100 && StatsAccumulator::kBlockCols * 2 < 260);
  const MatrixXf x = Rows(d, 260, seed);
  const MatrixXf xq = (x * 0.5f).array().round() * 2.0f;
  const LayerStats a = Accumulate(x, xq, d, {});
  ThreadPool one(1), two(2), three(3);
  int compared = 0;
  for (ThreadPool* pool : {&one, &two, &three})
    for (int64_t chunk : {1, 37, 1024, 1500, 2100}) {
      const LayerStats b = Accumulate(x, xq, chunk, PoolContext(pool));
      EXPECT_EQ(a.gram, b.gram) << pool->size() << " threads, chunk " << chunk;
      EXPECT_EQ(a.cross, b.cross) << pool->size() << " threads, chunk " << chunk;
      EXPECT_EQ(a.xx, b.xx) << pool->size() << " threads, chunk " << chunk;
      EXPECT_EQ(a.mean_x, b.mean_x);
      EXPECT_EQ(a.mean_xq, b.mean_xq);
      EXPECT_EQ(b.samples, d);
      ++compared;
    }
  EXPECT_EQ(compared, 15);
}

// |float dot product of n terms - exact| <= gamma_n sum |a_i b_i|, gamma_n = n u / (1 - n u) with
// u = 2^-24 (Higham, Accuracy and Stability, Sec. 3.1); the block sums are added in double (far
// below that) and the result is rounded to float once more (u |value|).
TEST(Stats, Float32BlocksWithinTheDotProductErrorBound) {
  const MatrixXf x = Rows(600, 200, testing::TestSeed(72));
  const MatrixXf xq = x.array().round();
  ThreadPool pool(2);
  const LayerStats s = Accumulate(x, xq, 600, PoolContext(&pool));
  const Eigen::MatrixXd xd = x.cast<double>(), xqd = xq.cast<double>();
  const double u = std::ldexp(1.0, -24), n = StatsAccumulator::kBlockRows;
  const double gamma = n * u / (1 - n * u);
  auto check = [&](const MatrixXf& got, const Eigen::MatrixXd& a, const Eigen::MatrixXd& b,
                   const char* what) {
    const Eigen::MatrixXd exact = a.transpose() * b / 600.0;
    const Eigen::MatrixXd mag = a.cwiseAbs().transpose() * b.cwiseAbs() / 600.0;
    int64_t over = 0;
    double worst = 0;
    for (int64_t i = 0; i < exact.rows(); ++i)
      for (int64_t j = 0; j < exact.cols(); ++j) {
        const double err = std::abs(got(i, j) - exact(i, j));
        const double bound = gamma * mag(i, j) + u * std::abs(exact(i, j)) + 1e-300;
        over += err > bound;
        worst = std::max(worst, err / bound);
      }
    EXPECT_EQ(over, 0) << what << ": worst error / bound " << worst;
    EXPECT_EQ(got, got.transpose()) << what;  // symmetric ones are; cross is not in general
  };
  check(s.gram, xqd, xqd, "gram");
  check(s.xx, xd, xd, "xx");
  const Eigen::MatrixXd cross_exact = xqd.transpose() * xd / 600.0;
  const Eigen::MatrixXd cross_mag = xqd.cwiseAbs().transpose() * xd.cwiseAbs() / 600.0;
  int64_t over = 0;
  for (int64_t i = 0; i < 200; ++i)
    for (int64_t j = 0; j < 200; ++j)
      over += std::abs(s.cross(i, j) - cross_exact(i, j)) >
              gamma * cross_mag(i, j) + u * std::abs(cross_exact(i, j)) + 1e-300;
  EXPECT_EQ(over, 0);
  // The dead input gives exact zeros, in both the row and the column.
  EXPECT_EQ(s.gram.row(5).cwiseAbs().maxCoeff(), 0.0f);
  EXPECT_EQ(s.cross.col(5).cwiseAbs().maxCoeff(), 0.0f);
  EXPECT_EQ(s.cross.row(5).cwiseAbs().maxCoeff(), 0.0f);
}

TEST(Stats, RejectsBadRowsAndEmptyFinish) {
  StatsAccumulator acc(8, true, false);
  EXPECT_EQ(acc.Finish().status().code(), absl::StatusCode::kFailedPrecondition);
  MatrixXf x = MatrixXf::Ones(3, 8);
  EXPECT_EQ(acc.Add(x, x.leftCols(7)).code(), absl::StatusCode::kInvalidArgument);
  x(1, 2) = std::nanf("");
  EXPECT_EQ(acc.Add(x, x).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace axeq
