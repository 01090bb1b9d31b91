// axeq-health-probe: asks a gRPC server's grpc.health.v1 service whether it is SERVING, over TLS
// (verifying the server against a mounted CA, optionally presenting a client certificate for mTLS)
// or plaintext with --insecure. Made for Kubernetes exec probes, whose built-in grpc probe cannot
// speak TLS. Exit status: 0 SERVING (or any answer with --any-status), 1 answered but not SERVING,
// 2 unreachable / RPC failed / bad flags. One line on stderr says why when it is not 0.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "CLI/CLI.hpp"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/support/log.h"
#include "grpcpp/grpcpp.h"

namespace {

constexpr int kServing = 0, kNotServing = 1, kFailed = 2;

// Drops gRPC's own log lines (e.g. the TLS handshake error): the failed call's status, printed
// once, already says what went wrong, and probe output ends up in the pod's events.
void DropGrpcLog(gpr_log_func_args*) {}

struct Flags {
  std::string address = "127.0.0.1:50051";
  std::string service;  // "" = the server as a whole
  std::string ca_file, cert_file, key_file, server_name;
  bool insecure = false;
  bool any_status = false;  // liveness: an answer of any status proves the server is alive
  double timeout_seconds = 3;
};

bool ReadFile(const std::string& path, const char* what, std::string* out) {
  std::ifstream in(path);
  if (!in) {
    std::fprintf(stderr, "axeq-health-probe: cannot read %s %s\n", what, path.c_str());
    return false;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  *out = ss.str();
  return true;
}

// Builds the channel credentials the flags ask for; nullptr (after a message) when a file is
// unreadable.
std::shared_ptr<grpc::ChannelCredentials> Credentials(const Flags& f) {
  if (f.insecure) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions ssl;
  if (!f.ca_file.empty() && !ReadFile(f.ca_file, "CA", &ssl.pem_root_certs)) return nullptr;
  if (!f.cert_file.empty() && !ReadFile(f.cert_file, "client certificate", &ssl.pem_cert_chain))
    return nullptr;
  if (!f.key_file.empty() && !ReadFile(f.key_file, "client key", &ssl.pem_private_key))
    return nullptr;
  return grpc::SslCredentials(ssl);
}

int Probe(const Flags& f) {
  if (!f.insecure && f.ca_file.empty()) {
    std::fprintf(
        stderr,
        "axeq-health-probe: pass --ca (the CA that signed the server certificate) or --insecure\n");
    return kFailed;
  }
  if (f.cert_file.empty() != f.key_file.empty()) {
    std::fprintf(stderr, "axeq-health-probe: --cert and --key go together\n");
    return kFailed;
  }
  auto creds = Credentials(f);
  if (!creds) return kFailed;
  grpc::ChannelArguments args;
  if (!f.server_name.empty()) args.SetSslTargetNameOverride(f.server_name);
  auto channel = grpc::CreateCustomChannel(f.address, creds, args);
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(static_cast<int64_t>(f.timeout_seconds * 1000)));
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(f.service);
  grpc::health::v1::HealthCheckResponse resp;
  const grpc::Status s = stub->Check(&ctx, req, &resp);
  if (!s.ok()) {
    std::fprintf(stderr, "axeq-health-probe: %s: health check failed: code %d: %s\n",
                 f.address.c_str(), static_cast<int>(s.error_code()), s.error_message().c_str());
    return kFailed;
  }
  if (resp.status() != grpc::health::v1::HealthCheckResponse::SERVING && !f.any_status) {
    std::fprintf(stderr, "axeq-health-probe: %s: %s\n", f.address.c_str(),
                 grpc::health::v1::HealthCheckResponse::ServingStatus_Name(resp.status()).c_str());
    return kNotServing;
  }
  return kServing;
}

}  // namespace

int main(int argc, char** argv) {
  Flags f;
  CLI::App app{
      "axeq-health-probe: exit 0 when a gRPC server's grpc.health.v1 Check answers SERVING"};
  app.add_option("--address", f.address, "host:port of the server")->capture_default_str();
  app.add_option("--service", f.service, "service name to check (empty: the whole server)");
  app.add_option("--ca", f.ca_file,
                 "PEM CA that signed the server certificate (required unless --insecure)");
  app.add_option("--cert", f.cert_file, "PEM client certificate, when the server requires mTLS");
  app.add_option("--key", f.key_file, "PEM client key, with --cert");
  app.add_option("--server-name", f.server_name,
                 "name to verify in the server certificate (default: the host in --address)");
  app.add_flag("--insecure", f.insecure, "plaintext, no TLS");
  app.add_flag(
      "--any-status", f.any_status,
      "exit 0 on any answer, SERVING or not (liveness: a draining server is alive, not ready)");
  app.add_option("--timeout-seconds", f.timeout_seconds, "deadline of the check")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : kFailed;
  }
  gpr_set_log_function(DropGrpcLog);
  return Probe(f);
}
