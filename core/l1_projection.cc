// Sort-based L1-ball projection threshold (Duchi et al. 2008) and AXE's per-tile lambdas.
#include "core/l1_projection.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

namespace axeq {

double L1ProjectionThreshold(absl::Span<const double> v, double radius) {
  std::vector<double> mag(v.size());
  double total = 0;
  for (size_t i = 0; i < v.size(); ++i) total += (mag[i] = std::abs(v[i]));
  if (total <= radius) return 0.0;
  std::sort(mag.begin(), mag.end(), std::greater<double>());
  // rho = max{j : mag_j - (sum_{i<=j} mag_i - radius) / j > 0}; lambda = (sum_{i<=rho} - radius)/rho
  double cumsum = 0, lambda = 0;
  for (size_t j = 0; j < mag.size(); ++j) {
    cumsum += mag[j];
    const double t = (cumsum - radius) / static_cast<double>(j + 1);
    if (j == 0 || mag[j] - t > 0) lambda = t;  // rho >= 1
    else break;
  }
  return std::max(lambda, 0.0);
}

MatrixXd SoftThresholds(const Eigen::Ref<const MatrixXf>& weights,
                        const Eigen::Ref<const MatrixXf>& scales, int group_size, int64_t tile_size,
                        double radius) {
  const int64_t c = weights.rows(), k = weights.cols();
  const int64_t t = (tile_size <= 0 || tile_size > k) ? k : tile_size;
  const int64_t tiles = (k + t - 1) / t;
  const int64_t g = scales.cols() == 1 ? k : group_size;
  MatrixXd lambdas(c, tiles);
  std::vector<double> row;
  for (int64_t r = 0; r < c; ++r) {
    for (int64_t j = 0; j < tiles; ++j) {
      const int64_t begin = j * t, len = std::min(t, k - begin);
      row.resize(len);
      double mean = 0;
      for (int64_t i = 0; i < len; ++i) {
        row[i] = static_cast<double>(weights(r, begin + i)) / scales(r, (begin + i) / g);
        mean += row[i];
      }
      mean /= static_cast<double>(len);
      for (double& x : row) x -= mean;
      lambdas(r, j) = L1ProjectionThreshold(row, radius);
    }
  }
  return lambdas;
}

}  // namespace axeq
