// axeq.v1.Quantizer: validates every upload message, gathers a layer (weights + statistics, or
// rows folded into statistics as they arrive), hands it to the JobManager and follows the job,
// streaming progress and the chunked result. Status conversion happens in ToGrpc (proto/).
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <array>
#include <chrono>
#include <cstring>
#include <future>

#include "absl/strings/str_cat.h"
#include "axeq/v1/axeq.grpc.pb.h"
#include "core/status_macros.h"
#include "grpcpp/grpcpp.h"
#include "nlohmann/json.hpp"
#include "proto/convert.h"
#include "proto/wire.h"
#include "server/auth.h"
#include "server/job_manager.h"
#include "server/metrics.h"
#include "server/server.h"
#include "server/service.h"

namespace axeq::server {
namespace {

using v1::TensorKind;

bool Terminal(v1::JobState s) {
  return s == v1::JOB_STATE_SUCCEEDED || s == v1::JOB_STATE_FAILED || s == v1::JOB_STATE_CANCELLED;
}

// XXH3-128, streaming. Content digests only tell a principal's resubmissions apart (idempotency
// keys are per principal), so a fast non-cryptographic hash suffices: at tens of GB/s it runs
// inline on the receiving thread, on bytes that were just copied and are still in cache.
class ContentDigest {
 public:
  ContentDigest() : state_(XXH3_createState()) { XXH3_128bits_reset(state_); }
  ~ContentDigest() { XXH3_freeState(state_); }
  ContentDigest(const ContentDigest&) = delete;
  ContentDigest& operator=(const ContentDigest&) = delete;
  void Update(const void* data, size_t size) { XXH3_128bits_update(state_, data, size); }
  XXH128_hash_t Final() const { return XXH3_128bits_digest(state_); }

 private:
  XXH3_state_t* state_;
};

// An upload in progress: the header's promises and what has arrived so far.
class Upload {
 public:
  Upload() = default;
  ~Upload() {  // an upload that fails or is abandoned stops its factorization
    if (factor_.valid()) *factor_stop_ = true;
  }

  // Validates the header; INVALID_ARGUMENT naming the field.
  absl::Status Start(const v1::LayerHeader& h, int64_t max_upload_bytes, JobManager* jobs) {
    header_ = h;
    jobs_ = jobs;
    compute_ = jobs->ComputeContext();
    if (h.layer_name().empty() || h.layer_name().size() > 512)
      return absl::InvalidArgumentError(absl::StrCat("header.layer_name must have 1..512 characters, got ", h.layer_name().size()));
    c_ = h.output_channels();
    k_ = h.inputs();
    if (c_ < 1 || c_ > (1 << 20)) return absl::InvalidArgumentError(absl::StrCat("header.output_channels must be in [1, 2^20], got ", c_));
    if (k_ < 1 || k_ > (1 << 17)) return absl::InvalidArgumentError(absl::StrCat("header.inputs must be in [1, 2^17], got ", k_));
    AXEQ_ASSIGN_OR_RETURN(options_, OptionsFromProto(h.config()));
    auto act = ActivationsFromProto(h.activations());
    if (!act.ok()) return absl::InvalidArgumentError(absl::StrCat("header.", act.status().message()));
    act_ = *act;
    if (act_.spec.bits != options_.inputs.bits || act_.spec.is_signed != options_.inputs.is_signed)
      return absl::InvalidArgumentError(absl::StrCat("header.activations (", act_.spec.bits, "-bit ", act_.spec.is_signed ? "signed" : "unsigned",
                                                     ") disagree with config input_bits/signed_inputs (", options_.inputs.bits, "-bit ",
                                                     options_.inputs.is_signed ? "signed" : "unsigned", ")"));
    rows_mode_ = h.calibration() == v1::CALIBRATION_KIND_ROWS;
    if (!rows_mode_ && h.calibration() != v1::CALIBRATION_KIND_STATISTICS)
      return absl::InvalidArgumentError("header.calibration must be ROWS or STATISTICS");
    if (!rows_mode_ && h.samples() < 1)
      return absl::InvalidArgumentError(absl::StrCat("header.samples must be >= 1 with STATISTICS, got ", h.samples()));
    const int64_t kk = k_ * k_;
    size_[v1::TENSOR_KIND_WEIGHT] = c_ * k_;
    size_[v1::TENSOR_KIND_BIAS] = h.has_bias() ? c_ : 0;
    if (!rows_mode_) {
      size_[v1::TENSOR_KIND_GRAM] = kk;
      size_[v1::TENSOR_KIND_CROSS] = kk;
      size_[v1::TENSOR_KIND_XX] = h.has_xx() ? kk : 0;
      size_[v1::TENSOR_KIND_MEAN_X] = size_[v1::TENSOR_KIND_MEAN_XQ] = h.has_means() ? k_ : 0;
    }
    int64_t upload = 0;
    for (int64_t s : size_) upload += s * 4;
    if (upload > max_upload_bytes)
      return absl::ResourceExhaustedError(absl::StrCat("layer upload of ", upload >> 20, " MiB exceeds the server's limit of ", max_upload_bytes >> 20, " MiB"));
    // Buffers are allocated at their full shape on a tensor's first chunk and filled in place; the
    // job takes them over without a copy, and their bytes never move.
    if (rows_mode_) acc_ = std::make_unique<StatsAccumulator>(k_, /*keep_cross=*/true, /*keep_xx=*/h.has_xx(), compute_);
    const std::string header_bytes = h.SerializeAsString();
    Hash(-1, header_bytes.data(), header_bytes.size());
    return absl::OkStatus();
  }

