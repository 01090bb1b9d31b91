// OPTQ (GPTQ; Algorithm 2) with act-order, damping with retry, lazy-batch blocks and AXE.
// H^-1's upper Cholesky factor is computed as the Cholesky of the row-and-column-reversed H
// followed by one triangular inverse: H = R R^T with R = J chol(J H J) J upper, so
// H^-1 = R^-T R^-1 and R^-1 is the (unique) upper factor. Cost 2/3 K^3 instead of 4/3 K^3, in
// two K x K buffers (the reversal is folded into the act-order gather and a final in-place
// reverse).
#include <algorithm>
#include <atomic>
#include <numeric>

#include "Eigen/Cholesky"
#include "absl/strings/str_cat.h"
#include "core/greedy_kernel.h"

namespace axeq {
namespace internal {
namespace {

constexpr int64_t kFactorBlock = 256;

// Calls fn(begin, len) for fixed chunks of [0, n) through ctx.parallel_for (or serially).
template <typename Fn>
void ForChunks(int64_t n, int64_t chunk, const RunContext& ctx, Fn&& fn) {
  const int64_t chunks = (n + chunk - 1) / chunk;
  auto one = [&](int64_t j) { fn(j * chunk, std::min(chunk, n - j * chunk)); };
  if (ctx.parallel_for && chunks > 1)
    ctx.parallel_for(chunks, one);
  else
    for (int64_t j = 0; j < chunks; ++j) one(j);
}

// Writes m(order, order) into out (column-major, resized to K x K): column j of out is row
// order[j] of the symmetric m, so every read streams through one input row.
template <typename S>
void PermuteSymmetricInto(const Eigen::Ref<const MatrixXf>& m, const std::vector<int64_t>& order,
                          MatS<S>* out) {
  const int64_t k = static_cast<int64_t>(order.size());
  out->resize(k, k);
  for (int64_t j = 0; j < k; ++j) {
    const float* src = m.data() + order[j] * m.outerStride();
    S* dst = out->col(j).data();
    for (int64_t i = 0; i < k; ++i) dst[i] = static_cast<S>(src[order[i]]);
  }
}

// Factors the lower triangle of a in place (a = L L^T), blocked right-looking: the panel solve and
// the trailing update (the K^3/3 bulk) run in fixed chunks through ctx. Returns false if a is not
// positive definite or ctx.should_stop fired (checked once per block). Chunks are fixed, so the
// result does not depend on the thread count.
template <typename S>
bool BlockedCholesky(MatS<S>& a, const RunContext& ctx) {
  const int64_t n = a.rows();
  for (int64_t j = 0; j < n; j += kFactorBlock) {
    if (ctx.should_stop && ctx.should_stop()) return false;  // the caller reports CANCELLED
    const int64_t w = std::min(kFactorBlock, n - j), rest = n - j - w;
    Eigen::Ref<MatS<S>> d = a.block(j, j, w, w);
    Eigen::LLT<Eigen::Ref<MatS<S>>, Eigen::Lower> llt(d);
    if (llt.info() != Eigen::Success || !(d.diagonal().array() > S(0)).all() ||
        !d.diagonal().allFinite())
      return false;
    if (rest == 0) break;
    ForChunks(rest, 256, ctx, [&](int64_t r0, int64_t len) {
      auto panel = a.block(j + w + r0, j, len, w);
      d.template triangularView<Eigen::Lower>()
          .transpose()
          .template solveInPlace<Eigen::OnTheRight>(panel);
    });
    const auto panel = a.block(j + w, j, rest, w);
    ForChunks(rest, kFactorBlock, ctx, [&](int64_t c0, int64_t len) {
      a.block(j + w + c0, j + w + c0, rest - c0, len).noalias() -=
          panel.bottomRows(rest - c0) * panel.middleRows(c0, len).transpose();
    });
  }
  return true;
}

// Returns the inverse of the lower-triangular l (lower triangle read), with its strictly upper
// triangle zero (never left unwritten: recycled heap memory may hold NaN patterns, issue 10).
// Column chunks of L X = I are independent triangular solves, K^3/3 flops in all, run through ctx.
template <typename S>
MatS<S> LowerInverse(const MatS<S>& l, const RunContext& ctx) {
  const int64_t n = l.rows();
  MatS<S> x(n, n);  // every entry is written: callers check allFinite() over all of it
  ForChunks(n, kFactorBlock, ctx, [&](int64_t c0, int64_t len) {
    x.block(0, c0, c0, len).setZero();  // above the chunk's diagonal block: L^-1 is lower
    auto block = x.block(c0, c0, n - c0, len);
    block.topRows(len).setIdentity();
    block.bottomRows(n - c0 - len).setZero();  // right-hand side: columns c0.. of I
    l.block(c0, c0, n - c0, n - c0).template triangularView<Eigen::Lower>().solveInPlace(block);
  });
  return x;
}

}  // namespace

// Returns the upper Cholesky factor U of (H + eta I)^-1 (H^-1 = U^T U), column-major, raising eta
// x10 up to max_retries times when H + eta I is not positive definite. build(a) fills a with the
// reversed J H J (every entry; it is called again for each retry, since the factorization
// overwrites it). U is the reversed L^-1 of J (H + eta I) J = L L^T: u(i, j) = linv(k-1-i, k-1-j),
// which for column-major storage is the same buffer read backwards, so U is made in place.
template <typename S, typename Build>
absl::StatusOr<MatS<S>> UpperFactorOfInverse(int64_t k, const Build& build, double damping,
                                             int max_retries, double* eta_used, int* retries,
                                             const RunContext& ctx) {
  MatS<S> a(k, k);
  build(a);
  // The mean diagonal of H in H's own order (a's diagonal read backwards), summed in double.
  const double mean_diag = std::max(a.diagonal().reverse().template cast<double>().mean(), 1e-30);
  double eta = damping * mean_diag;
  for (int attempt = 0; attempt <= max_retries; ++attempt, eta *= 10) {
    if (attempt > 0) build(a);
    a.diagonal().array() += static_cast<S>(eta);
    const bool factored = BlockedCholesky<S>(a, ctx);
    if (ctx.should_stop && ctx.should_stop())
      return absl::CancelledError("factorization cancelled");
    if (!factored) continue;
    MatS<S> u = LowerInverse<S>(a, ctx);
    if (!u.allFinite()) continue;
    std::reverse(u.data(), u.data() + u.size());  // now u(i, j) = linv(k-1-i, k-1-j)
    *eta_used = eta;
    *retries = attempt;
    return u;
  }
  return absl::FailedPreconditionError(
      absl::StrCat("Hessian X~X~^T is not positive definite even with damping ", eta / 10, " (",
                   damping, " x 10^", max_retries, " of its mean diagonal ", mean_diag, ")"));
}

template <typename S>
MatS<S>& FactorOf(OptqFactor& f);
template <>
MatS<float>& FactorOf<float>(OptqFactor& f) {
  return f.u32;
}
template <>
MatS<double>& FactorOf<double>(OptqFactor& f) {
  return f.u64;
}

template <typename S>
absl::Status Prepare(const Eigen::Ref<const MatrixXf>& gram, const LayerOptions& opts,
                     const RunContext& ctx, OptqFactor* f) {
  const int64_t k = gram.rows();
  f->precision = opts.precision;
  f->act_order = opts.act_order;
  f->damping_fraction = opts.damping;
  f->max_damping_retries = opts.max_damping_retries;
  f->order = ActOrder(gram, opts.act_order);
  f->dead.assign(k, 0);
  f->dead_inputs = 0;
  for (int64_t i = 0; i < k; ++i)
    if (!(gram(f->order[i], f->order[i]) * 2 > 0)) f->dead[i] = 1, ++f->dead_inputs;
  // J H J with H = 2 P^T gram P: one gather in the reversed act-order; a dead input's row and
  // column become those of the identity (its code is 0 whatever the factor says).
  const std::vector<int64_t> reversed(f->order.rbegin(), f->order.rend());
  auto build = [&](MatS<S>& a) {
    PermuteSymmetricInto<S>(gram, reversed, &a);
    a.array() *= S(2);
    for (int64_t i = 0; i < k; ++i)
      if (f->dead[i]) {
        const int64_t r = k - 1 - i;
        a.row(r).setZero();
        a.col(r).setZero();
        a(r, r) = S(1);
      }
  };
  AXEQ_ASSIGN_OR_RETURN(FactorOf<S>(*f),
                        UpperFactorOfInverse<S>(k, build, opts.damping, opts.max_damping_retries,
                                                &f->damping, &f->damping_retries, ctx));
  return absl::OkStatus();
}

template <typename S>
absl::StatusOr<GreedyResult> OptqImpl(const Eigen::Ref<const MatrixXf>& weights,
                                      const Eigen::Ref<const MatrixXf>& gram,
                                      const Eigen::Ref<const MatrixXf>& scales,
                                      const Constraints& constraints, const LayerOptions& opts,
                                      const RunContext& ctx, const OptqFactor* prepared) {
  const int64_t k = weights.cols();
  OptqFactor own;
  const OptqFactor* f = prepared;
  if (f == nullptr || !f->Matches(opts, k)) {
    AXEQ_RETURN_IF_ERROR(Prepare<S>(gram, opts, ctx, &own));
    f = &own;
  }
  const auto& order = f->order;
  const auto& dead = f->dead;
  const MatS<S>& u = FactorOf<S>(const_cast<OptqFactor&>(*f));
  GreedyResult result;
  result.order = order;
  result.dead_inputs = f->dead_inputs;
  result.damping = f->damping;
  result.damping_retries = f->damping_retries;
  result.codes.resize(weights.rows(), k);
  const bool original = opts.optq_error == OptqErrorForm::kOriginal;
  AXEQ_RETURN_IF_ERROR(SweepChannels<S>(
      order, u, opts, scales, constraints, ctx, &result.codes,
      [&](int64_t row0, int64_t rows) {
        MatS<S> acc(rows, k);
        for (int64_t i = 0; i < k; ++i)
          acc.col(i) = dead[i] ? VecS<S>::Zero(rows)
                               : VecS<S>(weights.block(row0, order[i], rows, 1).template cast<S>());
        return acc;
      },
      [](int64_t, S x) { return x; },
      [&](int64_t i, S w, S v, int q, double s) {  // E = (W_i - Q_i) / U_ii (Algorithm 2, line 8)
        return ((original ? w : v) - static_cast<S>(q * s)) / u(i, i);
      }));
  return result;
}

}  // namespace internal

std::vector<int64_t> ActOrder(const Eigen::Ref<const MatrixXf>& gram, bool act_order) {
  std::vector<int64_t> order(gram.rows());
  std::iota(order.begin(), order.end(), 0);
  if (act_order) {
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return gram(a, a) > gram(b, b); });
  }
  return order;
}

