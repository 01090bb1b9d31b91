// Internal: the pieces OPTQ and GPFQ share. CodeChooser picks one integer code with AXE's soft
// threshold and exact greedy hard clip; BlockedSweep runs the lazy-batch column sweep that both
// algorithms reduce to (acc[:, j] -= delta * coupling[i, j] for j > i, deferred per block so the
// bulk of the work is one GEMM per block); RunChunked splits output channels into fixed chunks.
#ifndef AXEQ_CORE_GREEDY_KERNEL_H_
#define AXEQ_CORE_GREEDY_KERNEL_H_

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <vector>

#include "Eigen/Core"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/algorithms.h"
#include "core/bounds.h"
#include "core/context.h"
#include "core/status_macros.h"

namespace axeq::internal {

template <typename S>
using MatS = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;
template <typename S>
using VecS = Eigen::Matrix<S, Eigen::Dynamic, 1>;

// Output channels per chunk. Fixed, so that results do not depend on the thread count.
inline constexpr int64_t kRowChunk = 128;

// Chooses codes for one chunk of output channels [row0, row0 + rows).
class CodeChooser {
 public:
  CodeChooser(const LayerOptions& opts, const Eigen::Ref<const MatrixXf>& scales,
              const Constraints& constraints, int64_t k, int64_t row0, int64_t rows)
      : scales_(scales),
        lambdas_(constraints.lambdas.size() ? &constraints.lambdas : nullptr),
        budget_(opts.inputs, opts.accumulator),
        hard_(constraints.hard_clip),
        rounding_(opts.rounding),
        qmin_(WeightCodeMin(opts.weights)),
        qmax_(WeightCodeMax(opts.weights)),
        group_(scales.cols() == 1 ? k : opts.weights.group_size),
        tile_(opts.accumulator.EffectiveTile(k)),
        row0_(row0) {
    const int64_t tiles = (k + tile_ - 1) / tile_;
    if (hard_) {
      beta_.assign(rows * tiles, 0);
      neg_.assign(rows * tiles, 0);
      max_pos_.assign(rows * tiles, budget_.MaxPositive(0, 0));
      max_neg_.assign(rows * tiles, budget_.MaxNegative(0, 0));
    }
    tiles_ = tiles;
  }

  // Selects the column (original input index o) the next Choose calls are for.
  void SetColumn(int64_t o) {
    g_ = o / group_;
    t_ = o / tile_;
  }

  // Returns the code for row r (chunk-local) of the current column, given the algorithm's value in
  // float units; *constrained receives the value after threshold and clip (float units) and
  // *scale the scale of the code. Non-finite values count as breakdowns and give code 0.
  template <typename S>
  int Choose(int64_t r, S value, S* constrained, double* scale) {
    const double s = scales_(row0_ + r, g_);
    *scale = s;
    double u = static_cast<double>(value) / s;
    if (!std::isfinite(u)) {
      ++breakdowns_;
      *constrained = S(0);
      return 0;
    }
    if (lambdas_) {
      const double lam = (*lambdas_)(row0_ + r, t_);
      u = std::copysign(std::max(std::abs(u) - lam, 0.0), u);
    }
    const int64_t slot = r * tiles_ + t_;
    if (hard_) {  // the budget of this (channel, tile), cached between nonzero codes
      u = std::clamp(u, -static_cast<double>(max_neg_[slot]), static_cast<double>(max_pos_[slot]));
    }
    const int q =
        static_cast<int>(std::clamp(RoundCode(u, rounding_), double(qmin_), double(qmax_)));
    if (hard_ && q != 0) {
      if (q > 0)
        beta_[slot] += q;
      else
        neg_[slot] -= q;
      max_pos_[slot] = budget_.MaxPositive(beta_[slot], neg_[slot]);
      max_neg_[slot] = budget_.MaxNegative(beta_[slot], neg_[slot]);
    }
    *constrained = static_cast<S>(u * s);
    return q;
  }

  int64_t breakdowns() const { return breakdowns_; }

