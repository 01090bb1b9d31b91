// Server wiring: credentials, services, health, reflection, metrics and structured logs.
#include "server/server.h"

#include <fstream>
#include <iostream>
#include <mutex>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "nlohmann/json.hpp"
#include "proto/convert.h"
#include "server/auth.h"
#include "server/metrics.h"
#include "server/service.h"

namespace axeq::server {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path, const char* what) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", what, " ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void LogJson(const nlohmann::json& j) {
  static std::mutex mu;
  std::lock_guard<std::mutex> l(mu);
  std::cerr << j.dump() << std::endl;
}

}  // namespace

Server::~Server() {
  if (server_) server_->Shutdown(std::chrono::system_clock::now());
  jobs_.reset();  // joins workers before the service and metrics they report to go away
}

int Server::metrics_port() const { return metrics_ ? metrics_->port() : 0; }

namespace {

// TLS (optionally requiring client certificates) from the PEM files, or plaintext when asked.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(const ServerOptions& o) {
  if (!o.tls_cert_file.empty() || !o.tls_key_file.empty()) {
    auto cert = ReadFile(o.tls_cert_file, "TLS certificate");
    if (!cert.ok()) return cert.status();
    auto key = ReadFile(o.tls_key_file, "TLS key");
    if (!key.ok()) return key.status();
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({*key, *cert});
    if (!o.tls_client_ca_file.empty()) {
      auto ca = ReadFile(o.tls_client_ca_file, "client CA");
      if (!ca.ok()) return ca.status();
      ssl.pem_root_certs = *ca;
      ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
    }
    return grpc::SslServerCredentials(ssl);
  } else if (o.insecure) {
    return grpc::InsecureServerCredentials();
  } else {
    return absl::InvalidArgumentError(
        "no TLS certificate/key given: pass --tls-cert and --tls-key, or --insecure for plaintext");
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const ServerOptions& o) {
  std::unique_ptr<Server> s(new Server());
  s->drain_delay_ = o.drain_delay;
  auto auth = Authenticator::FromFile(o.tokens_file);
  if (!auth.ok()) return auth.status();
  auto creds = ServerCredentials(o);
  if (!creds.ok()) return creds.status();
  JobManagerOptions jo = o.jobs;
  // Calls forwarded to the replica that owns a job carry a token of the caller's own principal.
  jo.peers.token_for = [tokens = std::make_shared<Authenticator>(*auth)](const std::string& p) {
    return tokens->TokenFor(p);
  };
  if (jo.peers.tls_ca_file.empty() && !o.insecure) jo.peers.tls_ca_file = o.tls_client_ca_file;
  // Peers that require client certificates (mTLS) are shown this replica's own by default.
  if (jo.peers.tls_cert_file.empty() && !o.tls_client_ca_file.empty() && !o.insecure) {
    jo.peers.tls_cert_file = o.tls_cert_file;
    jo.peers.tls_key_file = o.tls_key_file;
  }
  auto jobs = JobManager::Create(jo);
  if (!jobs.ok()) return jobs.status();
  s->jobs_ = std::move(jobs).value();
  const int workers = s->jobs_->options().workers;
  auto metrics = Metrics::Create(o.metrics_address, workers);
  if (!metrics.ok()) return metrics.status();
  s->metrics_ = std::move(metrics).value();
  Metrics* m = s->metrics_.get();
  const bool log = o.log_json;
  JobManager::Hooks hooks;
  hooks.on_event = [log](const Job& j, const std::string& event) {
    if (log)
      LogJson({{"ts_ms", UnixMs()},
               {"job", j.id},
               {"principal", j.principal},
               {"layer", j.layer_name},
               {"event", event}});
  };
  hooks.on_load = [m](int q, int r, int64_t b) { m->Load(q, r, b); };
  hooks.on_finished = [m](const Job& j, double seconds, bool safe) {
    m->Finished(WireStateName(j.state), seconds, j.state == JobState::kSucceeded, safe);
  };
  hooks.on_memory_released = [m] { m->MemoryReleased(); };
  s->jobs_->SetHooks(hooks);
  s->service_ =
      MakeQuantizerService(s->jobs_.get(), m, std::move(auth).value(), o.max_upload_bytes);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(o.address, *creds, &s->port_);
  builder.RegisterService(s->service_.get());
  builder.SetMaxReceiveMessageSize(8 << 20);
  builder.SetMaxSendMessageSize(kMaxMessageBytes);
  s->server_ = builder.BuildAndStart();
  if (!s->server_ || s->port_ == 0)
    return absl::UnavailableError(absl::StrCat("cannot listen on ", o.address));
  s->server_->GetHealthCheckService()->SetServingStatus(true);
  // Per service too (Drain's SetServingStatus(false) turns both to NOT_SERVING).
  s->server_->GetHealthCheckService()->SetServingStatus("axeq.v1.Quantizer", true);
  if (log)
    LogJson({{"ts_ms", UnixMs()},
             {"event", "serving"},
             {"port", s->port_},
             {"metrics_port", s->metrics_port()},
             {"tls", !o.tls_cert_file.empty()},
             {"auth", !o.tokens_file.empty()},
             {"replica", s->jobs_->replica_id()},
             {"workers", workers},
             {"compute_threads", s->jobs_->options().compute_threads},
             {"memory_budget_mb", s->jobs_->options().memory_budget_bytes >> 20}});
  return s;
}

void Server::Drain(std::chrono::milliseconds grace) {
  if (!server_) return;
  server_->GetHealthCheckService()->SetServingStatus(false);
  std::this_thread::sleep_for(drain_delay_);
  jobs_->Drain(grace);
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
}

void Server::Wait() {
  if (server_) server_->Wait();
}

}  // namespace axeq::server