  // Bytes this job will hold at its peak (upload buffers, statistics, engine work, result).
  int64_t EstimateBytes() const {
    const int64_t kk = k_ * k_;
    int64_t b = c_ * k_ * 4 + c_ * 8;
    b += rows_mode_ ? (2 + header_.has_xx()) * kk * 8 + (2 + header_.has_xx()) * kk * 4
                    : (2 + header_.has_xx()) * kk * 4;
    const int64_t s = options_.precision == Precision::kFloat64 ? 8 : 4;
    b += 4 * kk * s + c_ * k_ * (s + 1);
    return b;
  }

  // A tensor chunk, its payload still in the received slices: one copy into the layer buffer.
  absl::Status AddTensor(const DecodedUpload& t) {
    const int kind = t.kind;
    if (kind <= 0 || kind >= kKinds)
      return absl::InvalidArgumentError(absl::StrCat("tensor chunk has unknown kind ", kind));
    const char* name = v1::TensorKind_Name(static_cast<TensorKind>(kind)).c_str();
    if (size_[kind] == 0)
      return absl::InvalidArgumentError(absl::StrCat("tensor ", name, " is not expected with this header (",
                                                     rows_mode_ ? "ROWS calibration" : "STATISTICS calibration", ")"));
    AXEQ_RETURN_IF_ERROR(CheckPayload(t.payload_bytes, name));
    const int64_t n = static_cast<int64_t>(t.payload_bytes / 4);
    const int64_t at = filled_[kind];
    if (t.offset != at)
      return absl::InvalidArgumentError(absl::StrCat("tensor ", name, " chunk at offset ", t.offset, " is out of order or duplicated: expected offset ", at));
    if (t.offset + n > size_[kind])
      return absl::InvalidArgumentError(absl::StrCat("tensor ", name, " chunk ends at element ", t.offset + n, ", beyond its ", size_[kind], " elements"));
    MatrixXf& buf = data_[kind];
    if (buf.size() == 0) {
      const bool square = kind == v1::TENSOR_KIND_GRAM || kind == v1::TENSOR_KIND_CROSS || kind == v1::TENSOR_KIND_XX;
      buf.resize(square ? k_ : (kind == v1::TENSOR_KIND_WEIGHT ? c_ : 1), size_[kind] / (square ? k_ : (kind == v1::TENSOR_KIND_WEIGHT ? c_ : 1)));
    }
    float* dst = buf.data() + at;
    CopyPayload(t, dst);
    if (const int64_t bad = FirstNonFinite(dst, n); bad >= 0)
      return absl::InvalidArgumentError(absl::StrCat("tensor ", name, " has a NaN/Inf value at element ", at + bad));
    filled_[kind] = at + n;
    Hash(kind, dst, t.payload_bytes);
    ++chunks_;
    if (kind == v1::TENSOR_KIND_GRAM && filled_[kind] == size_[kind]) StartFactor();
    return absl::OkStatus();
  }

