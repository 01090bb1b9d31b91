// Property tests of OPTQ and GPFQ against their reference twins and of AXE against the base
// algorithms: AXE with a non-binding P equals the base codes; Gram-form GPFQ equals sample-based
// GPFQ (Algorithm 1); blocked OPTQ equals one-column-at-a-time OPTQ; results do not depend on the
// thread count; cancellation and damping retries behave.
#include "core/algorithms.h"

#include <random>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "core/bounds.h"
#include "core/l1_projection.h"
#include "core/layer.h"
#include "core/test_util.h"
#include "core/thread_pool.h"
#include "gtest/gtest.h"

namespace axeq {
namespace {

using testing::MakeExactLayer;
using testing::MakeRandomLayer;
using testing::StatsOf;
using testing::TestSeed;

Constraints ConstraintsFor(const MatrixXf& w, const MatrixXf& scales, const LayerOptions& o) {
  Constraints c;
  if (o.method != Method::kAxe) return c;
  c.hard_clip = true;
  if (o.soft_threshold)
    c.lambdas = SoftThresholds(w, scales, o.weights.group_size, o.accumulator.tile_size,
                               L1Radius(o.accumulator.bits, o.inputs.bits));
  return c;
}

int64_t CountDiff(const MatrixXi8& a, const MatrixXi8& b) {
  return (a.cast<int>().array() != b.cast<int>().array()).count();
}

TEST(Axe, NonBindingAccumulatorGivesExactlyTheBaseCodes) {
  std::mt19937_64 rng(TestSeed(101));
  for (auto alg : {Algorithm::kOptq, Algorithm::kGpfq})
    for (bool is_signed : {false, true})
      for (int tile : {0, 16}) {
        InputSpec in;
        in.bits = 8;
        in.is_signed = is_signed;
        auto layer = MakeRandomLayer(rng, 24, 64, 256, in);
        LayerStats stats = StatsOf(layer);
        LayerOptions base;
        base.algorithm = alg;
        base.method = Method::kBase;
        base.inputs = in;
        base.accumulator.tile_size = tile;
        LayerOptions axe = base;
        axe.method = Method::kAxe;
        axe.accumulator.bits = 32;
        auto rb = QuantizeLayer(layer.weights, nullptr, stats, base);
        auto ra = QuantizeLayer(layer.weights, nullptr, stats, axe);
        ASSERT_TRUE(rb.ok() && ra.ok()) << rb.status() << ra.status();
        EXPECT_EQ(CountDiff(rb->codes, ra->codes), 0)
            << AlgorithmName(alg) << " signed=" << is_signed << " T=" << tile;
        // And a tight P must change something, or the test could not fail.
        axe.accumulator.bits = 12;
        auto rt = QuantizeLayer(layer.weights, nullptr, stats, axe);
        ASSERT_TRUE(rt.ok());
        EXPECT_GT(CountDiff(rb->codes, rt->codes), 0);
        EXPECT_TRUE(rt->certificate.safe);
      }
}

TEST(Gpfq, GramFormEqualsSampleBasedAlgorithm1) {
  std::mt19937_64 rng(TestSeed(202));
  int cases = 0;
  for (Method m : {Method::kBase, Method::kAxe})
    for (bool act_order : {false, true})
      for (int tile : {0, 8})
        for (int trial = 0; trial < 3; ++trial) {
          auto layer = MakeExactLayer(rng, 20, 40, 256);
          LayerStats stats = StatsOf(layer);
          LayerOptions o;
          o.algorithm = Algorithm::kGpfq;
          o.method = m;
          o.precision = Precision::kFloat64;
          o.act_order = act_order;
          o.block_size = 7;
          o.inputs.bits = 5;
          o.inputs.is_signed = true;
          o.accumulator.bits = 11;
          o.accumulator.tile_size = tile;
          const MatrixXf scales = WeightScales(layer.weights, o.weights);
          const Constraints cons = ConstraintsFor(layer.weights, scales, o);
          auto gram = RunGpfq(layer.weights, stats.cross, stats.gram, scales, cons, o, {});
          auto ref = GpfqReference(layer.weights, layer.x, layer.xq, scales, cons, o);
          ASSERT_TRUE(gram.ok() && ref.ok()) << gram.status() << ref.status();
          EXPECT_EQ(CountDiff(gram->codes, ref->codes), 0)
              << MethodName(m) << " act_order=" << act_order << " T=" << tile;
          ++cases;
        }
  EXPECT_EQ(cases, 24);
}

TEST(Optq, BlockedEqualsColumnByColumnReference) {
  std::mt19937_64 rng(TestSeed(303));
  for (Method m : {Method::kBase, Method::kAxe})
    for (auto form : {OptqErrorForm::kOriginal, OptqErrorForm::kConstrained})
      for (int block : {1, 5, 128})
        for (int tile : {0, 12}) {
          InputSpec in;
          in.bits = 6;
          auto layer = MakeRandomLayer(rng, 140, 48, 128, in);  // two channel chunks
          LayerStats stats = StatsOf(layer);
          LayerOptions o;
          o.method = m;
          o.optq_error = form;
          o.precision = Precision::kFloat64;
          o.block_size = block;
          o.inputs = in;
          o.accumulator.bits = 13;
          o.accumulator.tile_size = tile;
          const MatrixXf scales = WeightScales(layer.weights, o.weights);
          const Constraints cons = ConstraintsFor(layer.weights, scales, o);
          auto fast = RunOptq(layer.weights, stats.gram, scales, cons, o, {});
          auto ref = OptqReference(layer.weights, stats.gram, scales, cons, o);
          ASSERT_TRUE(fast.ok() && ref.ok()) << fast.status() << ref.status();
          EXPECT_EQ(CountDiff(fast->codes, ref->codes), 0)
              << MethodName(m) << " block=" << block << " T=" << tile;
        }
}

TEST(Optq, PreparedFactorGivesIdenticalCodes) {
  std::mt19937_64 rng(TestSeed(313));
  auto layer = MakeRandomLayer(rng, 150, 64, 256, InputSpec{});
  LayerStats stats = StatsOf(layer);
  ThreadPool pool(2);
  RunContext ctx;
  ctx.parallel_for = [&](int64_t n, const std::function<void(int64_t)>& f) {
    pool.ParallelFor(n, f);
  };
  for (auto precision : {Precision::kFloat32, Precision::kFloat64}) {
    LayerOptions o;
    o.precision = precision;
    o.accumulator.bits = 16;
    auto plain = QuantizeLayer(layer.weights, nullptr, stats, o, ctx);
    auto factor = PrepareOptq(stats.gram, o, ctx);
    ASSERT_TRUE(plain.ok() && factor.ok());
    LayerStats with = stats;
    with.optq_factor = *factor;
    auto prepared = QuantizeLayer(layer.weights, nullptr, with, o, ctx);
    ASSERT_TRUE(prepared.ok());
    EXPECT_EQ(prepared->codes, plain->codes);
    EXPECT_EQ(prepared->run.damping, plain->run.damping);
    o.act_order = false;  // a factor made for other options is ignored, not misused
    auto other = QuantizeLayer(layer.weights, nullptr, with, o, ctx);
    auto other_plain = QuantizeLayer(layer.weights, nullptr, stats, o, ctx);
    ASSERT_TRUE(other.ok() && other_plain.ok());
    EXPECT_EQ(other->codes, other_plain->codes);
  }
}

TEST(Engine, BitIdenticalAcrossRunsAndThreadCounts) {
  std::mt19937_64 rng(TestSeed(404));
  InputSpec in;
  auto layer = MakeRandomLayer(rng, 300, 96, 256, in);
  LayerStats stats = StatsOf(layer);
  ThreadPool pool2(2), pool3(3);
  for (auto alg : {Algorithm::kOptq, Algorithm::kGpfq}) {
    LayerOptions o;
    o.algorithm = alg;
    o.accumulator.bits = 18;
    o.accumulator.tile_size = 32;
    auto serial = QuantizeLayer(layer.weights, nullptr, stats, o);
    auto again = QuantizeLayer(layer.weights, nullptr, stats, o);
    RunContext c2, c3;
    c2.parallel_for = [&](int64_t n, const std::function<void(int64_t)>& f) {
      pool2.ParallelFor(n, f);
    };
    c3.parallel_for = [&](int64_t n, const std::function<void(int64_t)>& f) {
      pool3.ParallelFor(n, f);
    };
    auto p2 = QuantizeLayer(layer.weights, nullptr, stats, o, c2);
    auto p3 = QuantizeLayer(layer.weights, nullptr, stats, o, c3);
    ASSERT_TRUE(serial.ok() && again.ok() && p2.ok() && p3.ok());
    EXPECT_EQ(serial->codes, again->codes);
    EXPECT_EQ(serial->codes, p2->codes);
    EXPECT_EQ(serial->codes, p3->codes);
    EXPECT_EQ(serial->certificate.weights_sha256, p3->certificate.weights_sha256);
    EXPECT_EQ(serial->report.relative_error, p2->report.relative_error);
  }
}

TEST(Engine, CodesStayOnTheGridAndRequantizingIsIdempotent) {
  std::mt19937_64 rng(TestSeed(505));
  for (auto alg : {Algorithm::kOptq, Algorithm::kGpfq})
    for (auto alphabet : {WeightAlphabet::kNarrow, WeightAlphabet::kFull})
      for (int bits : {2, 3, 4, 8}) {
        InputSpec in;
        auto layer = MakeRandomLayer(rng, 16, 32, 128, in);
        layer.x = layer.xq;  // X = X~: then a weight already on the grid has zero error
        LayerStats stats = StatsOf(layer);
        LayerOptions o;
        o.algorithm = alg;
        o.method = Method::kBase;
        o.weights.bits = bits;
        o.weights.alphabet = alphabet;
        auto r = QuantizeLayer(layer.weights, nullptr, stats, o);
        ASSERT_TRUE(r.ok()) << r.status();
        EXPECT_GE(r->codes.cast<int>().minCoeff(), WeightCodeMin(o.weights));
        EXPECT_LE(r->codes.cast<int>().maxCoeff(), WeightCodeMax(o.weights));
        // Re-quantize the dequantized weights with the same scales: the same codes come back.
        const MatrixXf deq = Dequantize(r->codes, r->scales, 0);
        auto again = RunOptq(deq, stats.gram, r->scales, {}, o, {});
        if (alg == Algorithm::kGpfq)
          again = RunGpfq(deq, stats.cross, stats.gram, r->scales, {}, o, {});
        ASSERT_TRUE(again.ok());
        EXPECT_EQ(CountDiff(r->codes, again->codes), 0) << AlgorithmName(alg) << " M=" << bits;
      }
}

TEST(Engine, CancellationStopsWithinOneBlock) {
  std::mt19937_64 rng(TestSeed(606));
  auto layer = MakeRandomLayer(rng, 32, 256, 64, InputSpec{});
  LayerStats stats = StatsOf(layer);
  int polls = 0;
  RunContext ctx;
  ctx.should_stop = [&] { return ++polls > 1; };
  LayerOptions o;
  o.block_size = 32;
  auto r = QuantizeLayer(layer.weights, nullptr, stats, o, ctx);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled);
  // Polled before each factorization block (K = 64 is one) and after the factorization: the
  // second poll stops the job before the sweep starts.
  EXPECT_EQ(polls, 2);
  // The factorization prepared ahead of a job (the server's overlap) stops the same way.
  polls = 0;
  ctx.should_stop = [&] { return ++polls > 0; };
  EXPECT_EQ(PrepareOptq(stats.gram, o, ctx).status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(polls, 2);
  // Given a prepared factor, the sweep is what stops: within one block.
  ctx.should_stop = {};
  auto f = PrepareOptq(stats.gram, o, ctx);
  ASSERT_TRUE(f.ok());
  stats.optq_factor = *f;
  polls = 0;
  ctx.should_stop = [&] { return ++polls > 1; };
  EXPECT_EQ(QuantizeLayer(layer.weights, nullptr, stats, o, ctx).status().code(),
            absl::StatusCode::kCancelled);
  EXPECT_EQ(polls, 2);
}

TEST(Optq, DampingRetriesOnIndefiniteHessian) {
  const int k = 8;
  MatrixXf w = MatrixXf::Ones(4, k);
  LayerStats stats;
  stats.samples = 10;
  stats.gram = MatrixXf::Identity(k, k);
  stats.gram(0, 0) = -0.5f;  // not a Gram matrix: indefinite
  stats.gram(0, 0) = 1e-3f;
  stats.gram(0, 1) = stats.gram(1, 0) = 0.9f;  // det < 0: indefinite, needs eta > ~0.8
  LayerOptions o;
  o.method = Method::kBase;
  auto r = QuantizeLayer(w, nullptr, stats, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_GT(r->run.damping_retries, 0);
  o.max_damping_retries = 0;
  EXPECT_EQ(QuantizeLayer(w, nullptr, stats, o).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

// Recycled heap memory in a long-running server holds arbitrary bytes (0xFF..FF is a NaN): the
// factorization must neither read nor check memory it did not write. glibc's M_PERTURB fills every
// new allocation with 0xFF, deterministically (the "Hessian is not positive definite" of issue 10).
TEST(Optq, FactorDoesNotDependOnUninitialisedMemory) {
#if defined(__GLIBC__)
  std::mt19937_64 rng(TestSeed(107));
  const int64_t k = 600;  // > one 256-column factor block, so off-diagonal blocks exist
  std::normal_distribution<float> normal;
  MatrixXf x(2 * k, k);
  for (int64_t i = 0; i < x.size(); ++i) x.data()[i] = normal(rng);
  MatrixXf gram = (x.transpose() * x / static_cast<float>(2 * k)).eval();
  for (auto precision : {Precision::kFloat32, Precision::kFloat64}) {
    LayerOptions o;
    o.precision = precision;
    auto clean = PrepareOptq(gram, o, {});
    ASSERT_TRUE(clean.ok()) << clean.status();
    // New blocks: every byte ~0x00 = 0xFF. Sanitizer allocators ignore M_PERTURB (they fill
    // new memory with their own pattern, if at all).
    if (mallopt(M_PERTURB, 0x100) != 1) GTEST_SKIP() << "this allocator does not support M_PERTURB";
    auto poisoned = PrepareOptq(gram, o, {});
    mallopt(M_PERTURB, 0);
    ASSERT_TRUE(poisoned.ok()) << poisoned.status();
    EXPECT_EQ((*poisoned)->damping_retries, 0);
    EXPECT_EQ((*clean)->damping_retries, 0);
    // The sweep reads the upper triangle of U only: it must be the same bits.
    if (precision == Precision::kFloat32) {
      MatrixXf a = (*clean)->u32.triangularView<Eigen::Upper>();
      MatrixXf b = (*poisoned)->u32.triangularView<Eigen::Upper>();
      EXPECT_TRUE(a.allFinite());
      EXPECT_EQ(a, b);
    } else {
      MatrixXd a = (*clean)->u64.triangularView<Eigen::Upper>();
      MatrixXd b = (*poisoned)->u64.triangularView<Eigen::Upper>();
      EXPECT_TRUE(a.allFinite());
      EXPECT_EQ(a, b);
    }
  }
#else
  GTEST_SKIP() << "needs glibc's M_PERTURB";
#endif
}

}  // namespace
}  // namespace axeq
