// Throughput of the engine against this machine's SGEMM, in one run (figures, not pass/fail).
// OPTQ and GPFQ, base and AXE, monolithic and T = 128, at layer shapes (K, C); SGEMM at the
// matching C x K x K; statistics from D rows of K inputs. Counters: GFLOP/s of nominal work
// (OPTQ: C K^2 + 2/3 K^3; GPFQ: 2 C K^2; SGEMM: 2 C K^2; statistics: 4 K^2 D, i.e. X~^T X~ and X^T
// X as one triangle each plus X~^T X), `vs_sgemm` = that rate over the SGEMM rate of the same shape
// measured in the same process (median of 3, taken when the shape is first used), and
// `x_sgemm_time` = the time over that SGEMM's time. Threads: AXEQ_BENCH_THREADS (default 2).
// Big shapes: --benchmark_filter=Big.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <ctime>
#include <map>
#include <memory>
#include <random>

#include "benchmark/benchmark.h"
#include "core/bounds.h"
#include "core/l1_projection.h"
#include "core/layer.h"
#include "core/stats.h"
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
  ctx.parallel_for = [](int64_t n, const std::function<void(int64_t)>& f) {
    Pool().ParallelFor(n, f);
  };
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

// One SGEMM of the layer's shape, out = W [C, K] x gram [K, K], with the engine's row-chunk split
// so that both use the threads the same way.
void Sgemm(const Fixture& f, MatrixXf* out) {
  const int64_t c = f.w.rows();
  const int64_t chunk = 128, chunks = (c + chunk - 1) / chunk;
  Ctx().parallel_for(chunks, [&](int64_t j) {
    const int64_t r0 = j * chunk, rows = std::min(chunk, c - r0);
    out->middleRows(r0, rows).noalias() = f.w.middleRows(r0, rows) * f.stats.gram;
  });
}

// Wall and process CPU seconds since construction (CPU: all threads, so ratios of CPU times stay
// meaningful when other processes share the cores).
struct Timer {
  std::chrono::steady_clock::time_point wall0 = std::chrono::steady_clock::now();
  std::clock_t cpu0 = std::clock();
  double wall() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
  }
  double cpu() const { return static_cast<double>(std::clock() - cpu0) / CLOCKS_PER_SEC; }
};

struct Seconds {
  double wall, cpu;
};

// Median wall and CPU seconds of 3 SGEMMs of shape (K, C), measured once per shape in this process.
Seconds SgemmSeconds(int64_t k, int64_t c) {
  static std::map<std::pair<int64_t, int64_t>, Seconds> cache;
  auto it = cache.find({k, c});
  if (it != cache.end()) return it->second;
  const Fixture& f = Get(k, c);
  MatrixXf out(c, k);
  std::vector<double> wall, cpu;
  for (int i = 0; i < 3; ++i) {
    Timer t;
    Sgemm(f, &out);
    benchmark::DoNotOptimize(out.data());
    wall.push_back(t.wall());
    cpu.push_back(t.cpu());
  }
  std::sort(wall.begin(), wall.end());
  std::sort(cpu.begin(), cpu.end());
  return cache[{k, c}] = Seconds{wall[1], cpu[1]};
}

// Reports GFLOPs (wall), vs_sgemm (rate over the SGEMM rate, wall), vs_sgemm_cpu (the same with
// process CPU times) and x_sgemm_time for `flops` of nominal work per iteration.
void Report(benchmark::State& state, const Timer& t, double flops, int64_t k, int64_t c) {
  const double iters = static_cast<double>(state.iterations());
  const double wall = t.wall() / iters, cpu = t.cpu() / iters;
  const Seconds sgemm = SgemmSeconds(k, c);
  const double sgemm_flops = 2.0 * c * k * k;
  state.counters["GFLOPs"] = flops / wall / 1e9;
  state.counters["vs_sgemm"] = (flops / wall) / (sgemm_flops / sgemm.wall);
  state.counters["vs_sgemm_cpu"] = (flops / cpu) / (sgemm_flops / sgemm.cpu);
  state.counters["x_sgemm_time"] = wall / sgemm.wall;
}