  absl::Status AddRows(const v1::RowsChunk& r) {
    if (!rows_mode_) return absl::InvalidArgumentError("rows chunk sent with STATISTICS calibration");
    AXEQ_RETURN_IF_ERROR(CheckPayload(r.inputs().size() + r.quant_inputs().size(), "rows"));
    const int64_t row_bytes = k_ * 4;
    if (r.inputs().empty() || r.inputs().size() % row_bytes != 0)
      return absl::InvalidArgumentError(absl::StrCat("rows chunk must hold whole rows of ", k_, " float32 (", row_bytes, " bytes); got ", r.inputs().size(), " bytes"));
    if (!r.quant_inputs().empty() && r.quant_inputs().size() != r.inputs().size())
      return absl::InvalidArgumentError(absl::StrCat("rows chunk quant_inputs has ", r.quant_inputs().size(), " bytes, inputs ", r.inputs().size()));
    if (r.row_offset() != rows_)
      return absl::InvalidArgumentError(absl::StrCat("rows chunk at row ", r.row_offset(), " is out of order or duplicated: expected row ", rows_));
    const int64_t n = static_cast<int64_t>(r.inputs().size()) / row_bytes;
    MatrixXf x(n, k_);
    std::memcpy(x.data(), r.inputs().data(), r.inputs().size());
    MatrixXf xq;
    if (r.quant_inputs().empty()) {
      xq = act_.Apply(x);
    } else {
      xq.resize(n, k_);
      std::memcpy(xq.data(), r.quant_inputs().data(), r.quant_inputs().size());
    }
    auto s = acc_->Add(x, xq);
    if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat("rows ", rows_, "..", rows_ + n, ": ", s.message()));
    rows_ += n;
    // Rows are not kept: they go into a digest of their own.
    rows_digest_.Update(r.inputs().data(), r.inputs().size());
    rows_digest_.Update(r.quant_inputs().data(), r.quant_inputs().size());
    ++chunks_;
    return absl::OkStatus();
  }

  // Checks the commit and builds the job's input; INVALID_ARGUMENT / FAILED_PRECONDITION.
  absl::StatusOr<std::unique_ptr<JobInput>> Finish(const v1::Commit& commit) {
    if (commit.chunks() != chunks_)
      return absl::InvalidArgumentError(absl::StrCat("commit announces ", commit.chunks(), " chunks but ", chunks_, " arrived"));
    for (int kind = 1; kind < kKinds; ++kind) {
      const int64_t got = filled_[kind];
      const bool optional = kind == v1::TENSOR_KIND_CROSS && options_.algorithm == Algorithm::kOptq;
      if (got != size_[kind] && !(optional && got == 0))
        return absl::FailedPreconditionError(absl::StrCat("upload incomplete at commit: tensor ", v1::TensorKind_Name(static_cast<TensorKind>(kind)),
                                                          " has ", got, " of ", size_[kind], " elements"));
    }
    auto in = std::make_unique<JobInput>();
    in->layer_name = header_.layer_name();
    in->options = options_;
    in->activations = act_;
    in->weights = std::move(data_[v1::TENSOR_KIND_WEIGHT]);  // no copy
    if (header_.has_bias()) in->bias = Eigen::VectorXf(data_[v1::TENSOR_KIND_BIAS].row(0).transpose());
    if (rows_mode_) {
      if (rows_ == 0) return absl::FailedPreconditionError("upload incomplete at commit: no calibration rows arrived");
      AXEQ_ASSIGN_OR_RETURN(in->stats, acc_->Finish());
      acc_.reset();
    } else {
      auto mat = [&](int kind, MatrixXf* out) {
        if (filled_[kind] > 0) *out = std::move(data_[kind]);  // no copy
      };
      in->stats.samples = header_.samples();
      mat(v1::TENSOR_KIND_GRAM, &in->stats.gram);  // the buffer moves, its bytes stay put
      in->optq_factor = std::move(factor_);          // still running, maybe: the job waits for it
      in->optq_factor_stop = factor_stop_;
      mat(v1::TENSOR_KIND_CROSS, &in->stats.cross);
      mat(v1::TENSOR_KIND_XX, &in->stats.xx);
      if (header_.has_means()) {
        in->stats.mean_x = data_[v1::TENSOR_KIND_MEAN_X].row(0).transpose();
        in->stats.mean_xq = data_[v1::TENSOR_KIND_MEAN_XQ].row(0).transpose();
      }
    }
    AXEQ_RETURN_IF_ERROR(ValidateLayer(in->weights, in->bias ? &*in->bias : nullptr, in->stats, in->options));
    return in;
  }

