// The axeq gRPC server as an object: Start(options) binds (port 0 picks a free port), serves
// axeq.v1.Quantizer, grpc.health.v1 and reflection, and exposes Prometheus metrics; Drain() turns
// health to NOT_SERVING, stops admitting jobs and lets running ones finish within a grace period.
#ifndef AXEQ_SERVER_SERVER_H_
#define AXEQ_SERVER_SERVER_H_

#include <chrono>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "server/job_manager.h"

namespace grpc {
class Server;
class Service;
}

namespace axeq::server {

struct ServerOptions {
  std::string address = "0.0.0.0:50051";  // host:port; port 0 picks one
  std::string metrics_address;             // host:port for /metrics; empty = no metrics endpoint
  JobManagerOptions jobs;
  // Security: plaintext only when insecure is set; TLS needs cert and key, mTLS adds client_ca.
  bool insecure = false;
  std::string tls_cert_file, tls_key_file, tls_client_ca_file;
  std::string tokens_file;  // bearer tokens -> principals; empty = no authentication
  int64_t max_upload_bytes = 24ll << 30;  // per layer (weights + statistics or rows)
  bool log_json = true;                   // one JSON line per job event on stderr
  // On Drain: how long health reports NOT_SERVING while still accepting, so load balancers and
  // Kubernetes readiness probes move traffic away before the listener closes.
  std::chrono::milliseconds drain_delay{0};
};

class Metrics;

class Server {
 public:
  static absl::StatusOr<std::unique_ptr<Server>> Start(const ServerOptions& options);
  ~Server();
  int port() const { return port_; }
  int metrics_port() const;
  // Health NOT_SERVING, refuse new jobs, wait up to `grace` for jobs, cancel the rest, stop.
  void Drain(std::chrono::milliseconds grace);
  void Wait();

 private:
  Server() = default;
  int port_ = 0;
  std::chrono::milliseconds drain_delay_{0};
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<JobManager> jobs_;
  std::unique_ptr<grpc::Service> service_;
  std::unique_ptr<grpc::Server> server_;
};

}  // namespace axeq::server

#endif  // AXEQ_SERVER_SERVER_H_
