// gRPC client of axeq.v1.Quantizer.
#include "client/remote.h"

#include <chrono>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "proto/convert.h"
#include "proto/wire.h"

namespace axeq {
namespace {

absl::StatusOr<std::string> Slurp(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool Retryable(absl::StatusCode c) {
  return c == absl::StatusCode::kUnavailable || c == absl::StatusCode::kResourceExhausted;
}

}  // namespace

absl::StatusOr<std::unique_ptr<RemoteClient>> RemoteClient::Connect(const RemoteOptions& o) {
  if (o.address.empty()) return absl::InvalidArgumentError("no server address");
  std::unique_ptr<RemoteClient> c(new RemoteClient(o));
  std::shared_ptr<grpc::ChannelCredentials> creds;
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(8 << 20);
  if (o.tls || !o.tls_ca_file.empty()) {
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
    if (!o.tls_server_name.empty()) args.SetSslTargetNameOverride(o.tls_server_name);
    creds = grpc::SslCredentials(ssl);
  } else {
    creds = grpc::InsecureChannelCredentials();
  }
  c->channel_ = grpc::CreateCustomChannel(o.address, creds, args);
  c->stub_ = v1::Quantizer::NewStub(c->channel_);
  c->quantize_method_ = std::make_unique<grpc::internal::RpcMethod>("/axeq.v1.Quantizer/Quantize", grpc::internal::RpcMethod::BIDI_STREAMING,
                                                                     c->channel_);
  return c;
}

void RemoteClient::Prepare(grpc::ClientContext* ctx) const {
  if (!options_.token.empty()) ctx->AddMetadata("authorization", "Bearer " + options_.token);
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::milliseconds(static_cast<int64_t>(options_.deadline_seconds * 1000)));
}

template <typename Reader>
absl::StatusOr<RemoteResult> RemoteClient::Collect(Reader* reader,
                                                   const std::function<void(double, const std::string&)>& progress,
                                                   std::string* job_id) {
  v1::JobEvent e;
  std::string codes, scales, bias;
  std::optional<v1::Finished> fin;
  auto append = [](std::string* buf, const v1::ResultChunk& r) {
    if (r.offset() != static_cast<int64_t>(buf->size()))
      return absl::DataLossError(absl::StrCat("result chunk at byte ", r.offset(), " arrived out of order (have ", buf->size(), ")"));
    buf->append(r.data());
    return absl::OkStatus();
  };
  while (reader->Read(&e)) {
    if (!e.job_id().empty()) *job_id = e.job_id();
    if (e.has_progress()) {
      if (progress) progress(e.progress().fraction(), v1::JobState_Name(e.progress().state()));
    } else if (e.has_result()) {
      const auto& r = e.result();
      absl::Status s = r.part() == v1::RESULT_PART_CODES    ? append(&codes, r)
                       : r.part() == v1::RESULT_PART_SCALES ? append(&scales, r)
                       : r.part() == v1::RESULT_PART_BIAS   ? append(&bias, r)
                                                            : absl::DataLossError("unknown result part");
      if (!s.ok()) return s;
    } else if (e.has_finished()) {
      fin = e.finished();
    }
  }
  grpc::Status st = reader->Finish();
  if (!st.ok()) return FromGrpc(st);
  if (!fin) return absl::DataLossError("the server ended the stream without a summary");
  const v1::Finished& f = *fin;
  if (f.state() != v1::JOB_STATE_SUCCEEDED)
    return absl::Status(static_cast<absl::StatusCode>(f.code()), f.message());
  const int64_t c = f.output_channels(), k = f.inputs(), g = f.scale_groups();
  if (static_cast<int64_t>(codes.size()) != c * k || static_cast<int64_t>(scales.size()) != c * g * 4 ||
      (f.has_bias() && static_cast<int64_t>(bias.size()) != c * 4))
    return absl::DataLossError(absl::StrCat("incomplete result: ", codes.size(), " code bytes for [", c, ", ", k, "]"));
  RemoteResult out;
  out.job_id = *job_id;
  out.layer_name = f.layer_name();
  LayerResult& r = out.result;
  r.codes.resize(c, k);
  std::memcpy(r.codes.data(), codes.data(), codes.size());
  r.scales.resize(c, g);
  std::memcpy(r.scales.data(), scales.data(), scales.size());
  if (f.has_bias()) {
    Eigen::VectorXf b(c);
    std::memcpy(b.data(), bias.data(), bias.size());
    r.bias = b;
  }
  r.certificate = CertificateFromProto(f.certificate());
  const auto& rep = f.report();
  r.report.relative_error = rep.relative_error();
  r.report.relative_error_quantized_inputs = rep.relative_error_quantized_inputs();
  r.report.sparsity = rep.sparsity();
  r.report.max_abs_code = rep.max_abs_code();
  r.report.mean_l1 = rep.mean_l1();
  r.report.max_l1 = rep.max_l1();
  r.report.min_accumulator_bits = rep.min_accumulator_bits();
  r.report.min_outer_accumulator_bits = rep.min_outer_accumulator_bits();
  r.description = rep.description();
  r.damping = rep.damping();
  r.damping_retries = rep.damping_retries();
  r.dead_inputs = rep.dead_inputs();
  r.bias_corrected = rep.bias_corrected();
  r.weight_bits = rep.weight_bits();
  r.input_bits = rep.input_bits();
  auto act = ActivationsFromProto(f.activations());
  if (act.ok()) out.activations = *act;
  out.samples = rep.samples();
  out.seconds = rep.seconds();
  return out;
}

absl::StatusOr<RemoteResult> RemoteClient::QuantizeOnce(const RemoteLayer& l,
                                                        const std::function<void(double, const std::string&)>& progress,
                                                        int* retry_after_ms) {
  SliceLease lease;  // declared before the call: the call lets go of lent memory before this waits
  grpc::ClientContext ctx;
  Prepare(&ctx);
  std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, v1::JobEvent>> stream(
      grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, v1::JobEvent>::Create(channel_.get(), *quantize_method_, &ctx));
  const int64_t c = l.weights.rows(), k = l.weights.cols();
  v1::UploadRequest req;
  auto* h = req.mutable_header();
  h->set_layer_name(l.name);
  h->set_output_channels(c);
  h->set_inputs(k);
  *h->mutable_config() = OptionsToProto(l.options);
  *h->mutable_activations() = ActivationsToProto(l.activations);
  h->set_has_bias(l.bias != nullptr);
  h->set_idempotency_key(l.idempotency_key);
  h->set_detach(l.detach);
  if (l.stats) {
    h->set_calibration(v1::CALIBRATION_KIND_STATISTICS);
    h->set_samples(l.stats->samples);
    h->set_has_xx(l.stats->xx.size() != 0);
    h->set_has_means(l.stats->mean_x.size() == k && l.stats->mean_xq.size() == k);
  } else {
    h->set_calibration(v1::CALIBRATION_KIND_ROWS);
    h->set_has_xx(l.want_relative_error);
  }
  // OPTQ reads cross only for the report's relative error, which also needs xx: without xx it
  // would be uploaded for nothing.
  const bool cross_used = l.stats && (l.options.algorithm == Algorithm::kGpfq || l.stats->xx.size() != 0);
  // Upload progress ("UPLOADING", fraction of the bytes), at most every 100 ms and at the end.
  int64_t total = 4 * (c * k + (l.bias ? c : 0));
  if (l.stats) {
    total += 4 * (l.stats->gram.size() + (cross_used ? l.stats->cross.size() : 0) + l.stats->xx.size() +
                  (h->has_means() ? 2 * k : 0));
  } else {
    total += 4 * l.x->size() * (l.xq ? 2 : 1);
  }
  int64_t sent = 0;
  auto last_report = std::chrono::steady_clock::now();
  auto uploaded = [&](int64_t bytes) {
    sent += bytes;
    const auto now = std::chrono::steady_clock::now();
    if (progress && (sent == total || now - last_report > std::chrono::milliseconds(100))) {
      progress(total > 0 ? static_cast<double>(sent) / static_cast<double>(total) : 1.0, "UPLOADING");
      last_report = now;
    }
  };
  bool alive = stream->Write(EncodeMessage(req));
  int64_t chunks = 0;
  auto send_tensor = [&](v1::TensorKind kind, const float* data, int64_t n) {
    for (auto [b, e] : ChunkRanges(n * 4, kChunkBytes, 4)) {
      if (!alive) return;
      alive = stream->Write(EncodeTensorChunk(kind, b / 4, reinterpret_cast<const char*>(data) + b, e - b, &lease));
      ++chunks;
      uploaded(e - b);
    }
  };
  // The weights go out from the caller's memory when they are contiguous rows.
  MatrixXf copy;
  const float* w = l.weights.data();
  if (l.weights.outerStride() != k) {
    copy = l.weights;
    w = copy.data();
  }
  // GRAM first: the server starts OPTQ's factorization while the rest arrives.
  if (l.stats) send_tensor(v1::TENSOR_KIND_GRAM, l.stats->gram.data(), l.stats->gram.size());
  send_tensor(v1::TENSOR_KIND_WEIGHT, w, c * k);
  if (l.bias) send_tensor(v1::TENSOR_KIND_BIAS, l.bias->data(), l.bias->size());
  if (l.stats) {
    if (l.stats->cross.size() && cross_used)
      send_tensor(v1::TENSOR_KIND_CROSS, l.stats->cross.data(), l.stats->cross.size());
    if (l.stats->xx.size()) send_tensor(v1::TENSOR_KIND_XX, l.stats->xx.data(), l.stats->xx.size());
    if (h->has_means()) {
      send_tensor(v1::TENSOR_KIND_MEAN_X, l.stats->mean_x.data(), k);
      send_tensor(v1::TENSOR_KIND_MEAN_XQ, l.stats->mean_xq.data(), k);
    }
  } else {
    const int64_t row_bytes = k * 4;
    const int64_t rows_per = std::max<int64_t>(1, kChunkBytes / 2 / row_bytes);
    for (int64_t r0 = 0; r0 < l.x->rows() && alive; r0 += rows_per) {
      const int64_t n = std::min(rows_per, l.x->rows() - r0);
      v1::UploadRequest r;
      auto* rows = r.mutable_rows();
      rows->set_row_offset(r0);
      rows->set_inputs(reinterpret_cast<const char*>(l.x->data() + r0 * k), n * row_bytes);
      if (l.xq) rows->set_quant_inputs(reinterpret_cast<const char*>(l.xq->data() + r0 * k), n * row_bytes);
      alive = stream->Write(EncodeMessage(r));
      ++chunks;
      uploaded(n * row_bytes * (l.xq ? 2 : 1));
    }
  }
  if (alive) {
    v1::UploadRequest commit;
    commit.mutable_commit()->set_chunks(chunks);
    stream->Write(EncodeMessage(commit));
  }
  stream->WritesDone();
  std::string job_id;
  auto res = Collect(stream.get(), progress, &job_id);
  const auto& tr = ctx.GetServerTrailingMetadata();
  auto it = tr.find("axeq-retry-after-ms");
  if (it != tr.end()) *retry_after_ms = std::atoi(std::string(it->second.data(), it->second.size()).c_str());
  return res;
}

absl::StatusOr<RemoteResult> RemoteClient::Quantize(const RemoteLayer& layer,
                                                    const std::function<void(double, const std::string&)>& progress) {
  RemoteLayer l = layer;
  if (l.idempotency_key.empty()) {  // makes a retry after a lost response safe
    std::random_device rd;
    l.idempotency_key = absl::StrCat(l.name, "/", absl::Hex(rd()), absl::Hex(rd()));
  }
  std::mt19937 jitter(std::random_device{}());
  absl::Status last;
  for (int attempt = 0; attempt < std::max(1, options_.max_attempts); ++attempt) {
    int retry_after = 0;
    auto r = QuantizeOnce(l, progress, &retry_after);
    if (r.ok() || !Retryable(r.status().code())) return r;
    last = r.status();
    const int backoff = std::max(retry_after, (250 << std::min(attempt, 5))) +
                        static_cast<int>(jitter() % 250);
    std::this_thread::sleep_for(std::chrono::milliseconds(backoff));
  }
  return absl::Status(last.code(), absl::StrCat(last.message(), " (after ", options_.max_attempts, " attempts)"));
}

absl::StatusOr<RemoteResult> RemoteClient::Fetch(const std::string& job_id,
                                                 const std::function<void(double, const std::string&)>& progress) {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  v1::WatchRequest req;
  req.set_job_id(job_id);
  req.set_include_result(true);
  auto reader = stub_->Watch(&ctx, req);
  std::string id = job_id;
  return Collect(reader.get(), progress, &id);
}

absl::StatusOr<v1::JobState> RemoteClient::Cancel(const std::string& job_id) {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  v1::CancelRequest req;
  req.set_job_id(job_id);
  v1::CancelResponse resp;
  auto st = stub_->Cancel(&ctx, req, &resp);
  if (!st.ok()) return FromGrpc(st);
  return resp.state();
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
