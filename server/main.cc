// axeq-server: parses flags and wires; the server itself is server/server.cc.
#include <malloc.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "server/server.h"

namespace {
volatile std::sig_atomic_t g_signal = 0;
void OnSignal(int sig) { g_signal = sig; }

// Flags that are not ServerOptions fields as such (units, lists), applied by ApplyFlags.
struct Flags {
  double grace = 30, drain_delay = 2, budget_mb = 0, retention_mb = 20480, max_upload_mb = 24576,
         idle_s = 60, finished_ttl_s = 600, release_idle_s = 10;
  std::vector<std::string> peers;
};

// Serving, jobs and replicas.
void AddJobFlags(CLI::App& app, axeq::server::ServerOptions& o, Flags& f) {
  app.add_option("--address", o.address, "host:port to serve gRPC on (port 0 picks one)")
      ->capture_default_str();
  app.add_option("--metrics-address", o.metrics_address,
                 "host:port for Prometheus /metrics (empty: off)")
      ->capture_default_str();
  app.add_option("--workers", o.jobs.workers, "concurrent jobs (0 = the container's CPU quota)")
      ->capture_default_str();
  app.add_option("--compute-threads", o.jobs.compute_threads,
                 "engine threads shared by jobs (0 = the container's CPU quota)")
      ->capture_default_str();
  app.add_option(
         "--compute-nice", o.jobs.compute_nice,
         "nice value of engine threads; they run below the network threads (0 = same priority)")
      ->check(CLI::Range(0, 19))
      ->capture_default_str();
  app.add_option("--max-queue", o.jobs.max_queue,
                 "jobs receiving or waiting for a worker before RESOURCE_EXHAUSTED")
      ->capture_default_str();
  app.add_option(
         "--memory-budget-mb", f.budget_mb,
         "memory reserved by admitted jobs (0 = 75% of the cgroup memory limit or physical memory)")
      ->capture_default_str();
  app.add_option("--upload-idle-seconds", f.idle_s,
                 "end an upload that sends nothing for this long and release its reservation")
      ->capture_default_str();
  app.add_option("--finished-ttl-seconds", f.finished_ttl_s,
                 "finished jobs leave memory after this (durable results stay on disk)")
      ->capture_default_str();
  app.add_option("--max-finished-jobs", o.jobs.max_finished_jobs, "finished jobs kept in memory")
      ->capture_default_str();
  app.add_option("--max-failed-jobs", o.jobs.max_failed_jobs,
                 "failed/cancelled job records kept in memory")
      ->capture_default_str();
  app.add_option("--replica-id", o.jobs.peers.replica_id,
                 "names this replica in job ids ([a-z0-9-]; default: the host name)");
  app.add_option("--peers", f.peers,
                 "replica=host:port entries of peer replicas (comma-separated), to forward calls "
                 "on their job ids")
      ->delimiter(',');
  app.add_option("--peer-address-template", o.jobs.peers.address_template,
                 "address of a peer from its replica id, e.g. axeq-{replica}.axeq-headless:50051");
  app.add_option("--peer-tls-ca", o.jobs.peers.tls_ca_file,
                 "PEM CA to verify f.peers (default: --tls-client-ca; plaintext with --insecure)");
  app.add_option("--peer-tls-cert", o.jobs.peers.tls_cert_file,
                 "PEM client certificate shown to f.peers that require mTLS (default with "
                 "--tls-client-ca: --tls-cert)");
  app.add_option("--peer-tls-key", o.jobs.peers.tls_key_file,
                 "PEM key of --peer-tls-cert (default with --tls-client-ca: --tls-key)");
  app.add_option("--release-idle-seconds", f.release_idle_s,
                 "return freed job memory to the system after this long without uploads or jobs")
      ->capture_default_str();
}

// Limits, durable results, TLS and auth, shutdown.
void AddServiceFlags(CLI::App& app, axeq::server::ServerOptions& o, Flags& f) {
  app.add_option("--max-upload-mb", f.max_upload_mb, "largest accepted layer upload")
      ->capture_default_str();
  app.add_option("--results-dir", o.jobs.results_dir, "durable results (empty: memory only)");
  app.add_option("--retention-hours", o.jobs.retention_hours,
                 "delete durable results older than this")
      ->capture_default_str();
  app.add_option("--retention-max-mb", f.retention_mb, "and the oldest beyond this total")
      ->capture_default_str();
  app.add_option("--tls-cert", o.tls_cert_file, "PEM certificate chain");
  app.add_option("--tls-key", o.tls_key_file, "PEM private key");
  app.add_option("--tls-client-ca", o.tls_client_ca_file,
                 "PEM CA: require and verify client certificates (mTLS)");
  app.add_flag("--insecure", o.insecure, "serve plaintext (only when asked)");
  app.add_option("--tokens-file", o.tokens_file,
                 "'<token> <principal>' lines; enables bearer-token auth");
  app.add_option("--grace-seconds", f.grace, "on SIGTERM/SIGINT: how long running jobs may finish")
      ->capture_default_str();
  app.add_option("--drain-delay-seconds", f.drain_delay,
                 "on SIGTERM: report NOT_SERVING this long before refusing work")
      ->capture_default_str();
}

// 0, or 2 after printing what is wrong.
int ApplyFlags(const Flags& f, axeq::server::ServerOptions& o) {
  auto ms = [](double s) { return std::chrono::milliseconds(static_cast<int64_t>(s * 1000)); };
  o.jobs.release_idle = ms(f.release_idle_s);
  o.drain_delay = ms(f.drain_delay);
  o.jobs.memory_budget_bytes = static_cast<int64_t>(f.budget_mb * (1 << 20));
  o.jobs.upload_idle_timeout = ms(f.idle_s);
  o.jobs.finished_ttl = ms(f.finished_ttl_s);
  for (const std::string& p : f.peers) {
    const size_t eq = p.find('=');
    if (eq == std::string::npos) {
      std::fprintf(stderr, "axeq-server: --peers entry '%s' must be replica=host:port\n",
                   p.c_str());
      return 2;
    }
    o.jobs.peers.peers[p.substr(0, eq)] = p.substr(eq + 1);
  }
  o.jobs.retention_max_bytes = static_cast<int64_t>(f.retention_mb * (1 << 20));
  o.max_upload_bytes = static_cast<int64_t>(f.max_upload_mb * (1 << 20));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Built with tcmalloc (AXEQ_TCMALLOC) this does nothing. With glibc, each thread that allocates
  // gets its own heap arena (up to 8 per core): freed job buffers stay spread over them and RSS
  // creeps up under steady load (docs/load.md). Two arenas keep it flat; MALLOC_ARENA_MAX
  // overrides.
  if (!std::getenv("MALLOC_ARENA_MAX")) mallopt(M_ARENA_MAX, 2);
  axeq::server::ServerOptions o;
  Flags f;
  CLI::App app{"axeq-server: accumulator-aware quantization as a gRPC service"};
  AddJobFlags(app, o, f);
  AddServiceFlags(app, o, f);
  CLI11_PARSE(app, argc, argv);
  if (int rc = ApplyFlags(f, o); rc != 0) return rc;
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGINT, OnSignal);
  auto server = axeq::server::Server::Start(o);
  if (!server.ok()) {
    std::fprintf(stderr, "axeq-server: %s\n", server.status().ToString().c_str());
    return 1;
  }
  while (g_signal == 0) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  std::fprintf(stderr, "{\"event\":\"draining\",\"signal\":%d,\"grace_seconds\":%g}\n",
               static_cast<int>(g_signal), f.grace);
  (*server)->Drain(std::chrono::milliseconds(static_cast<int64_t>(f.grace * 1000)));
  std::fprintf(stderr, "{\"event\":\"stopped\"}\n");
  return 0;
}
