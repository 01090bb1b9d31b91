// The C++ client of axeq-server: connect to any gRPC target (one server, `ipv4:H1:P1,H2:P2`,
// `dns:///headless-service:50051`) with client-side round-robin over its addresses, plaintext,
// TLS, mTLS or a bearer token; upload one layer as calibration rows or statistics in bounded
// chunks, follow progress, receive the chunked result. Retries UNAVAILABLE, RESOURCE_EXHAUSTED and
// ABORTED with exponential backoff (honouring axeq-retry-after-ms) for a configurable total that
// outlasts a pod restart, resubmitting under the same idempotency key. Also watch / fetch /
// cancel / list by job id. Thread-safe: layers may be quantized from several threads at once.
#ifndef AXEQ_CLIENT_REMOTE_H_
#define AXEQ_CLIENT_REMOTE_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "axeq/v1/axeq.grpc.pb.h"
#include "core/job_state.h"
#include "core/layer.h"

namespace axeq {

struct RemoteOptions {
  std::string address;  // any gRPC target: host:port, ipv4:h1:p1,h2:p2, dns:///name:port
  std::string load_balancing = "round_robin";  // gRPC LB policy over the target's addresses
  bool tls = false;
  std::string tls_ca_file;                  // PEM roots (default: system roots)
  std::string tls_cert_file, tls_key_file;  // client certificate for mTLS
  std::string tls_server_name;              // override the name checked against the certificate
  std::string token;                        // bearer token
  double deadline_seconds = 3600;           // per attempt of a layer
  // Retries of UNAVAILABLE / RESOURCE_EXHAUSTED / ABORTED: backoff from 250 ms doubling to 10 s
  // (+ jitter, at least the server's axeq-retry-after-ms) until retry_seconds have passed since
  // the first attempt; max_attempts > 0 also caps the attempts (1 = no retry).
  double retry_seconds = 120;
  int max_attempts = 0;
};

// A view of the caller's layer: weights, bias, x, xq and stats are not owned and must outlive the
// Quantize call that reads them (a RemoteLayer made from a temporary dangles once the full
// expression ends). Bind `weights` to a float column-major matrix or block: a Ref bound through a
// conversion holds a private copy that copies of the RemoteLayer do not own.
struct RemoteLayer {
  std::string name;
  Eigen::Ref<const MatrixXf> weights;
  const Eigen::VectorXf* bias = nullptr;
  // Rows mode: x and xq [D, K] (xq null: the server quantizes x with `activations`); statistics
  // mode: stats (then x/xq unused).
  const MatrixXf* x = nullptr;
  const MatrixXf* xq = nullptr;
  const LayerStats* stats = nullptr;
  ActivationQuantizer activations;
  // options.quality_report = false skips the relative errors (rows mode then accumulates no X^T X).
  LayerOptions options;
  bool detach = false;
  std::string idempotency_key;  // empty: one is generated per Quantize call (retries reuse it)
};

class RemoteClient {
 public:
  static absl::StatusOr<std::unique_ptr<RemoteClient>> Connect(const RemoteOptions& options);
  // progress(fraction, state): "UPLOADING" with the fraction of bytes sent while the upload runs,
  // then the server's events (JOB_STATE_* names) with the fraction of the sweep.
  absl::StatusOr<QuantizedLayer> Quantize(
      const RemoteLayer& layer,
      const std::function<void(double, const std::string&)>& progress = {});
  absl::StatusOr<QuantizedLayer> Fetch(
      const std::string& job_id,
      const std::function<void(double, const std::string&)>& progress = {});
  absl::StatusOr<JobState> Cancel(const std::string& job_id);
  absl::StatusOr<std::vector<v1::JobInfo>> List();

 private:
  explicit RemoteClient(const RemoteOptions& o) : options_(o) {}
  void Prepare(grpc::ClientContext* ctx) const;
  absl::StatusOr<QuantizedLayer> QuantizeOnce(
      const RemoteLayer& layer, const std::string& idempotency_key,
      const std::function<void(double, const std::string&)>& progress, int* retry_after_ms);
  absl::StatusOr<QuantizedLayer> FetchOnce(
      const std::string& job_id, const std::function<void(double, const std::string&)>& progress,
      int* retry_after_ms);
  // Calls attempt until it succeeds, fails for good, or the retry budget is spent.
  absl::StatusOr<QuantizedLayer> WithRetries(
      const std::function<absl::StatusOr<QuantizedLayer>(int*)>& attempt, bool retry_aborted);
  RemoteOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Quantizer::Stub> stub_;
};

}  // namespace axeq

#endif  // AXEQ_CLIENT_REMOTE_H_