 private:
  Eigen::Ref<const MatrixXf> scales_;
  const MatrixXd* lambdas_;
  AccumulatorBudget budget_;
  bool hard_;
  Rounding rounding_;
  int qmin_, qmax_;
  int64_t group_, tile_, row0_, tiles_ = 1, g_ = 0, t_ = 0;
  std::vector<int64_t> beta_, neg_, max_pos_, max_neg_;
  int64_t breakdowns_ = 0;
};

// Runs the lazy-batch sweep over the K columns of acc (chunk rows x K, permuted order).
// step(i, delta) chooses the codes of column i from acc.col(i) and writes the per-row update
// coefficients into delta; the sweep then applies acc[:, j] -= delta * coupling(i, j), j > i,
// inside the block at once and to the rest of the matrix as one GEMM per block.
template <typename S, typename Coupling, typename Step>
absl::Status BlockedSweep(MatS<S>& acc, const Coupling& coupling, int64_t block,
                          const RunContext& ctx, std::atomic<int64_t>* done, int64_t total,
                          Step&& step) {
  const int64_t k = acc.cols(), rows = acc.rows();
  MatS<S> delta(rows, block);
  for (int64_t b0 = 0; b0 < k; b0 += block) {
    if (ctx.should_stop && ctx.should_stop()) return absl::CancelledError("quantization cancelled");
    const int64_t b1 = std::min(k, b0 + block), w = b1 - b0;
    // Two levels inside the block: rank-1 updates only within sub-blocks of kSub columns, and one
    // small GEMM per sub-block for the rest of the block (the rank-1 part is latency-bound).
    constexpr int64_t kSub = 16;
    for (int64_t s0 = b0; s0 < b1; s0 += kSub) {
      const int64_t s1 = std::min(b1, s0 + kSub);
      for (int64_t i = s0; i < s1; ++i) {
        auto d = delta.col(i - b0);
        step(i, d);
        if (i + 1 < s1) {
          acc.middleCols(i + 1, s1 - i - 1).noalias() -=
              d * coupling.row(i).segment(i + 1, s1 - i - 1);
        }
      }
      if (s1 < b1) {
        acc.middleCols(s1, b1 - s1).noalias() -=
            delta.middleCols(s0 - b0, s1 - s0) * coupling.block(s0, s1, s1 - s0, b1 - s1);
      }
    }
    if (b1 < k) {
      acc.rightCols(k - b1).noalias() -= delta.leftCols(w) * coupling.block(b0, b1, w, k - b1);
    }
    if (done) {
      const int64_t now = done->fetch_add(w) + w;
      if (ctx.progress) ctx.progress(now, total);
    }
  }
  return absl::OkStatus();
}

template <typename Fn>
absl::Status RunChunked(int64_t c, const RunContext& ctx, Fn&& fn);
absl::Status BreakdownErrorFor(int64_t n);

// Quantizes every fixed chunk of output channels: init(row0, rows) gives the chunk's accumulator
// (rows x K, permuted order); for column i the code is chosen from value(i, acc(r, i)) and the
// sweep propagates delta(i, value, constrained value, code, scale) along `coupling`. Writes codes
// in the original input order. Shared by OPTQ and GPFQ.
template <typename S, typename Coupling, typename Init, typename Value, typename Delta>
absl::Status SweepChannels(const std::vector<int64_t>& order, const Coupling& coupling,
                           const LayerOptions& opts, const Eigen::Ref<const MatrixXf>& scales,
                           const Constraints& constraints, const RunContext& ctx, MatrixXi8* codes,
                           Init&& init, Value&& value, Delta&& delta_of) {
  const int64_t c = codes->rows(), k = codes->cols();
  std::atomic<int64_t> done{0}, breakdowns{0};
  const int64_t total = ((c + kRowChunk - 1) / kRowChunk) * k;
  auto status = RunChunked(c, ctx, [&](int64_t row0, int64_t rows) -> absl::Status {
    MatS<S> acc = init(row0, rows);
    CodeChooser chooser(opts, scales, constraints, k, row0, rows);
    auto step = [&](int64_t i, auto delta) {
      const int64_t o = order[i];
      chooser.SetColumn(o);
      for (int64_t r = 0; r < rows; ++r) {
        const S x = value(i, acc(r, i));
        S v;
        double s;
        const int q = chooser.Choose(r, x, &v, &s);
        (*codes)(row0 + r, o) = static_cast<int8_t>(q);
        delta(r) = delta_of(i, x, v, q, s);
      }
    };
    auto st = BlockedSweep<S>(acc, coupling, opts.block_size, ctx, &done, total, step);
    breakdowns += chooser.breakdowns();
    return st;
  });
  if (!status.ok()) return status;
  if (breakdowns > 0) return BreakdownErrorFor(breakdowns);
  return absl::OkStatus();
}

// Calls fn(row0, rows) for each fixed chunk of c output channels, through ctx.parallel_for when
// given; returns the first error of any chunk.
template <typename Fn>
absl::Status RunChunked(int64_t c, const RunContext& ctx, Fn&& fn) {
  const int64_t chunks = (c + kRowChunk - 1) / kRowChunk;
  std::vector<absl::Status> status(chunks);
  auto one = [&](int64_t j) {
    const int64_t row0 = j * kRowChunk;
    status[j] = fn(row0, std::min(kRowChunk, c - row0));
  };
  if (ctx.parallel_for && chunks > 1) {
    ctx.parallel_for(chunks, one);
  } else {
    for (int64_t j = 0; j < chunks; ++j) one(j);
  }
  for (auto& s : status)
    if (!s.ok()) return s;
  return absl::OkStatus();
}

template <typename S>
using RowMatS = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Returns m(order, order) in scalar S, row-major: each output row gathers from one contiguous
// input row, so the permutation streams through memory (a column-wise gather is ~5x slower).
template <typename S>
RowMatS<S> PermuteRowsCols(const Eigen::Ref<const MatrixXf>& m, const std::vector<int64_t>& order) {
  const int64_t k = static_cast<int64_t>(order.size());
  RowMatS<S> out(k, k);
  for (int64_t i = 0; i < k; ++i) {
    const float* src = m.data() + order[i] * m.outerStride();
    S* dst = out.row(i).data();
    for (int64_t j = 0; j < k; ++j) dst[j] = static_cast<S>(src[order[j]]);
  }
  return out;
}

// The same for a symmetric m, column-major (column j of the output is row order[j] of m).
template <typename S>
MatS<S> PermuteSymmetric(const Eigen::Ref<const MatrixXf>& m, const std::vector<int64_t>& order) {
  const int64_t k = static_cast<int64_t>(order.size());
  MatS<S> out(k, k);
  for (int64_t j = 0; j < k; ++j) {
    const float* src = m.data() + order[j] * m.outerStride();
    S* dst = out.col(j).data();
    for (int64_t i = 0; i < k; ++i) dst[i] = static_cast<S>(src[order[i]]);
  }
  return out;
}

inline absl::Status BreakdownErrorFor(int64_t n) {
  return absl::FailedPreconditionError(
      absl::StrCat("numerical breakdown: ", n,
                   " non-finite intermediate values (statistics too ill-conditioned;"
                   " try more damping or precision=float64)"));
}

}  // namespace axeq::internal

#endif  // AXEQ_CORE_GREEDY_KERNEL_H_
