// Sort-based L1-ball projection threshold (Duchi et al. 2008) and AXE's per-tile lambdas.
#include "core/l1_projection.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "core/greedy_kernel.h"

namespace axeq {

double L1ProjectionThreshold(absl::Span<const double> v, double radius) {
  std::vector<double> mag;
  mag.reserve(v.size());
  double total = 0;
  for (double x : v) total += std::abs(x);
  if (total <= radius) return 0.0;
  // lambda >= (sum_{kept} - radius) / |kept| for any superset of the support (Michelot 1986), so
  // entries at or below that bound cannot be in the support: drop them. The passes (repeated while
  // they drop anything) end on the support itself, where the bound is lambda; the sort (Duchi et
  // al.) only backs up a pass limit that is not reached in practice.
  double bound = (total - radius) / static_cast<double>(v.size());
  for (double x : v)
    if (std::abs(x) > bound) mag.push_back(std::abs(x));
  for (int pass = 0; pass < 64; ++pass) {  // Michelot's passes; stop when nothing is dropped
    double kept = 0;
    for (double m : mag) kept += m;
    bound = std::max(bound, (kept - radius) / static_cast<double>(mag.size()));
    const size_t before = mag.size();
    mag.erase(std::remove_if(mag.begin(), mag.end(), [&](double m) { return m <= bound; }),
              mag.end());
    if (mag.empty()) return bound;
    // Nothing dropped: the kept entries are the support (all > lambda = (sum - radius) / count),
    // so bound is the exact threshold (Michelot 1986; Condat 2016) and no sort is needed.
    if (mag.size() == before) return std::max(bound, 0.0);
  }
  std::sort(mag.begin(), mag.end(), std::greater<double>());
  // rho = max{j : mag_j - (sum_{i<=j} mag_i - radius) / j > 0}; lambda = (sum_{i<=rho} -
  // radius)/rho
  double cumsum = 0, lambda = 0;
  for (size_t j = 0; j < mag.size(); ++j) {
    cumsum += mag[j];
    const double t = (cumsum - radius) / static_cast<double>(j + 1);
    if (j == 0 || mag[j] - t > 0)
      lambda = t;  // rho >= 1
    else
      break;
  }
  return std::max(lambda, 0.0);
}

MatrixXd SoftThresholds(const Eigen::Ref<const MatrixXf>& weights,
                        const Eigen::Ref<const MatrixXf>& scales, int group_size, int64_t tile_size,
                        double radius, const RunContext& ctx) {
  const int64_t c = weights.rows(), k = weights.cols();
  const int64_t t = AccumulatorSpec{0, static_cast<int>(tile_size)}.EffectiveTile(k);
  const int64_t tiles = (k + t - 1) / t;
  const int64_t g = scales.cols() == 1 ? k : group_size;
  MatrixXd lambdas(c, tiles);
  (void)internal::RunChunked(c, ctx, [&](int64_t row0, int64_t rows) -> absl::Status {
    std::vector<double> row;
    for (int64_t r = row0; r < row0 + rows; ++r) {
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
    return absl::OkStatus();
  });
  return lambdas;
}

}  // namespace axeq
