// Tests of the L1-ball projection threshold against bisection on the definition.
#include "core/l1_projection.h"

#include <cmath>
#include <random>

#include "gtest/gtest.h"

namespace axeq {
namespace {

double L1After(const std::vector<double>& v, double lam) {
  double s = 0;
  for (double x : v) s += std::max(std::abs(x) - lam, 0.0);
  return s;
}

TEST(L1Projection, ThresholdPutsVectorOnTheSphere) {
  std::mt19937_64 rng(11);
  std::normal_distribution<double> n;
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<double> v(1 + trial % 37);
    for (double& x : v) x = 3 * n(rng);
    const double radius = std::abs(n(rng)) * v.size();
    const double lam = L1ProjectionThreshold(v, radius);
    double total = 0;
    for (double x : v) total += std::abs(x);
    if (total <= radius) {
      EXPECT_EQ(lam, 0.0);
    } else {
      EXPECT_GT(lam, 0.0);
      EXPECT_NEAR(L1After(v, lam), radius, 1e-9 * (1 + radius));
      // Bisection on the monotone map lam -> ||soft(v, lam)||_1 agrees.
      double lo = 0, hi = 100;
      for (int it = 0; it < 200; ++it) {
        const double mid = (lo + hi) / 2;
        (L1After(v, mid) > radius ? lo : hi) = mid;
      }
      EXPECT_NEAR(lam, lo, 1e-9);
    }
  }
}

TEST(L1Projection, ZeroRadiusThresholdsEverything) {
  std::vector<double> v{1, -2, 3};
  EXPECT_DOUBLE_EQ(L1ProjectionThreshold(v, 0), 3.0);
}

TEST(SoftThresholds, PerTileAndMeanCentred) {
  MatrixXf w(1, 4);
  w << 1, 1, 1, 1;  // mean-centred row is 0: always inside the ball
  MatrixXf s = MatrixXf::Ones(1, 1);
  EXPECT_EQ(SoftThresholds(w, s, 0, 0, 0.5)(0, 0), 0.0);
  w << 4, -4, 2, -2;
  MatrixXd l = SoftThresholds(w, s, 0, 2, 2.0);
  ASSERT_EQ(l.cols(), 2);
  EXPECT_DOUBLE_EQ(l(0, 0), 3.0);  // |4|,|4| onto radius 2 -> threshold 3
  EXPECT_DOUBLE_EQ(l(0, 1), 1.0);
}

}  // namespace
}  // namespace axeq
