// Load generator (opt-in, not a test): N clients x M layers against a real axeq-server, for R
// rounds. Counts succeeded / failed / lost jobs, verifies every certificate independently
// (core/verify.h, pinned to the requested P, N, M) and samples the server's RSS from
// /proc/<pid>/status (VmRSS after each round, VmHWM overall). docs/load.md records a run.
//   load_gen --server-bin build/server/axeq-server [--clients 16 --layers 32 --rounds 5 --k 256]
//   load_gen --address HOST:PORT --server-pid PID ...   (a server started elsewhere)
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "client/remote.h"
#include "core/stats.h"
#include "core/test_util.h"
#include "core/verify.h"

namespace {

long StatusKb(int pid, const char* field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind(field, 0) == 0) return std::atol(line.c_str() + std::strlen(field) + 1);
  return -1;
}

// Starts the server on a free port with a fresh results dir; returns its pid and port.
bool Spawn(const std::string& bin, const std::vector<std::string>& extra, int* pid, int* port) {
  const std::string log = "/tmp/axeq-load-" + std::to_string(getpid()) + ".log";
  const std::string dir = "/tmp/axeq-load-" + std::to_string(getpid()) + "-results";
  *pid = fork();
  if (*pid == 0) {
    freopen(log.c_str(), "w", stderr);
    std::vector<std::string> args = {bin,
                                     "--address",
                                     "127.0.0.1:0",
                                     "--insecure",
                                     "--results-dir",
                                     dir,
                                     "--drain-delay-seconds",
                                     "0"};
    args.insert(args.end(), extra.begin(), extra.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(bin.c_str(), argv.data());
    _exit(127);
  }
  for (int i = 0; i < 100; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::ifstream in(log);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const size_t at = text.find("\"port\":");
    if (at != std::string::npos) {
      *port = std::atoi(text.c_str() + at + 7);
      return *port > 0;
    }
  }
  return false;
}

struct Case {
  axeq::MatrixXf weights;
  axeq::LayerStats stats;
  axeq::ActivationQuantizer act;
};

}  // namespace

int main(int argc, char** argv) {
  using namespace axeq;
  std::string bin, address, server_args;
  int server_pid = 0, clients = 16, layers = 32, rounds = 5, k = 256, c = 256, acc_bits = 16;
  CLI::App app{"axeq load generator: N clients x M layers per round against a real server"};
  app.add_option("--server-bin", bin,
                 "start this axeq-server (insecure, on a free port, with a results dir)");
  app.add_option("--server-args", server_args, "extra server flags, space-separated");
  app.add_option("--address", address, "or use a running server at host:port ...");
  app.add_option("--server-pid", server_pid, "... whose RSS is read from /proc/PID/status");
  app.add_option("--clients", clients)->capture_default_str();
  app.add_option("--layers", layers, "layers per client per round")->capture_default_str();
  app.add_option("--rounds", rounds)->capture_default_str();
  app.add_option("--k", k, "inputs per layer")->capture_default_str();
  app.add_option("--c", c, "output channels per layer")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (!bin.empty()) {
    std::vector<std::string> extra;
    for (size_t b = 0, e; b < server_args.size(); b = e + 1) {
      e = server_args.find(' ', b);
      if (e == std::string::npos) e = server_args.size();
      if (e > b) extra.push_back(server_args.substr(b, e - b));
    }
    int port = 0;
    if (!Spawn(bin, extra, &server_pid, &port)) {
      std::fprintf(stderr, "load_gen: server did not start\n");
      return 1;
    }
    address = "127.0.0.1:" + std::to_string(port);
  }
  std::mt19937_64 rng(2026);
  std::vector<Case> cases(8);
  for (auto& cs : cases) {
    auto l = testing::MakeRandomLayer(rng, c, k, 512, InputSpec{});
    StatsAccumulator acc(k, true, true);
    (void)acc.Add(l.x, l.xq);
    cs = {l.weights, *acc.Finish(), l.act};
  }
  VerifyExpectations expect;
  expect.accumulator_bits = acc_bits;
  expect.input_bits = 8;
  expect.weight_bits = 4;
  std::printf("server %s pid %d: %d clients x %d layers (%dx%d, OPTQ+AXE W4A8 P=%d) x %d rounds\n",
              address.c_str(), server_pid, clients, layers, c, k, acc_bits, rounds);
  std::printf("%5s %6s %9s %6s %6s %10s %8s %10s\n", "round", "jobs", "succeeded", "failed", "lost",
              "unverified", "seconds", "RSS MiB");
  const long rss_start = StatusKb(server_pid, "VmRSS:");
  std::vector<long> rss;
  int64_t total_lost = 0, total_failed = 0, total_unverified = 0;
  for (int round = 0; round < rounds; ++round) {
    std::atomic<int> ok{0}, failed{0}, lost{0}, unverified{0};
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> threads;
    for (int t = 0; t < clients; ++t)
      threads.emplace_back([&, t] {
        RemoteOptions ro;
        ro.address = address;
        ro.max_attempts = 8;  // queue full / budget in use are transient
        auto client = RemoteClient::Connect(ro);
        if (!client.ok()) {
          failed += layers;
          return;
        }
        for (int i = 0; i < layers; ++i) {
          const Case& cs = cases[(t + i) % cases.size()];
          RemoteLayer l{"layer", cs.weights};
          l.stats = &cs.stats;
          l.activations = cs.act;
          l.options.accumulator.bits = acc_bits;
          auto r = (*client)->Quantize(l);
          if (!r.ok()) {
            const auto code = r.status().code();
            (code == absl::StatusCode::kAborted || code == absl::StatusCode::kNotFound ? lost
                                                                                       : failed)++;
            if (failed + lost < 4)
              std::fprintf(stderr, "  job failed: %s\n", r.status().ToString().c_str());
            continue;
          }
          ++ok;
          if (!VerifyCertificate(r->codes, r->certificate, expect).ok()) ++unverified;
        }
      });
    for (auto& th : threads) th.join();
    std::this_thread::sleep_for(std::chrono::seconds(1));
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    rss.push_back(StatusKb(server_pid, "VmRSS:"));
    total_lost += lost;
    total_failed += failed;
    total_unverified += unverified;
    std::printf("%5d %6d %9d %6d %6d %10d %8.1f %10.1f\n", round, clients * layers, ok.load(),
                failed.load(), lost.load(), unverified.load(), secs, rss.back() / 1024.0);
    std::fflush(stdout);
  }
  long lo = rss.size() > 1 ? rss[1] : rss[0], hi = lo;
  for (size_t i = 1; i < rss.size(); ++i) {
    lo = std::min(lo, rss[i]);
    hi = std::max(hi, rss[i]);
  }
  const double spread = lo > 0 ? 100.0 * (hi - lo) / lo : 0;
  std::printf(
      "RSS before: %.1f MiB; rounds 1..%d: %.1f..%.1f MiB (spread %.1f%%); peak (VmHWM) %.1f MiB\n",
      rss_start / 1024.0, rounds - 1, lo / 1024.0, hi / 1024.0, spread,
      StatusKb(server_pid, "VmHWM:") / 1024.0);
  std::printf("lost %lld, failed %lld, certificates not verified %lld\n",
              static_cast<long long>(total_lost), static_cast<long long>(total_failed),
              static_cast<long long>(total_unverified));
  if (!bin.empty()) {
    kill(server_pid, SIGTERM);
    waitpid(server_pid, nullptr, 0);
  }
  return total_lost == 0 && total_failed == 0 && total_unverified == 0 && spread <= 10 ? 0 : 1;
}
