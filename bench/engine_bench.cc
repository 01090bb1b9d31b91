// Throughput of the engine against this machine's SGEMM, in one run (figures, not pass/fail).
// OPTQ and GPFQ, base and AXE, monolithic and T = 128, at layer shapes (K, C); SGEMM at the
// matching C x K x K. Counters: GFLOP/s of nominal work (OPTQ: C K^2 + 2/3 K^3; GPFQ: 2 C K^2;
// SGEMM: 2 C K^2). Threads: AXEQ_BENCH_THREADS (default 2). Big shapes: --benchmark_filter=.
#include <cstdlib>
#include <map>
#include <memory>
#include <random>

#include "benchmark/benchmark.h"
#include "core/l1_projection.h"
#include "core/bounds.h"
#include "core/layer.h"
#include "core/thread_pool.h"

namespace axeq {
namespace {

int Threads() {
  const char* t = std::getenv("AXEQ_BENCH_THREADS");
  return t ? std::atoi(t) : 2;
}

ThreadPool& Pool() {
  static ThreadPool* pool = new ThreadPool(Threads());
  return *pool;
}

RunContext Ctx() {
  RunContext ctx;
  ctx.parallel_for = [](int64_t n, const std::function<void(int64_t)>& f) { Pool().ParallelFor(n, f); };
  return ctx;
}

struct Fixture {
  MatrixXf w;
  LayerStats stats;
};

// Heavy-tailed random layer; statistics from 512 calibration rows (rank-deficient: damping works).
const Fixture& Get(int64_t k, int64_t c) {
  static std::map<std::pair<int64_t, int64_t>, std::unique_ptr<Fixture>> cache;
  auto& f = cache[{k, c}];
  if (!f) {
    f = std::make_unique<Fixture>();
    std::mt19937_64 rng(k * 7 + c);
    std::student_t_distribution<float> t(3);
    std::normal_distribution<float> n;
    f->w.resize(c, k);
    for (int64_t i = 0; i < f->w.size(); ++i) f->w.data()[i] = 0.02f * t(rng);
    const int64_t d = 512;
    MatrixXf x(d, k);
    Eigen::VectorXf s(k);
    for (int64_t i = 0; i < k; ++i) s(i) = std::exp(n(rng));
    for (int64_t r = 0; r < d; ++r)
      for (int64_t i = 0; i < k; ++i) x(r, i) = std::max(s(i) * n(rng), -0.2f * s(i));
    auto act = CalibrateActivations(x, InputSpec{}, {});
    StatsAccumulator acc(k, true, false);
    (void)acc.Add(x, act->Apply(x));
    f->stats = *acc.Finish();
  }
  return *f;
}

void BM_Sgemm(benchmark::State& state) {
  const int64_t k = state.range(0), c = state.range(1);
  const Fixture& f = Get(k, c);
  MatrixXf out(c, k);
  RunContext ctx = Ctx();
  for (auto _ : state) {
    // Same row-chunk split as the engine, so both use the threads the same way.
    const int64_t chunk = 128, chunks = (c + chunk - 1) / chunk;
    ctx.parallel_for(chunks, [&](int64_t j) {
      const int64_t r0 = j * chunk, rows = std::min(chunk, c - r0);
      out.middleRows(r0, rows).noalias() = f.w.middleRows(r0, rows) * f.stats.gram;
    });
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["GFLOPs"] = benchmark::Counter(2.0 * c * k * k, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

void BM_Layer(benchmark::State& state, Algorithm alg, bool axe, int tile) {
  const int64_t k = state.range(0), c = state.range(1);
  const Fixture& f = Get(k, c);
  LayerOptions o;
  o.algorithm = alg;
  o.method = axe ? Method::kAxe : Method::kBase;
  o.accumulator.bits = 16;
  o.accumulator.tile_size = tile;
  RunContext ctx = Ctx();
  for (auto _ : state) {
    const MatrixXf scales = WeightScales(f.w, o.weights);  // part of the measured work
    Constraints cons;
    if (axe) {
      cons.hard_clip = true;
      cons.lambdas = SoftThresholds(f.w, scales, 0, tile, L1Radius(16, 8), ctx);
    }
    auto r = alg == Algorithm::kOptq ? RunOptq(f.w, f.stats.gram, scales, cons, o, ctx)
                                     : RunGpfq(f.w, f.stats.cross, f.stats.gram, scales, cons, o, ctx);
    if (!r.ok()) state.SkipWithError(std::string(r.status().message()).c_str());
    Certificate cert = MakeCertificate(r->codes, 4, o.inputs, o.accumulator, ctx);
    const MatrixXf scales2 = scales;  // keep scales alive for the whole iteration
    benchmark::DoNotOptimize(scales2.data());
    benchmark::DoNotOptimize(cert.safe);
  }
  const double flops = alg == Algorithm::kOptq ? double(c) * k * k + 2.0 / 3.0 * k * k * k : 2.0 * c * k * k;
  state.counters["GFLOPs"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

#define AXEQ_SHAPES ->Args({768, 768})->Args({768, 3072})->Args({4096, 4096})->Unit(benchmark::kMillisecond)->UseRealTime()
BENCHMARK(BM_Sgemm) AXEQ_SHAPES;
BENCHMARK_CAPTURE(BM_Layer, optq_base, Algorithm::kOptq, false, 0) AXEQ_SHAPES;
BENCHMARK_CAPTURE(BM_Layer, optq_axe, Algorithm::kOptq, true, 0) AXEQ_SHAPES;
BENCHMARK_CAPTURE(BM_Layer, optq_axe_t128, Algorithm::kOptq, true, 128) AXEQ_SHAPES;
BENCHMARK_CAPTURE(BM_Layer, gpfq_base, Algorithm::kGpfq, false, 0) AXEQ_SHAPES;
BENCHMARK_CAPTURE(BM_Layer, gpfq_axe, Algorithm::kGpfq, true, 0) AXEQ_SHAPES;
BENCHMARK_CAPTURE(BM_Layer, gpfq_axe_t128, Algorithm::kGpfq, true, 128) AXEQ_SHAPES;
// Large shapes of Llama-3-8B's MLP; run with --benchmark_filter=Big.
BENCHMARK_CAPTURE(BM_Layer, Big_optq_axe, Algorithm::kOptq, true, 128)->Args({4096, 14336})->Args({14336, 4096})->Unit(benchmark::kSecond)->UseRealTime()->Iterations(1);

}  // namespace
}  // namespace axeq

BENCHMARK_MAIN();