  // The content digest for idempotency: "xxh3-128:" and 32 hex digits over the header and every
  // tensor and row byte in arrival order.
  std::string DigestHex() {
    const XXH128_hash_t rows = rows_digest_.Final();
    digest_.Update(&rows, sizeof(rows));
    const XXH128_hash_t d = digest_.Final();
    return absl::StrCat("xxh3-128:", absl::Hex(d.high64, absl::kZeroPad16), absl::Hex(d.low64, absl::kZeroPad16));
  }

  const v1::LayerHeader& header() const { return header_; }

 private:
  static constexpr int kKinds = 8;
  static absl::Status CheckPayload(size_t bytes, const char* what) {
    if (bytes > static_cast<size_t>(4 << 20))
      return absl::InvalidArgumentError(absl::StrCat(what, " chunk of ", bytes, " bytes exceeds the 4 MiB chunk limit"));
    if (bytes % 4 != 0) return absl::InvalidArgumentError(absl::StrCat(what, " chunk of ", bytes, " bytes is not whole float32 values"));
    return absl::OkStatus();
  }
  void Hash(int64_t tag, const void* data, size_t size) {
    digest_.Update(&tag, sizeof(tag));
    digest_.Update(data, size);
  }
  // OPTQ needs only the Gram matrix for its 2/3 K^3 factorization: start it as soon as GRAM is
  // complete (clients send it first), overlapping the rest of the upload.
  void StartFactor() {
    if (rows_mode_ || options_.algorithm != Algorithm::kOptq || factor_.valid()) return;
    // Captures by value: the future may move to the job (JobInput), outliving this Upload; the
    // Gram buffer it reads moves along with it and is freed only after the future is waited for.
    RunContext compute = compute_;
    compute.should_stop = [stop = factor_stop_] { return stop->load(); };
    factor_ = std::async(std::launch::async, [jobs = jobs_, g = data_[v1::TENSOR_KIND_GRAM].data(), k = k_,
                                              options = options_, compute = std::move(compute)] {
      jobs->LowerToComputePriority();
      return PrepareOptq(Eigen::Map<const MatrixXf>(g, k, k), options, compute);
    });
  }

  v1::LayerHeader header_;
  LayerOptions options_;
  ActivationQuantizer act_;
  int64_t c_ = 0, k_ = 0, rows_ = 0, chunks_ = 0;
  bool rows_mode_ = false;
  std::array<int64_t, kKinds> size_{};
  std::array<MatrixXf, kKinds> data_;
  std::array<int64_t, kKinds> filled_{};
  std::unique_ptr<StatsAccumulator> acc_;
  ContentDigest digest_, rows_digest_;
  JobManager* jobs_ = nullptr;
  RunContext compute_;
  std::shared_ptr<std::atomic<bool>> factor_stop_ = std::make_shared<std::atomic<bool>>(false);
  // Last member: destroyed (joined) first, while the buffers it reads still exist.
  std::future<absl::StatusOr<std::shared_ptr<const OptqFactor>>> factor_;
};

}  // namespace

using UploadStream = grpc::ServerReaderWriter<v1::JobEvent, grpc::ByteBuffer>;

class QuantizerService final : public v1::Quantizer::Service {
 public:
  QuantizerService(JobManager* jobs, Metrics* metrics, Authenticator auth, int64_t max_upload_bytes)
      : jobs_(jobs), metrics_(metrics), auth_(std::move(auth)), max_upload_bytes_(max_upload_bytes) {
    // Quantize (method 0) reads raw buffers: tensor payloads are copied once, from the received
    // slices into the layer's buffers, instead of into a parsed message first (see proto/wire.h).
    MarkMethodStreamed(0, new grpc::internal::BidiStreamingHandler<QuantizerService, grpc::ByteBuffer, v1::JobEvent>(
                              [](QuantizerService* s, grpc::ServerContext* ctx, UploadStream* stream) {
                                return s->Done("Quantize", s->DoQuantize(ctx, stream));
                              },
                              this));
  }

  grpc::Status Watch(grpc::ServerContext* ctx, const v1::WatchRequest* req,
                     grpc::ServerWriter<v1::JobEvent>* writer) override {
    auto principal = auth_.Authenticate(*ctx);
    if (!principal.ok()) return Done("Watch", principal.status());
    auto job = jobs_->Get(*principal, req->job_id());
    if (!job.ok()) return Done("Watch", job.status());
    return Done("Watch", Follow(ctx, *job, req->include_result(), /*owner_call=*/false,
                                [&](const v1::JobEvent& e) { return writer->Write(e); }));
  }