void BM_Sgemm(benchmark::State& state) {
  const int64_t k = state.range(0), c = state.range(1);
  const Fixture& f = Get(k, c);
  MatrixXf out(c, k);
  Timer t;
  for (auto _ : state) {
    Sgemm(f, &out);
    benchmark::DoNotOptimize(out.data());
  }
  Report(state, t, 2.0 * c * k * k, k, c);
}

// Statistics from rows: D rows of X and X~ (K wide) folded into X~^T X~, X~^T X and X^T X.
void BM_Stats(benchmark::State& state) {
  const int64_t k = state.range(0), d = state.range(1);
  std::mt19937_64 rng(k + d);
  std::normal_distribution<float> n;
  MatrixXf x(d, k);
  for (int64_t i = 0; i < x.size(); ++i) x.data()[i] = n(rng);
  const MatrixXf xq = (x * 8.0f).array().round() / 8.0f;
  RunContext ctx = Ctx();
  Timer t;
  for (auto _ : state) {
    StatsAccumulator acc(k, true, true, ctx);
    (void)acc.Add(x, xq);
    auto s = acc.Finish();
    benchmark::DoNotOptimize(s->gram.data());
  }
  Report(state, t, 4.0 * k * k * d, k, k);
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
  Timer t;
  for (auto _ : state) {
    const MatrixXf scales = WeightScales(f.w, o.weights);  // part of the measured work
    Constraints cons;
    if (axe) {
      cons.hard_clip = true;
      cons.lambdas = SoftThresholds(f.w, scales, 0, tile, L1Radius(16, 8), ctx);
    }
    auto r = alg == Algorithm::kOptq
                 ? RunOptq(f.w, f.stats.gram, scales, cons, o, ctx)
                 : RunGpfq(f.w, f.stats.cross, f.stats.gram, scales, cons, o, ctx);
    if (!r.ok()) state.SkipWithError(std::string(r.status().message()).c_str());
    Certificate cert = MakeCertificate(r->codes, 4, o.inputs, o.accumulator, ctx);
    const MatrixXf scales2 = scales;  // keep scales alive for the whole iteration
    benchmark::DoNotOptimize(scales2.data());
    benchmark::DoNotOptimize(cert.safe);
  }
  const double flops =
      alg == Algorithm::kOptq ? double(c) * k * k + 2.0 / 3.0 * k * k * k : 2.0 * c * k * k;
  Report(state, t, flops, k, c);
}

#define AXEQ_SHAPES                   \
  ->Args({768, 768})                  \
      ->Args({768, 3072})             \
      ->Args({4096, 4096})            \
      ->Unit(benchmark::kMillisecond) \
      ->UseRealTime()
BENCHMARK(BM_Sgemm) AXEQ_SHAPES;
BENCHMARK_CAPTURE(BM_Layer, optq_base, Algorithm::kOptq, false, 0) AXEQ_SHAPES;
BENCHMARK_CAPTURE(BM_Layer, optq_axe, Algorithm::kOptq, true, 0) AXEQ_SHAPES;
BENCHMARK_CAPTURE(BM_Layer, optq_axe_t128, Algorithm::kOptq, true, 128) AXEQ_SHAPES;
BENCHMARK_CAPTURE(BM_Layer, gpfq_base, Algorithm::kGpfq, false, 0) AXEQ_SHAPES;
BENCHMARK_CAPTURE(BM_Layer, gpfq_axe, Algorithm::kGpfq, true, 0) AXEQ_SHAPES;
BENCHMARK_CAPTURE(BM_Layer, gpfq_axe_t128, Algorithm::kGpfq, true, 128) AXEQ_SHAPES;
BENCHMARK(BM_Stats)
    ->Args({768, 2048})
    ->Args({4096, 2048})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
// Large shapes of Llama-3-8B's MLP; run with --benchmark_filter=Big.
BENCHMARK_CAPTURE(BM_Layer, Big_optq_axe, Algorithm::kOptq, true, 128)
    ->Args({4096, 14336})
    ->Args({14336, 4096})
    ->Unit(benchmark::kSecond)
    ->UseRealTime()
    ->Iterations(1);
BENCHMARK_CAPTURE(BM_Layer, Big_gpfq_axe, Algorithm::kGpfq, true, 128)
    ->Args({14336, 4096})
    ->Unit(benchmark::kSecond)
    ->UseRealTime()
    ->Iterations(1);

}  // namespace
}  // namespace axeq

BENCHMARK_MAIN();
