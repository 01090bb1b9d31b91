// Replica-naming job ids and forwarded calls to peer replicas.
#include "server/replicas.h"

#include <unistd.h>

#include <cctype>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "axeq/v1/axeq.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "proto/convert.h"

namespace axeq::server {

bool ValidReplicaId(const std::string& r) {
  if (r.empty() || r.size() > 63 || r.front() == '-' || r.back() == '-') return false;
  for (char c : r)
    if (!(std::islower(static_cast<unsigned char>(c)) ||
          std::isdigit(static_cast<unsigned char>(c)) || c == '-'))
      return false;
  return true;
}

std::optional<JobIdParts> ParseJobId(const std::string& id) {
  const size_t dash = id.rfind('-');
  if (id.size() > kMaxJobIdBytes || dash == std::string::npos || id.size() - dash - 1 != 32)
    return std::nullopt;
  JobIdParts p{id.substr(0, dash), id.substr(dash + 1, 8), id.substr(dash + 9)};
  if (!ValidReplicaId(p.replica)) return std::nullopt;
  for (char c : id.substr(dash + 1))
    if (!std::isxdigit(static_cast<unsigned char>(c))) return std::nullopt;
  return p;
}

std::string DefaultReplicaId() {
  char host[256] = {0};
  if (gethostname(host, sizeof(host) - 1) != 0) return "axeq";
  std::string r;
  for (const char* c = host; *c && *c != '.' && r.size() < 63; ++c) {
    const char l = static_cast<char>(std::tolower(static_cast<unsigned char>(*c)));
    r.push_back(std::isalnum(static_cast<unsigned char>(l)) ? l : '-');
  }
  while (!r.empty() && r.back() == '-') r.pop_back();
  while (!r.empty() && r.front() == '-') r.erase(r.begin());
  return ValidReplicaId(r) ? r : "axeq";
}

absl::StatusOr<std::unique_ptr<Peers>> Peers::Create(PeerOptions options) {
  if (!ValidReplicaId(options.replica_id))
    return absl::InvalidArgumentError(
        absl::StrCat("--replica-id '", options.replica_id,
                     "' must be 1..63 characters of [a-z0-9-], starting and ending alphanumeric"));
  for (const auto& [replica, address] : options.peers)
    if (!ValidReplicaId(replica) || address.empty())
      return absl::InvalidArgumentError(absl::StrCat("--peers entry '", replica, "=", address,
                                                     "' needs a valid replica id and an address"));
  if (!options.address_template.empty() &&
      options.address_template.find("{replica}") == std::string::npos)
    return absl::InvalidArgumentError(
        absl::StrCat("--peer-address-template '", options.address_template, "' has no {replica}"));
  if (options.tls_cert_file.empty() != options.tls_key_file.empty())
    return absl::InvalidArgumentError("--peer-tls-cert and --peer-tls-key go together");
  std::unique_ptr<Peers> p(new Peers(std::move(options)));
  const std::pair<const std::string*, std::string*> files[] = {
      {&p->options_.tls_ca_file, &p->ca_pem_},
      {&p->options_.tls_cert_file, &p->cert_pem_},
      {&p->options_.tls_key_file, &p->key_pem_}};
  for (const auto& [path, pem] : files) {
    if (path->empty()) continue;
    std::ifstream in(*path);
    if (!in) return absl::NotFoundError(absl::StrCat("cannot read peer TLS file ", *path));
    std::stringstream ss;
    ss << in.rdbuf();
    *pem = ss.str();
  }
  return p;
}

absl::StatusOr<std::string> Peers::AddressOf(const std::string& replica) const {
  auto it = options_.peers.find(replica);
  if (it != options_.peers.end()) return it->second;
  if (!options_.address_template.empty() && ValidReplicaId(replica))
    return absl::StrReplaceAll(options_.address_template, {{"{replica}", replica}});
  return absl::NotFoundError(absl::StrCat(
      "replica '", replica, "' is not a known peer (see --peers / --peer-address-template)"));
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> Peers::ChannelTo(const std::string& replica) {
  auto address = AddressOf(replica);
  if (!address.ok()) return address.status();
  std::shared_ptr<grpc::Channel> channel;
  {
    std::lock_guard<std::mutex> l(mu_);
    auto& ch = channels_[*address];
    if (!ch) {
      std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
      if (!ca_pem_.empty() || !cert_pem_.empty()) {
        grpc::SslCredentialsOptions ssl;
        ssl.pem_root_certs = ca_pem_;  // empty: the system roots
        ssl.pem_cert_chain = cert_pem_;
        ssl.pem_private_key = key_pem_;
        creds = grpc::SslCredentials(ssl);
      }
      grpc::ChannelArguments args;
      args.SetMaxReceiveMessageSize(kMaxMessageBytes);
      // A restarted peer is reached again quickly (gRPC's default first backoff is 1 s, up to 120
      // s).
      args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
      args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
      args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
      ch = grpc::CreateCustomChannel(*address, creds, args);
    }
    channel = ch;
  }
  // Connect (or reconnect after a restart) within a few seconds, else the peer is down.
  if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(5)))
    return absl::UnavailableError(
        absl::StrCat("replica ", replica, " at ", *address, " is unreachable"));
  return channel;
}

absl::StatusOr<std::unique_ptr<v1::Quantizer::Stub>> Peers::StubFor(const std::string& replica,
                                                                    const std::string& principal,
                                                                    std::chrono::seconds deadline,
                                                                    grpc::ClientContext* ctx) {
  auto ch = ChannelTo(replica);
  if (!ch.ok()) return ch.status();
  const std::string token = options_.token_for ? options_.token_for(principal) : "";
  if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
  ctx->AddMetadata("axeq-forwarded-by", options_.replica_id);
  ctx->set_deadline(std::chrono::system_clock::now() + deadline);
  return v1::Quantizer::NewStub(*ch);
}

absl::Status Peers::Watch(const std::string& replica, const std::string& principal,
                          const std::string& id,
                          const std::function<void(const v1::JobEvent&)>& on_event,
                          const std::function<void(grpc::ClientContext*)>& started) {
  grpc::ClientContext ctx;
  auto stub = StubFor(replica, principal, std::chrono::hours(24), &ctx);
  if (!stub.ok()) return stub.status();
  if (started) started(&ctx);
  v1::WatchRequest req;
  req.set_job_id(id);
  req.set_include_result(true);
  auto reader = (*stub)->Watch(&ctx, req);
  v1::JobEvent e;
  while (reader->Read(&e)) on_event(e);
  const absl::Status s = FromGrpc(reader->Finish());
  if (s.code() == absl::StatusCode::kUnavailable)
    return absl::UnavailableError(
        absl::StrCat("replica ", replica, " that owns job ", id, " is unreachable: ", s.message()));
  return s;
}

absl::StatusOr<JobState> Peers::Cancel(const std::string& replica, const std::string& principal,
                                       const std::string& id) {
  grpc::ClientContext ctx;
  auto stub = StubFor(replica, principal, std::chrono::seconds(30), &ctx);
  if (!stub.ok()) return stub.status();
  v1::CancelRequest req;
  req.set_job_id(id);
  v1::CancelResponse resp;
  const absl::Status s = FromGrpc((*stub)->Cancel(&ctx, req, &resp));
  if (!s.ok()) return s;
  return DecodeState(resp.state());
}

}  // namespace axeq::server