absl::StatusOr<GreedyResult> RunOptq(const Eigen::Ref<const MatrixXf>& weights,
                                     const Eigen::Ref<const MatrixXf>& gram,
                                     const Eigen::Ref<const MatrixXf>& scales,
                                     const Constraints& constraints, const LayerOptions& opts,
                                     const RunContext& ctx, const OptqFactor* prepared) {
  if (opts.precision == Precision::kFloat64)
    return internal::OptqImpl<double>(weights, gram, scales, constraints, opts, ctx, prepared);
  return internal::OptqImpl<float>(weights, gram, scales, constraints, opts, ctx, prepared);
}

absl::StatusOr<std::shared_ptr<const OptqFactor>> PrepareOptq(
    const Eigen::Ref<const MatrixXf>& gram, const LayerOptions& opts, const RunContext& ctx) {
  auto f = std::make_shared<OptqFactor>();
  if (gram.rows() != gram.cols() || gram.rows() == 0)
    return absl::InvalidArgumentError(absl::StrCat("gram must be square and non-empty, got [",
                                                   gram.rows(), ", ", gram.cols(), "]"));
  absl::Status s = opts.precision == Precision::kFloat64
                       ? internal::Prepare<double>(gram, opts, ctx, f.get())
                       : internal::Prepare<float>(gram, opts, ctx, f.get());
  if (!s.ok()) return s;
  return std::shared_ptr<const OptqFactor>(std::move(f));
}

}  // namespace axeq
