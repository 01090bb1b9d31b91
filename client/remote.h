// The C++ client of axeq-server: connect (plaintext, TLS, mTLS, bearer token), upload one layer as
// calibration rows or statistics in bounded chunks, follow progress, receive the chunked result,
// with retries (exponential backoff; honours axeq-retry-after-ms) on UNAVAILABLE and
// RESOURCE_EXHAUSTED, and per-layer deadlines. Also watch / fetch / cancel / list by job id.
#ifndef AXEQ_CLIENT_REMOTE_H_
#define AXEQ_CLIENT_REMOTE_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "axeq/v1/axeq.grpc.pb.h"
#include "core/layer.h"

namespace axeq {

struct RemoteOptions {
  std::string address;            // host:port
  bool tls = false;
  std::string tls_ca_file;        // PEM roots (default: system roots)
  std::string tls_cert_file, tls_key_file;  // client certificate for mTLS
  std::string tls_server_name;    // override the name checked against the certificate
  std::string token;              // bearer token
  double deadline_seconds = 3600; // per layer
  int max_attempts = 5;
};

// A finished remote job: the same fields the embedded engine gives, plus the job id.
struct RemoteResult {
  std::string job_id;
  std::string layer_name;
  LayerResult result;
  ActivationQuantizer activations;
  int64_t samples = 0;
  double seconds = 0;
};

struct RemoteLayer {
  std::string name;
  Eigen::Ref<const MatrixXf> weights;
  const Eigen::VectorXf* bias = nullptr;
  // Rows mode: x and xq [D, K]; statistics mode: stats (then x/xq unused).
  const MatrixXf* x = nullptr;
  const MatrixXf* xq = nullptr;
  const LayerStats* stats = nullptr;
  ActivationQuantizer activations;
  LayerOptions options;
  bool want_relative_error = true;
  bool detach = false;
  std::string idempotency_key;
};

class RemoteClient {
 public:
  static absl::StatusOr<std::unique_ptr<RemoteClient>> Connect(const RemoteOptions& options);
  // progress(fraction, state): "UPLOADING" with the fraction of bytes sent while the upload runs,
  // then the server's events (JOB_STATE_* names) with the fraction of the sweep.
  absl::StatusOr<RemoteResult> Quantize(const RemoteLayer& layer,
                                        const std::function<void(double, const std::string&)>& progress = {});
  absl::StatusOr<RemoteResult> Fetch(const std::string& job_id,
                                     const std::function<void(double, const std::string&)>& progress = {});
  absl::StatusOr<v1::JobState> Cancel(const std::string& job_id);
  absl::StatusOr<std::vector<v1::JobInfo>> List();

 private:
  explicit RemoteClient(const RemoteOptions& o) : options_(o) {}
  void Prepare(grpc::ClientContext* ctx) const;
  template <typename Reader>
  absl::StatusOr<RemoteResult> Collect(Reader* reader, const std::function<void(double, const std::string&)>& progress,
                                       std::string* job_id);
  absl::StatusOr<RemoteResult> QuantizeOnce(const RemoteLayer& layer,
                                            const std::function<void(double, const std::string&)>& progress,
                                            int* retry_after_ms);
  RemoteOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Quantizer::Stub> stub_;
  // Quantize is called with raw buffers so tensor chunks go out without copies (proto/wire.h).
  std::unique_ptr<grpc::internal::RpcMethod> quantize_method_;
};

}  // namespace axeq

#endif  // AXEQ_CLIENT_REMOTE_H_
