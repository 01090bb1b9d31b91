// Job ids that name their replica, and calls to peer replicas. An id is
// "<replica>-<boot:8 hex><nonce:24 hex>": the replica that owns the job (its --replica-id), the
// random boot id of the process that admitted it (so a restarted replica tells a job it lost from
// one that never existed) and 96 random bits. A replica that gets Watch/Fetch/Cancel for another
// replica's id forwards the call to that peer, found in the --peers map or through
// --peer-address-template (e.g. "axeq-{replica}.axeq-headless:50051"), with a bearer token of
// the caller's own principal (and, under mTLS, this replica's client certificate), and relays the
// answer.
#ifndef AXEQ_SERVER_REPLICAS_H_
#define AXEQ_SERVER_REPLICAS_H_

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "axeq/v1/axeq.grpc.pb.h"
#include "core/job_state.h"

namespace grpc {
class Channel;
class ClientContext;
}  // namespace grpc

namespace axeq::server {

inline constexpr size_t kMaxJobIdBytes = 128;

struct JobIdParts {
  std::string replica, boot, nonce;
};
// Splits an id at its last '-'; nullopt when it is not "<replica>-<32 hex>" with a valid replica.
std::optional<JobIdParts> ParseJobId(const std::string& id);
// True for 1..63 characters of [a-z0-9-] that start and end alphanumeric (a DNS label): a
// replica id can never steer a peer address out of the template's domain.
bool ValidReplicaId(const std::string& replica);
// Returns the host name lowered and cut to a valid replica id ("axeq" if there is none).
std::string DefaultReplicaId();

struct PeerOptions {
  std::string replica_id;                    // this replica
  std::map<std::string, std::string> peers;  // replica -> host:port (checked first)
  std::string address_template;              // "{replica}" is replaced by the replica id
  std::string tls_ca_file;                   // TLS to peers with this CA; empty = plaintext
  std::string tls_cert_file, tls_key_file;   // client certificate presented to peers (mTLS)
  // Returns a bearer token of `principal` (empty: none, when auth is off).
  std::function<std::string(const std::string& principal)> token_for;
};

class Peers {
 public:
  // INVALID_ARGUMENT for a bad replica id, peer entry or template (no "{replica}"), or a client
  // certificate without its key; NOT_FOUND for an unreadable CA, certificate or key.
  static absl::StatusOr<std::unique_ptr<Peers>> Create(PeerOptions options);
  const std::string& self() const { return options_.replica_id; }
  // NOT_FOUND when no map entry or template names the replica.
  absl::StatusOr<std::string> AddressOf(const std::string& replica) const;
  // Follows job `id` on its owner (Watch with the result): on_event for every event until the
  // stream ends; returns the peer's final status. `context` is set for cancellation (TryCancel).
  absl::Status Watch(const std::string& replica, const std::string& principal,
                     const std::string& id,
                     const std::function<void(const v1::JobEvent&)>& on_event,
                     const std::function<void(grpc::ClientContext*)>& started);
  absl::StatusOr<JobState> Cancel(const std::string& replica, const std::string& principal,
                                  const std::string& id);

 private:
  explicit Peers(PeerOptions options) : options_(std::move(options)) {}
  absl::StatusOr<std::shared_ptr<grpc::Channel>> ChannelTo(const std::string& replica);
  // A stub for a call to the replica's address; sets ctx's token of `principal`, forwarding
  // mark and deadline. UNAVAILABLE when the peer cannot be reached.
  absl::StatusOr<std::unique_ptr<v1::Quantizer::Stub>> StubFor(const std::string& replica,
                                                               const std::string& principal,
                                                               std::chrono::seconds deadline,
                                                               grpc::ClientContext* ctx);

  PeerOptions options_;
  std::string ca_pem_, cert_pem_, key_pem_;
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<grpc::Channel>> channels_;
};

}  // namespace axeq::server

#endif  // AXEQ_SERVER_REPLICAS_H_