  grpc::Status Cancel(grpc::ServerContext* ctx, const v1::CancelRequest* req, v1::CancelResponse* resp) override {
    auto principal = auth_.Authenticate(*ctx);
    if (!principal.ok()) return Done("Cancel", principal.status());
    auto state = jobs_->Cancel(*principal, req->job_id());
    if (!state.ok()) return Done("Cancel", state.status());
    resp->set_state(*state);
    return Done("Cancel", absl::OkStatus());
  }

  grpc::Status ListJobs(grpc::ServerContext* ctx, const v1::ListJobsRequest*, v1::ListJobsResponse* resp) override {
    auto principal = auth_.Authenticate(*ctx);
    if (!principal.ok()) return Done("ListJobs", principal.status());
    for (const auto& j : jobs_->List(*principal)) {
      auto* info = resp->add_jobs();
      info->set_job_id(j->id);
      info->set_layer_name(j->layer_name);
      info->set_state(jobs_->Snapshot(*j).state());
      info->set_created_unix_ms(j->created_unix_ms);
    }
    return Done("ListJobs", absl::OkStatus());
  }

 private:
  grpc::Status Done(const char* method, const absl::Status& s) {
    if (metrics_) metrics_->Request(method, absl::StatusCodeToString(s.code()));
    return ToGrpc(s);
  }

  absl::Status DoQuantize(grpc::ServerContext* ctx, UploadStream* stream) {
    AXEQ_ASSIGN_OR_RETURN(const std::string principal, auth_.Authenticate(*ctx));
    grpc::ByteBuffer raw;
    DecodedUpload msg;
    if (!stream->Read(&raw)) {
      return ctx->IsCancelled() ? absl::CancelledError("client went away before sending a header")
                                : absl::InvalidArgumentError("empty upload: the first message must be a header");
    }
    AXEQ_RETURN_IF_ERROR(DecodeUpload(raw, &msg));
    if (!msg.message.has_header()) return absl::InvalidArgumentError("the first upload message must be a header");
    Upload up;
    AXEQ_RETURN_IF_ERROR(up.Start(msg.message.header(), max_upload_bytes_, jobs_));
    const bool detach = up.header().detach();
    std::shared_ptr<Job> job;
    {
      auto admitted = jobs_->Admit(principal, up.header().layer_name(), up.EstimateBytes());
      if (!admitted.ok()) {
        if (admitted.status().code() == absl::StatusCode::kResourceExhausted)
          ctx->AddTrailingMetadata("axeq-retry-after-ms", std::to_string(1000 + 500 * jobs_->queued()));
        return admitted.status();
      }
      job = *admitted;
    }
    if (!detach && ctx->deadline() != std::chrono::system_clock::time_point::max()) job->deadline = ctx->deadline();
    v1::JobEvent accepted;
    accepted.set_job_id(job->id);
    *accepted.mutable_progress() = jobs_->Snapshot(*job);
    stream->Write(accepted);
    auto fail = [&](const absl::Status& s) {
      jobs_->Fail(job, s);
      return s;
    };
    std::unique_ptr<JobInput> input;
    int64_t since_report = 0;
    while (!input) {
      if (!stream->Read(&raw)) {
        return fail(ctx->IsCancelled() ? absl::CancelledError("upload cancelled by the client or its deadline")
                                       : absl::InvalidArgumentError("upload stream ended before its commit (truncated)"));
      }
      absl::Status s = DecodeUpload(raw, &msg);
      if (!s.ok()) return fail(s);
      const int64_t bytes = static_cast<int64_t>(msg.wire_bytes);
      if (metrics_) metrics_->Received(bytes);
      since_report += bytes;
      switch (msg.is_tensor ? v1::UploadRequest::kTensor : msg.message.kind_case()) {
        case v1::UploadRequest::kHeader: s = absl::InvalidArgumentError("a second header arrived in the same upload"); break;
        case v1::UploadRequest::kTensor: s = up.AddTensor(msg); break;
        case v1::UploadRequest::kRows: s = up.AddRows(msg.message.rows()); break;
        case v1::UploadRequest::kCommit: {
          auto in = up.Finish(msg.message.commit());
          if (in.ok()) input = std::move(in).value();
          else s = in.status();
          break;
        }
        default: s = absl::InvalidArgumentError("upload message without content"); break;
      }
      if (!s.ok()) return fail(s);
      if (since_report > (16 << 20) || input) {
        jobs_->AddReceived(*job, since_report);
        since_report = 0;
      }
    }
    auto dedup = jobs_->Deduplicate(job, up.header().idempotency_key(), up.DigestHex());
    if (!dedup.ok()) return fail(dedup.status());
    if (*dedup != job) {
      job = *dedup;  // the same content under the same key: follow the earlier job
    } else {
      jobs_->Submit(job, std::move(input));
    }
    return Follow(ctx, job, /*include_result=*/true, /*owner_call=*/!detach,
                  [&](const v1::JobEvent& e) { return stream->Write(e); });
  }

