// The service against the embedded engine on one layer (figures, not pass/fail): ingest
// throughput over loopback (MB/s from the first byte to the job being queued) for a K x K layer
// with its K^2 statistics, and the end-to-end wall time remote vs embedded.
// Run: build/bench/service_bench [--benchmark_filter=/4096]
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
    StatsAccumulator acc(k, true, false);
    (void)acc.Add(x, x);
    f->stats = *acc.Finish();
  }
  return *f;
}

LayerOptions Options() {
  LayerOptions o;
  o.accumulator.bits = 16;
  o.accumulator.tile_size = 128;
  return o;
}

void BM_Embedded(benchmark::State& state) {
  const Fixture& f = Get(state.range(0));
  ThreadPool pool(2);
  RunContext ctx;
  ctx.parallel_for = [&](int64_t n, const std::function<void(int64_t)>& fn) { pool.ParallelFor(n, fn); };
  for (auto _ : state) {
    auto r = QuantizeLayer(f.w, nullptr, f.stats, Options(), ctx);
    benchmark::DoNotOptimize(r.ok());
  }
}

void BM_Remote(benchmark::State& state) {
  const Fixture& f = Get(state.range(0));
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
    l.stats = &f.stats;
    l.activations.scale = 0.01f;
    l.options = Options();
    const auto t0 = std::chrono::steady_clock::now();
    std::chrono::steady_clock::time_point queued{};
    auto r = client->Quantize(l, [&](double, const std::string& s) {
      if (queued == std::chrono::steady_clock::time_point{} && (s == "JOB_STATE_QUEUED" || s == "JOB_STATE_RUNNING"))
        queued = std::chrono::steady_clock::now();
    });
    const auto t1 = std::chrono::steady_clock::now();
    if (!r.ok()) {
      state.SkipWithError(std::string(r.status().message()).c_str());
      break;
    }
    state.counters["upload_s"] = std::chrono::duration<double>(queued - t0).count();
    state.counters["server_compute_s"] = r->seconds;
    state.counters["after_compute_s"] = std::chrono::duration<double>(t1 - queued).count() - r->seconds;
    const double bytes = 4.0 * (f.w.size() + f.stats.gram.size() + f.stats.cross.size());
    ingest_mb_s = bytes / 1e6 / std::chrono::duration<double>(queued - t0).count();
  }
  state.counters["ingest_MBps"] = ingest_mb_s;
}

BENCHMARK(BM_Embedded)->Arg(1024)->Arg(4096)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(2);
BENCHMARK(BM_Remote)->Arg(1024)->Arg(4096)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(2);

}  // namespace
}  // namespace axeq

BENCHMARK_MAIN();
