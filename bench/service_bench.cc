// The service against the embedded engine on one layer (figures, not pass/fail): ingest
// throughput over loopback (MB/s from the first byte to the job being queued) for a K x K layer
// with its K^2 statistics, and the end-to-end wall time remote vs embedded, for three
// configurations (see Options). Client and server share this process and its cores.
// Run: build/bench/service_bench [--benchmark_filter=/4096/]
#include <chrono>
#include <random>

#include "benchmark/benchmark.h"
#include "client/remote.h"
#include "core/layer.h"
#include "core/thread_pool.h"
#include "server/server.h"

namespace axeq {
namespace {

struct Fixture {
  MatrixXf w;
  LayerStats stats;
};

const Fixture& Get(int64_t k) {
  static std::map<int64_t, std::unique_ptr<Fixture>> cache;
  auto& f = cache[k];
  if (!f) {
    f = std::make_unique<Fixture>();
    std::mt19937_64 rng(k);
    std::normal_distribution<float> n;
    f->w.resize(k, k);
    for (int64_t i = 0; i < f->w.size(); ++i) f->w.data()[i] = 0.02f * n(rng);
    MatrixXf x(512, k);
    for (int64_t i = 0; i < x.size(); ++i) x.data()[i] = std::abs(n(rng));
    StatsAccumulator acc(k, true, true);
    (void)acc.Add(x, x);
    f->stats = *acc.Finish();
  }
  return *f;
}

// The second benchmark argument picks the layer's configuration and what is uploaded:
//   0: OPTQ+AXE with H = X~^T X~ (all OPTQ needs; the report's error is on quantized inputs)
//   1: OPTQ+AXE with H, X~^T X and X^T X (the report's error against float inputs too)
//   2: GPFQ+AXE with X~^T X and X~^T X~
LayerOptions Options(int64_t config) {
  LayerOptions o;
  o.accumulator.bits = 16;
  o.accumulator.tile_size = 128;
  if (config == 2) o.algorithm = Algorithm::kGpfq;
  return o;
}

LayerStats Stats(const Fixture& f, int64_t config) {
  LayerStats s = f.stats;
  if (config == 0) s.cross.resize(0, 0);
  if (config != 1) s.xx.resize(0, 0);
  return s;
}

int64_t UploadBytes(const Fixture& f, const LayerStats& s) {
  return 4 * (f.w.size() + s.gram.size() + s.cross.size() + s.xx.size());
}

std::string Label(int64_t config) {
  return config == 0   ? "OPTQ, H"
         : config == 1 ? "OPTQ, H + X~^T X + X^T X"
                       : "GPFQ, X~^T X + X~^T X~";
}

void BM_Embedded(benchmark::State& state) {
  const Fixture& f = Get(state.range(0));
  const LayerStats stats = Stats(f, state.range(1));
  ThreadPool pool(2);
  RunContext ctx;
  ctx.parallel_for = [&](int64_t n, const std::function<void(int64_t)>& fn) {
    pool.ParallelFor(n, fn);
  };
  for (auto _ : state) {
    auto r = QuantizeLayer(f.w, nullptr, stats, Options(state.range(1)), ctx);
    benchmark::DoNotOptimize(r.ok());
  }
  state.SetLabel(Label(state.range(1)));
}

void BM_Remote(benchmark::State& state) {
  const Fixture& f = Get(state.range(0));
  const LayerStats stats = Stats(f, state.range(1));
  server::ServerOptions so;
  so.address = "127.0.0.1:0";
  so.insecure = true;
  so.log_json = false;
  so.jobs.workers = 1;
  so.jobs.compute_threads = 2;
  auto srv = server::Server::Start(so);
  RemoteOptions ro;
  ro.address = "127.0.0.1:" + std::to_string((*srv)->port());
  auto client = *RemoteClient::Connect(ro);
  double ingest_mb_s = 0;
  for (auto _ : state) {
    RemoteLayer l{"bench", f.w};
    l.stats = &stats;
    l.activations.scale = 0.01f;
    l.options = Options(state.range(1));
    const auto t0 = std::chrono::steady_clock::now();
    std::chrono::steady_clock::time_point queued{};
    auto r = client->Quantize(l, [&](double, const std::string& s) {
      if (queued == std::chrono::steady_clock::time_point{} &&
          (s == "JOB_STATE_QUEUED" || s == "JOB_STATE_RUNNING"))
        queued = std::chrono::steady_clock::now();
    });
    const auto t1 = std::chrono::steady_clock::now();
    if (!r.ok()) {
      state.SkipWithError(std::string(r.status().message()).c_str());
      break;
    }
    state.counters["upload_s"] = std::chrono::duration<double>(queued - t0).count();
    state.counters["server_compute_s"] = r->run.seconds;
    state.counters["after_compute_s"] =
        std::chrono::duration<double>(t1 - queued).count() - r->run.seconds;
    ingest_mb_s = static_cast<double>(UploadBytes(f, stats)) / 1e6 /
                  std::chrono::duration<double>(queued - t0).count();
  }
  state.counters["ingest_MBps"] = ingest_mb_s;
  state.counters["upload_MB"] = static_cast<double>(UploadBytes(f, stats)) / 1e6;
  state.SetLabel(Label(state.range(1)));
}

BENCHMARK(BM_Embedded)
    ->ArgsProduct({{1024, 4096}, {0, 1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(3);
BENCHMARK(BM_Remote)
    ->ArgsProduct({{1024, 4096}, {0, 1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(3);

}  // namespace
}  // namespace axeq

BENCHMARK_MAIN();
