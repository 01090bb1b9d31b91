// Accumulation of layer statistics from calibration rows (see stats.h).
#include "core/stats.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "core/greedy_kernel.h"
#include "core/status_macros.h"

namespace axeq {

StatsAccumulator::StatsAccumulator(int64_t k, bool keep_cross, bool keep_xx, RunContext ctx)
    : ctx_(std::move(ctx)), k_(k), keep_cross_(keep_cross), keep_xx_(keep_xx) {
  sum_x_ = Eigen::VectorXd::Zero(k);
  sum_xq_ = Eigen::VectorXd::Zero(k);
}

absl::Status StatsAccumulator::Add(const Eigen::Ref<const MatrixXf>& x,
                                   const Eigen::Ref<const MatrixXf>& xq) {
  if (x.cols() != k_ || xq.cols() != k_ || x.rows() != xq.rows()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "calibration rows must be [n, ", k_, "] for both inputs and quantized inputs, got [",
        x.rows(), ", ", x.cols(), "] and [", xq.rows(), ", ", xq.cols(), "]"));
  }
  AXEQ_RETURN_IF_ERROR(CheckFinite(x, "inputs"));
  AXEQ_RETURN_IF_ERROR(CheckFinite(xq, "quantized inputs"));
  for (int64_t r = 0; r < x.rows();) {
    if (pending_ == 0) {
      x_buf_.resize(kBlockRows, k_);
      xq_buf_.resize(kBlockRows, k_);
    }
    const int64_t n = std::min(kBlockRows - pending_, x.rows() - r);
    x_buf_.middleRows(pending_, n) = x.middleRows(r, n);
    xq_buf_.middleRows(pending_, n) = xq.middleRows(r, n);
    pending_ += n;
    r += n;
    if (pending_ == kBlockRows) Flush();
  }
  return absl::OkStatus();
}

namespace {

// Calls fn(j) for j in [0, n) through ctx.parallel_for, or serially.
template <typename Fn>
void ForEach(int64_t n, const RunContext& ctx, Fn&& fn) {
  if (ctx.parallel_for && n > 1)
    ctx.parallel_for(n, fn);
  else
    for (int64_t j = 0; j < n; ++j) fn(j);
}

// dst (+)= src in double: the first block assigns (no zero-fill pass over K x K doubles).
template <typename Dst, typename Src>
void Accumulate(Dst&& dst, const Src& src, bool first) {
  if (first)
    dst = src.template cast<double>();
  else
    dst += src.template cast<double>();
}

}  // namespace

void StatsAccumulator::Flush() {
  if (pending_ == 0) return;
  // Each block of kBlockRows rows is formed in float (GEMM speed) and summed across blocks in
  // double. Blocks are fixed, so the result does not depend on how rows were chunked by callers;
  // within a block, column chunks are fixed too (one task each), so it does not depend on threads.
  // Symmetric statistics are formed on and below the diagonal only (the lower trapezoid of each
  // column chunk: a symmetric rank-k update). Products land in one preallocated float scratch
  // (each task owns its columns), so no task allocates.
  const bool first = samples_ == 0;
  if (first) {
    gram_.resize(k_, k_);  // written before read: the first block assigns, lower triangle only
    if (keep_xx_) xx_.resize(k_, k_);
    if (keep_cross_) cross_.resize(k_, k_);
    scratch_.resize(k_, k_);
  }
  const auto x = x_buf_.topRows(pending_);
  const auto xq = xq_buf_.topRows(pending_);
  const int64_t chunks = (k_ + kBlockCols - 1) / kBlockCols;
  ForEach(chunks, ctx_, [&](int64_t j) {
    const int64_t c0 = j * kBlockCols, len = std::min(kBlockCols, k_ - c0), below = k_ - c0;
    auto t = scratch_.block(c0, c0, below, len);
    t.noalias() = xq.rightCols(below).transpose() * xq.middleCols(c0, len);
    Accumulate(gram_.block(c0, c0, below, len), t, first);
    if (keep_xx_) {
      t.noalias() = x.rightCols(below).transpose() * x.middleCols(c0, len);
      Accumulate(xx_.block(c0, c0, below, len), t, first);
    }
    if (keep_cross_) {
      auto u = scratch_.middleCols(c0, len);
      u.noalias() = xq.transpose() * x.middleCols(c0, len);
      Accumulate(cross_.middleCols(c0, len), u, first);
    }
  });
  sum_x_ += x.colwise().sum().transpose().cast<double>();
  sum_xq_ += xq.colwise().sum().transpose().cast<double>();
  samples_ += pending_;
  pending_ = 0;
}

namespace {

// Returns float(m(i, j) * inv) as a row-major float matrix. With `lower`, m holds its lower
// triangle only and the result is the symmetric matrix: rows of the result are streamed from
// columns of m (on and below the diagonal), then the strictly lower part is mirrored from the
// upper one. Without, a tiled transpose. Tiles of 64 x 64, spread over ctx.
MatrixXf NormalisedCopy(const Eigen::MatrixXd& m, double inv, bool lower, const RunContext& ctx) {
  const int64_t k = m.rows();
  constexpr int64_t kTile = 64;
  MatrixXf out(k, k);
  const int64_t tiles = (k + kTile - 1) / kTile;
  if (!lower) {
    ForEach(tiles, ctx, [&](int64_t ti) {  // rows [i0, i1) of out
      const int64_t i0 = ti * kTile, i1 = std::min(k, i0 + kTile);
      for (int64_t j0 = 0; j0 < k; j0 += kTile)
        for (int64_t i = i0; i < i1; ++i)
          for (int64_t j = j0; j < std::min(k, j0 + kTile); ++j)
            out(i, j) = static_cast<float>(m(i, j) * inv);
    });
    return out;
  }
  ForEach(tiles, ctx, [&](int64_t t) {
    for (int64_t j = t * kTile; j < std::min(k, (t + 1) * kTile); ++j) {
      const double* src = m.data() + j * k + j;  // m(j.., j)
      float* dst = out.data() + j * k + j;       // out(j, j..)
      for (int64_t i = 0; i < k - j; ++i) dst[i] = static_cast<float>(src[i] * inv);
    }
  });
  ForEach(tiles, ctx, [&](int64_t tj) {  // out(i, j) = out(j, i) for i > j
    const int64_t j0 = tj * kTile, j1 = std::min(k, j0 + kTile);
    for (int64_t i0 = j0; i0 < k; i0 += kTile)
      for (int64_t i = std::max(i0, j0 + 1); i < std::min(k, i0 + kTile); ++i)
        for (int64_t j = j0; j < std::min(j1, i); ++j) out(i, j) = out(j, i);
  });
  return out;
}

}  // namespace

absl::StatusOr<LayerStats> StatsAccumulator::Finish() {
  Flush();
  if (samples_ == 0) return absl::FailedPreconditionError("no calibration rows were added");
  const double inv = 1.0 / static_cast<double>(samples_);
  LayerStats s;
  s.samples = samples_;
  s.gram = NormalisedCopy(gram_, inv, true, ctx_);
  if (keep_xx_) s.xx = NormalisedCopy(xx_, inv, true, ctx_);
  if (keep_cross_) s.cross = NormalisedCopy(cross_, inv, false, ctx_);
  s.mean_x = (sum_x_ * inv).cast<float>();
  s.mean_xq = (sum_xq_ * inv).cast<float>();
  return s;
}

}  // namespace axeq