  // Streams progress until the job ends, then (on success) the result chunks and the summary.
  // If owner_call and the client goes away, the job is cancelled.
  template <typename WriteFn>
  absl::Status Follow(grpc::ServerContext* ctx, const std::shared_ptr<Job>& job_ptr, bool include_result,
                      bool owner_call, WriteFn&& write) {
    Job& job = *job_ptr;
    int64_t seen = -1;
    v1::JobState last_state = v1::JOB_STATE_UNSPECIFIED;
    auto last_sent = std::chrono::steady_clock::now() - std::chrono::seconds(1);
    for (;;) {
      if (ctx->IsCancelled()) {
        if (owner_call) {
          job.cancel = true;
          jobs_->Fail(job_ptr, absl::CancelledError("the client cancelled the call"));
        }
        return absl::CancelledError("call cancelled by the client or its deadline");
      }
      seen = jobs_->WaitForChange(job, seen, std::chrono::milliseconds(200));
      v1::Progress p = jobs_->Snapshot(job);
      const auto now = std::chrono::steady_clock::now();
      if (p.state() != last_state || now - last_sent > std::chrono::milliseconds(100)) {
        v1::JobEvent e;
        e.set_job_id(job.id);
        *e.mutable_progress() = p;
        if (!write(e) && !owner_call) return absl::CancelledError("watcher went away");
        last_state = p.state();
        last_sent = now;
      }
      if (Terminal(p.state())) break;
    }
    v1::JobEvent fin;
    fin.set_job_id(job.id);
    {
      // finished is complete once the state is terminal (written before the final Notify).
      *fin.mutable_finished() = job.finished;
    }
    if (fin.finished().state() != v1::JOB_STATE_SUCCEEDED) {
      if (fin.finished().state() == v1::JOB_STATE_UNSPECIFIED) {  // ended before running
        fin.mutable_finished()->set_state(jobs_->Snapshot(job).state());
        fin.mutable_finished()->set_code(static_cast<int>(job.status.code()));
        fin.mutable_finished()->set_message(std::string(job.status.message()));
      }
      write(fin);
      return absl::Status(static_cast<absl::StatusCode>(fin.finished().code()), fin.finished().message());
    }
    if (include_result) {
      AXEQ_RETURN_IF_ERROR(jobs_->LoadResult(job));
      auto send = [&](v1::ResultPart part, const void* data, int64_t bytes, int64_t align) {
        for (auto [b, e] : ChunkRanges(bytes, kChunkBytes, align)) {
          v1::JobEvent ev;
          ev.set_job_id(job.id);
          auto* r = ev.mutable_result();
          r->set_part(part);
          r->set_offset(b);
          r->set_data(static_cast<const char*>(data) + b, e - b);
          if (!write(ev)) return false;
        }
        return true;
      };
      const bool ok = send(v1::RESULT_PART_CODES, job.codes->data(), job.codes->size(), 1) &&
                      send(v1::RESULT_PART_SCALES, job.scales->data(), job.scales->size() * 4, 4) &&
                      (!job.bias || send(v1::RESULT_PART_BIAS, job.bias->data(), job.bias->size() * 4, 4));
      if (!ok) return absl::CancelledError("client went away while the result was streamed");
    }
    write(fin);
    return absl::OkStatus();
  }

  JobManager* jobs_;
  Metrics* metrics_;
  Authenticator auth_;
  int64_t max_upload_bytes_;
};

std::unique_ptr<grpc::Service> MakeQuantizerService(JobManager* jobs, Metrics* metrics, Authenticator auth,
                                                    int64_t max_upload_bytes) {
  return std::make_unique<QuantizerService>(jobs, metrics, std::move(auth), max_upload_bytes);
}

}  // namespace axeq::server
