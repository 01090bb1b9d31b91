// gRPC client of axeq.v1.Quantizer: the generated stub, messages made and read by proto/.
#include "client/remote.h"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "proto/convert.h"

namespace axeq {
namespace {

absl::StatusOr<std::string> Slurp(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Codes worth another attempt, possibly on another replica: the server or the network went away
// (UNAVAILABLE), the server is full for now (RESOURCE_EXHAUSTED), or a replica lost the job in a
// restart (ABORTED).
bool Retryable(absl::StatusCode c, bool aborted) {
  return c == absl::StatusCode::kUnavailable || c == absl::StatusCode::kResourceExhausted ||
         (aborted && c == absl::StatusCode::kAborted);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> Credentials(
    const RemoteOptions& o, grpc::ChannelArguments* args) {
  if (!o.tls && o.tls_ca_file.empty()) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions ssl;
  if (!o.tls_ca_file.empty()) {
    auto ca = Slurp(o.tls_ca_file);
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *ca;
  }
  if (!o.tls_cert_file.empty()) {
    auto cert = Slurp(o.tls_cert_file);
    auto key = Slurp(o.tls_key_file);
    if (!cert.ok()) return cert.status();
    if (!key.ok()) return key.status();
    ssl.pem_cert_chain = *cert;
    ssl.pem_private_key = *key;
  }
  if (!o.tls_server_name.empty()) args->SetSslTargetNameOverride(o.tls_server_name);
  return grpc::SslCredentials(ssl);
}

// The plan of a layer's upload (proto/upload.h decides the tensors).
UploadPlan PlanFor(const RemoteLayer& l, const std::string& idempotency_key) {
  UploadPlan p;
  p.layer_name = l.name;
  p.output_channels = l.weights.rows();
  p.inputs = l.weights.cols();
  p.options = l.options;
  p.activations = l.activations;
  p.rows = l.stats == nullptr;
  p.has_bias = l.bias != nullptr;
  if (l.stats) {
    p.samples = l.stats->samples;
    p.has_xx = l.stats->xx.size() != 0;
    p.has_means = l.stats->mean_x.size() == p.inputs && l.stats->mean_xq.size() == p.inputs;
  }
  p.idempotency_key = idempotency_key;
  p.detach = l.detach;
  PlanTensors(&p);
  return p;
}

// The caller's memory behind one planned tensor (null: not available, not sent).
const float* TensorData(const RemoteLayer& l, const float* weights, v1::TensorKind kind) {
  const LayerStats* s = l.stats;
  switch (kind) {
    case v1::TENSOR_KIND_WEIGHT:
      return weights;
    case v1::TENSOR_KIND_BIAS:
      return l.bias->data();
    case v1::TENSOR_KIND_GRAM:
      return s->gram.data();
    case v1::TENSOR_KIND_CROSS:
      return s->cross.size() ? s->cross.data() : nullptr;
    case v1::TENSOR_KIND_XX:
      return s->xx.data();
    case v1::TENSOR_KIND_MEAN_X:
      return s->mean_x.data();
    case v1::TENSOR_KIND_MEAN_XQ:
      return s->mean_xq.data();
    default:
      return nullptr;
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<RemoteClient>> RemoteClient::Connect(const RemoteOptions& o) {
  if (o.address.empty()) return absl::InvalidArgumentError("no server address");
  std::unique_ptr<RemoteClient> c(new RemoteClient(o));
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(kMaxUploadMessageBytes);
  if (!o.load_balancing.empty()) args.SetLoadBalancingPolicyName(o.load_balancing);
  auto creds = Credentials(o, &args);
  if (!creds.ok()) return creds.status();
  c->channel_ = grpc::CreateCustomChannel(o.address, *creds, args);
  c->stub_ = v1::Quantizer::NewStub(c->channel_);
  return c;
}

void RemoteClient::Prepare(grpc::ClientContext* ctx) const {
  if (!options_.token.empty()) ctx->AddMetadata("authorization", "Bearer " + options_.token);
  ctx->set_deadline(
      std::chrono::system_clock::now() +
      std::chrono::milliseconds(static_cast<int64_t>(options_.deadline_seconds * 1000)));
}

namespace {

// Reads events to the end of the call; the result, or the call's / job's error.
template <typename Reader>
absl::StatusOr<QuantizedLayer> Collect(
    Reader* reader, ResultDecoder* decoder,
    const std::function<void(double, const std::string&)>& progress) {
  v1::JobEvent e;
  absl::Status bad;
  auto report = [&](const JobSnapshot& p) {
    if (progress) progress(p.fraction, WireStateName(p.state));
  };
  while (reader->Read(&e))
    if (bad.ok()) bad = decoder->Add(e, report);
  const grpc::Status st = reader->Finish();
  if (!st.ok()) return FromGrpc(st);
  if (!bad.ok()) return bad;
  return decoder->Finish();
}

int RetryAfterMs(const grpc::ClientContext& ctx) {
  const auto& tr = ctx.GetServerTrailingMetadata();
  auto it = tr.find("axeq-retry-after-ms");
  return it == tr.end() ? 0 : std::atoi(std::string(it->second.data(), it->second.size()).c_str());
}

}  // namespace

absl::StatusOr<QuantizedLayer> RemoteClient::QuantizeOnce(
    const RemoteLayer& l, const std::string& idempotency_key,
    const std::function<void(double, const std::string&)>& progress, int* retry_after_ms) {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  auto stream = stub_->Quantize(&ctx);
  const UploadPlan plan = PlanFor(l, idempotency_key);
  const int64_t k = plan.inputs;
  // The weights go out from the caller's memory when they are contiguous rows.
  MatrixXf copy;
  const float* w = l.weights.data();
  if (l.weights.outerStride() != k) {
    copy = l.weights;
    w = copy.data();
  }
  // The client libraries send an optional tensor (OPTQ's CROSS) only with XX (proto/upload.h).
  std::vector<std::pair<const UploadTensor*, const float*>> sends;
  int64_t total = 0;
  for (const UploadTensor& t : plan.tensors) {
    const float* data = TensorData(l, w, t.kind);
    if (!data || (t.optional && !plan.has_xx)) continue;
    sends.emplace_back(&t, data);
    total += t.bytes();
  }
  if (plan.rows) total += 4 * l.x->size() * (l.xq ? 2 : 1);
  // Upload progress ("UPLOADING", fraction of the bytes), at most every 100 ms and at the end.
  int64_t sent = 0, chunks = 0;
  auto last_report = std::chrono::steady_clock::now();
  v1::UploadRequest req = HeaderMessage(plan);
  bool alive = stream->Write(req);
  auto write = [&](int64_t bytes) {
    alive = alive && stream->Write(req);
    ++chunks;
    sent += bytes;
    const auto now = std::chrono::steady_clock::now();
    if (progress && (sent == total || now - last_report > std::chrono::milliseconds(100))) {
      progress(total > 0 ? static_cast<double>(sent) / static_cast<double>(total) : 1.0,
               "UPLOADING");
      last_report = now;
    }
  };
  for (auto [t, data] : sends) {  // GRAM first: the server factors it while the rest arrives
    for (auto [b, e] : ChunkRanges(t->bytes(), kChunkBytes, 4)) {
      if (!alive) break;
      SetTensorChunk(t->kind, b / 4, reinterpret_cast<const char*>(data) + b, e - b, &req);
      write(e - b);
    }
  }
  if (plan.rows) {
    const int64_t d = l.x->rows(), per = RowsPerChunk(k, l.xq != nullptr);
    for (int64_t r0 = 0; r0 < d && alive; r0 += per) {
      const int64_t n = std::min(per, d - r0);
      SetRowsChunk(r0, n, k, l.x->data(), l.xq ? l.xq->data() : nullptr, &req);
      write(4 * n * k * (l.xq ? 2 : 1));
    }
  }
  if (alive) stream->Write(CommitMessage(chunks));
  stream->WritesDone();
  ResultDecoder decoder;
  auto res = Collect(stream.get(), &decoder, progress);
  *retry_after_ms = RetryAfterMs(ctx);
  return res;
}

absl::StatusOr<QuantizedLayer> RemoteClient::WithRetries(
    const std::function<absl::StatusOr<QuantizedLayer>(int*)>& attempt, bool retry_aborted) {
  thread_local std::mt19937 jitter(std::random_device{}());
  const auto start = std::chrono::steady_clock::now();
  const auto budget =
      std::chrono::milliseconds(static_cast<int64_t>(options_.retry_seconds * 1000));
  absl::Status last;
  int n = 0;
  for (;; ++n) {
    int retry_after = 0;
    auto r = attempt(&retry_after);
    if (r.ok() || !Retryable(r.status().code(), retry_aborted)) return r;
    last = r.status();
    const auto backoff =
        std::chrono::milliseconds(std::max(retry_after, std::min(10000, 250 << std::min(n, 6))) +
                                  static_cast<int>(jitter() % 250));
    const bool capped = options_.max_attempts > 0 && n + 1 >= options_.max_attempts;
    if (capped || std::chrono::steady_clock::now() + backoff - start > budget) break;
    std::this_thread::sleep_for(backoff);
  }
  const double waited =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return absl::Status(last.code(), absl::StrCat(last.message(), " (gave up after ", n + 1,
                                                " attempts in ", static_cast<int>(waited), " s)"));
}

absl::StatusOr<QuantizedLayer> RemoteClient::Quantize(
    const RemoteLayer& layer, const std::function<void(double, const std::string&)>& progress) {
  // The layer is used in place, never copied: a copy of its Eigen::Ref would point into the
  // original's private buffer when the weights were bound through a conversion.
  std::string key = layer.idempotency_key;
  if (key.empty()) {  // every retry resubmits under this key: a lost response is safe
    std::random_device rd;
    key = absl::StrCat(layer.name, "/", absl::Hex(rd()), absl::Hex(rd()), absl::Hex(rd()),
                       absl::Hex(rd()));
  }
  return WithRetries(
      [&](int* retry_after) { return QuantizeOnce(layer, key, progress, retry_after); },
      /*retry_aborted=*/true);
}

absl::StatusOr<QuantizedLayer> RemoteClient::FetchOnce(
    const std::string& job_id, const std::function<void(double, const std::string&)>& progress,
    int* retry_after_ms) {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  v1::WatchRequest req;
  req.set_job_id(job_id);
  req.set_include_result(true);
  auto reader = stub_->Watch(&ctx, req);
  ResultDecoder decoder;
  auto res = Collect(reader.get(), &decoder, progress);
  *retry_after_ms = RetryAfterMs(ctx);
  if (res.ok()) res->run.job_id = job_id;
  return res;
}

absl::StatusOr<QuantizedLayer> RemoteClient::Fetch(
    const std::string& job_id, const std::function<void(double, const std::string&)>& progress) {
  // ABORTED here means the job was lost in a restart: resubmitting it is the caller's business.
  return WithRetries([&](int* retry_after) { return FetchOnce(job_id, progress, retry_after); },
                     /*retry_aborted=*/false);
}

absl::StatusOr<JobState> RemoteClient::Cancel(const std::string& job_id) {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  v1::CancelRequest req;
  req.set_job_id(job_id);
  v1::CancelResponse resp;
  auto st = stub_->Cancel(&ctx, req, &resp);
  if (!st.ok()) return FromGrpc(st);
  return DecodeState(resp.state());
}

absl::StatusOr<std::vector<v1::JobInfo>> RemoteClient::List() {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  v1::ListJobsResponse resp;
  auto st = stub_->ListJobs(&ctx, v1::ListJobsRequest{}, &resp);
  if (!st.ok()) return FromGrpc(st);
  return std::vector<v1::JobInfo>(resp.jobs().begin(), resp.jobs().end());
}

}  // namespace axeq
