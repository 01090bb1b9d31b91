// axeq.v1.Quantizer on gRPC's generated synchronous service: checks every upload message against
// the header's plan (proto/upload.h), gathers a layer (weights + statistics, or rows folded into
// statistics as they arrive), hands it to the JobManager and follows the job, streaming progress
// and the chunked result. Every message is built and read by the codec in proto/; status
// conversion happens in ToGrpc.
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
#include "proto/convert.h"
#include "server/service.h"

namespace axeq::server {
namespace {

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

absl::Status CheckPayload(size_t bytes, const char* what) {
  if (bytes > static_cast<size_t>(kMaxChunkPayloadBytes))
    return absl::InvalidArgumentError(absl::StrCat(what, " chunk of ", bytes, " bytes exceeds the 4 MiB chunk limit"));
  if (bytes % 4 != 0) return absl::InvalidArgumentError(absl::StrCat(what, " chunk of ", bytes, " bytes is not whole float32 values"));
  return absl::OkStatus();
}

// An upload in progress: the header's plan and what has arrived so far.
class Upload {
 public:
  Upload(UploadPlan plan, JobManager* jobs) : plan_(std::move(plan)), jobs_(jobs), compute_(jobs->ComputeContext()) {
    if (plan_.rows) acc_ = std::make_unique<StatsAccumulator>(plan_.inputs, /*keep_cross=*/true, plan_.rows_keep_xx(), compute_);
  }
  ~Upload() {  // an upload that fails or is abandoned stops its factorization
    if (factor_.valid()) *factor_stop_ = true;
  }

  const UploadPlan& plan() const { return plan_; }

  // Bytes this job will hold at its peak (upload buffers, statistics, engine work, result).
  int64_t EstimateBytes() const {
    const int64_t c = plan_.output_channels, k = plan_.inputs, kk = k * k;
    const int64_t squares = 2 + (plan_.rows ? plan_.rows_keep_xx() : plan_.has_xx);
    int64_t b = c * k * 4 + c * 8 + squares * kk * (plan_.rows ? 12 : 4);
    const int64_t s = plan_.options.precision == Precision::kFloat64 ? 8 : 4;
    return b + 4 * kk * s + c * k * (s + 1);
  }

  // A tensor chunk: one copy into the layer buffer, allocated at full shape on its first chunk.
  absl::Status AddTensor(const v1::TensorChunk& t) {
    const UploadTensor* spec = t.tensor() > 0 && t.tensor() < kKinds ? plan_.Find(t.tensor()) : nullptr;
    if (!spec)
      return absl::InvalidArgumentError(absl::StrCat("tensor chunk of kind ", v1::TensorKind_Name(t.tensor()), " (", t.tensor(),
                                                     ") is not expected with this header (",
                                                     plan_.rows ? "ROWS" : "STATISTICS", " calibration)"));
    const std::string name = spec->name();
    AXEQ_RETURN_IF_ERROR(CheckPayload(t.data().size(), name.c_str()));
    const int kind = spec->kind;
    const int64_t n = static_cast<int64_t>(t.data().size() / 4), at = filled_[kind];
    if (t.offset() != at)
      return absl::InvalidArgumentError(absl::StrCat("tensor ", name, " chunk at offset ", t.offset(),
                                                     " is out of order or duplicated: expected offset ", at));
    if (at + n > spec->elements())
      return absl::InvalidArgumentError(absl::StrCat("tensor ", name, " chunk ends at element ", at + n, ", beyond its ",
                                                     spec->elements(), " elements"));
    MatrixXf& buf = data_[kind];
    if (buf.size() == 0) buf.resize(spec->rows, spec->cols);
    float* dst = buf.data() + at;
    std::memcpy(dst, t.data().data(), t.data().size());
    if (const int64_t bad = FirstNonFinite(dst, n); bad >= 0)
      return absl::InvalidArgumentError(absl::StrCat("tensor ", name, " has a NaN/Inf value at element ", at + bad));
    filled_[kind] = at + n;
    Hash(kind, dst, t.data().size());
    ++chunks_;
    if (kind == v1::TENSOR_KIND_GRAM && filled_[kind] == spec->elements()) StartFactor();
    return absl::OkStatus();
  }

  absl::Status AddRows(const v1::RowsChunk& r) {
    if (!plan_.rows) return absl::InvalidArgumentError("rows chunk sent with STATISTICS calibration");
    AXEQ_RETURN_IF_ERROR(CheckPayload(r.inputs().size() + r.quant_inputs().size(), "rows"));
    const int64_t k = plan_.inputs, row_bytes = k * 4;
    if (r.inputs().empty() || r.inputs().size() % row_bytes != 0)
      return absl::InvalidArgumentError(absl::StrCat("rows chunk must hold whole rows of ", k, " float32 (", row_bytes,
                                                     " bytes); got ", r.inputs().size(), " bytes"));
    if (!r.quant_inputs().empty() && r.quant_inputs().size() != r.inputs().size())
      return absl::InvalidArgumentError(absl::StrCat("rows chunk quant_inputs has ", r.quant_inputs().size(), " bytes, inputs ", r.inputs().size()));
    if (r.row_offset() != rows_)
      return absl::InvalidArgumentError(absl::StrCat("rows chunk at row ", r.row_offset(),
                                                     " is out of order or duplicated: expected row ", rows_));
    const int64_t n = static_cast<int64_t>(r.inputs().size()) / row_bytes;
    Eigen::Map<const MatrixXf> x(reinterpret_cast<const float*>(r.inputs().data()), n, k);
    absl::Status s = r.quant_inputs().empty()
                         ? acc_->Add(x, plan_.activations.Apply(x))
                         : acc_->Add(x, Eigen::Map<const MatrixXf>(reinterpret_cast<const float*>(r.quant_inputs().data()), n, k));
    if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat("rows ", rows_, "..", rows_ + n, ": ", s.message()));
    rows_ += n;
    rows_digest_.Update(r.inputs().data(), r.inputs().size());  // rows are not kept
    rows_digest_.Update(r.quant_inputs().data(), r.quant_inputs().size());
    ++chunks_;
    return absl::OkStatus();
  }

  // Checks the commit and builds the job's input; INVALID_ARGUMENT / FAILED_PRECONDITION.
  absl::StatusOr<std::unique_ptr<JobInput>> Finish(const v1::Commit& commit) {
    if (commit.chunks() != chunks_)
      return absl::InvalidArgumentError(absl::StrCat("commit announces ", commit.chunks(), " chunks but ", chunks_, " arrived"));
    for (const UploadTensor& t : plan_.tensors) {
      const int64_t got = filled_[t.kind];
      if (got != t.elements() && !(t.optional && got == 0))
        return absl::FailedPreconditionError(absl::StrCat("upload incomplete at commit: tensor ", t.name(), " has ", got,
                                                          " of ", t.elements(), " elements"));
    }
    auto in = std::make_unique<JobInput>();
    in->layer_name = plan_.layer_name;
    in->options = plan_.options;
    in->activations = plan_.activations;
    in->weights = std::move(data_[v1::TENSOR_KIND_WEIGHT]);  // no copy
    if (plan_.has_bias) in->bias = Eigen::VectorXf(data_[v1::TENSOR_KIND_BIAS].row(0).transpose());
    if (plan_.rows) {
      if (rows_ == 0) return absl::FailedPreconditionError("upload incomplete at commit: no calibration rows arrived");
      AXEQ_ASSIGN_OR_RETURN(in->stats, acc_->Finish());
      acc_.reset();
    } else {
      in->stats.samples = plan_.samples;
      in->stats.gram = std::move(data_[v1::TENSOR_KIND_GRAM]);  // the buffer moves, its bytes stay put
      in->optq_factor = std::move(factor_);  // still running, maybe: the job waits for it
      in->optq_factor_stop = factor_stop_;
      in->stats.cross = std::move(data_[v1::TENSOR_KIND_CROSS]);
      in->stats.xx = std::move(data_[v1::TENSOR_KIND_XX]);
      if (plan_.has_means) {
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
  // The header's bytes (minus detach, which does not change the content) open the digest.
  void HashHeader(v1::LayerHeader h) {
    h.clear_detach();
    const std::string bytes = h.SerializeAsString();
    Hash(-2, bytes.data(), bytes.size());
  }

 private:
  static constexpr int kKinds = 8;
  void Hash(int64_t tag, const void* data, size_t size) {
    digest_.Update(&tag, sizeof(tag));
    digest_.Update(data, size);
  }
  // OPTQ needs only the Gram matrix for its 2/3 K^3 factorization: start it as soon as GRAM is
  // complete (clients send it first), overlapping the rest of the upload.
  void StartFactor() {
    if (plan_.rows || plan_.options.algorithm != Algorithm::kOptq || factor_.valid()) return;
    // Captures by value: the future may move to the job (JobInput), outliving this Upload; the
    // Gram buffer it reads moves along with it and is freed only after the future is waited for.
    RunContext compute = compute_;
    compute.should_stop = [stop = factor_stop_] { return stop->load(); };
    factor_ = std::async(std::launch::async, [jobs = jobs_, g = data_[v1::TENSOR_KIND_GRAM].data(), k = plan_.inputs,
                                              options = plan_.options, compute = std::move(compute)] {
      jobs->LowerToComputePriority();
      return PrepareOptq(Eigen::Map<const MatrixXf>(g, k, k), options, compute);
    });
  }

  UploadPlan plan_;
  JobManager* jobs_;
  RunContext compute_;
  int64_t rows_ = 0, chunks_ = 0;
  std::array<MatrixXf, kKinds> data_;
  std::array<int64_t, kKinds> filled_{};
  std::unique_ptr<StatsAccumulator> acc_;
  ContentDigest digest_, rows_digest_;
  std::shared_ptr<std::atomic<bool>> factor_stop_ = std::make_shared<std::atomic<bool>>(false);
  // Last member: destroyed (joined) first, while the buffers it reads still exist.
  std::future<absl::StatusOr<std::shared_ptr<const OptqFactor>>> factor_;
};

using UploadStream = grpc::ServerReaderWriter<v1::JobEvent, v1::UploadRequest>;

class QuantizerService final : public v1::Quantizer::Service {
 public:
  QuantizerService(JobManager* jobs, Metrics* metrics, Authenticator auth, int64_t max_upload_bytes)
      : jobs_(jobs), metrics_(metrics), auth_(std::move(auth)), max_upload_bytes_(max_upload_bytes) {}

  grpc::Status Quantize(grpc::ServerContext* ctx, UploadStream* stream) override {
    return Done("Quantize", DoQuantize(ctx, stream));
  }

  grpc::Status Watch(grpc::ServerContext* ctx, const v1::WatchRequest* req, grpc::ServerWriter<v1::JobEvent>* writer) override {
    auto principal = auth_.Authenticate(*ctx);
    if (!principal.ok()) return Done("Watch", principal.status());
    auto job = jobs_->Get(*principal, req->job_id());
    if (!job.ok()) return Done("Watch", job.status());
    return Done("Watch", Follow(ctx, *job, req->job_id(), req->include_result(), /*owner_call=*/false,
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
    for (const auto& j : jobs_->List(*principal))
      *resp->add_jobs() = EncodeJobInfo(j->id, j->layer_name, jobs_->Snapshot(*j).state(), j->created_unix_ms);
    return Done("ListJobs", absl::OkStatus());
  }

 private:
  grpc::Status Done(const char* method, const absl::Status& s) {
    if (metrics_) metrics_->Request(method, absl::StatusCodeToString(s.code()));
    return ToGrpc(s);
  }

  // Reads the header and admits the upload; errors before admission carry no job id.
  absl::StatusOr<std::shared_ptr<Job>> Admit(grpc::ServerContext* ctx, UploadStream* stream, const std::string& principal,
                                             std::unique_ptr<Upload>* up) {
    v1::UploadRequest msg;
    if (!stream->Read(&msg))
      return ctx->IsCancelled() ? absl::CancelledError("client went away before sending a header")
                                : absl::InvalidArgumentError("empty upload: the first message must be a header");
    if (!msg.has_header()) return absl::InvalidArgumentError("the first upload message must be a header");
    AXEQ_ASSIGN_OR_RETURN(UploadPlan plan, DecodeHeader(msg.header()));
    if (plan.TensorBytes() > max_upload_bytes_)
      return absl::FailedPreconditionError(absl::StrCat("layer upload of ", plan.TensorBytes() >> 20,
                                                        " MiB exceeds the server's limit of ", max_upload_bytes_ >> 20, " MiB"));
    *up = std::make_unique<Upload>(std::move(plan), jobs_);
    (*up)->HashHeader(msg.header());
    const UploadPlan& p = (*up)->plan();
    auto admitted = jobs_->Admit(AdmitRequest{principal, p.layer_name, p.idempotency_key, (*up)->EstimateBytes()});
    if (admitted.status().code() == absl::StatusCode::kResourceExhausted)
      ctx->AddTrailingMetadata("axeq-retry-after-ms", std::to_string(1000 + 500 * jobs_->queued()));
    return admitted;
  }

  absl::Status DoQuantize(grpc::ServerContext* ctx, UploadStream* stream) {
    AXEQ_ASSIGN_OR_RETURN(const std::string principal, auth_.Authenticate(*ctx));
    std::unique_ptr<Upload> up;
    AXEQ_ASSIGN_OR_RETURN(std::shared_ptr<Job> job, Admit(ctx, stream, principal, &up));
    const std::string id = job->id;  // the id of every event of this call (stable across dedup)
    job->abort_upload = [ctx] { ctx->TryCancel(); };
    const bool detach = up->plan().detach;
    if (!detach && ctx->deadline() != std::chrono::system_clock::time_point::max()) job->deadline = ctx->deadline();
    stream->Write(ProgressEvent(id, jobs_->Snapshot(*job)));
    auto fail = [&](const absl::Status& s) {
      jobs_->Fail(job, s);
      return s;
    };
    std::unique_ptr<JobInput> input;
    int64_t since_report = 0;
    v1::UploadRequest msg;
    while (!input) {
      if (!stream->Read(&msg))
        return fail(ctx->IsCancelled() ? absl::CancelledError("upload cancelled by the client or its deadline")
                                       : absl::InvalidArgumentError("upload stream ended before its commit (truncated)"));
      const int64_t bytes = static_cast<int64_t>(msg.ByteSizeLong());
      if (metrics_) metrics_->Received(bytes);
      since_report += bytes;
      absl::Status s;
      switch (msg.kind_case()) {
        case v1::UploadRequest::kHeader: s = absl::InvalidArgumentError("a second header arrived in the same upload"); break;
        case v1::UploadRequest::kTensor: s = up->AddTensor(msg.tensor()); break;
        case v1::UploadRequest::kRows: s = up->AddRows(msg.rows()); break;
        case v1::UploadRequest::kCommit: {
          auto in = up->Finish(msg.commit());
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
    auto dedup = jobs_->Deduplicate(job, up->plan().idempotency_key, up->DigestHex());
    if (!dedup.ok()) return fail(dedup.status());
    if (*dedup != job) job = *dedup;  // the same content under the same key: follow the earlier job
    else jobs_->Submit(job, std::move(input));
    up.reset();
    return Follow(ctx, job, id, /*include_result=*/true, /*owner_call=*/!detach,
                  [&](const v1::JobEvent& e) { return stream->Write(e); });
  }

  // Streams progress until the job ends, then (on success, with include_result) the result
  // chunks, then the summary. If owner_call and the client goes away, the job is cancelled.
  template <typename WriteFn>
  absl::Status Follow(grpc::ServerContext* ctx, const std::shared_ptr<Job>& job_ptr, const std::string& id,
                      bool include_result, bool owner_call, WriteFn&& write) {
    Job& job = *job_ptr;
    int64_t seen = -1;
    v1::JobState last_state = v1::JOB_STATE_UNSPECIFIED;
    auto last_sent = std::chrono::steady_clock::now() - std::chrono::seconds(1);
    for (;;) {
      if (ctx->IsCancelled()) {
        if (owner_call) {
          const bool deadline = std::chrono::system_clock::now() >= ctx->deadline();
          jobs_->Fail(job_ptr, deadline ? absl::DeadlineExceededError("the call's deadline passed")
                                        : absl::CancelledError("the client cancelled the call"));
        }
        return absl::CancelledError("call cancelled by the client or its deadline");
      }
      seen = jobs_->WaitForChange(job, seen, std::chrono::milliseconds(200));
      const v1::Progress p = jobs_->Snapshot(job);
      const auto now = std::chrono::steady_clock::now();
      if (p.state() != last_state || now - last_sent > std::chrono::milliseconds(100)) {
        if (!write(ProgressEvent(id, p)) && !owner_call) return absl::CancelledError("watcher went away");
        last_state = p.state();
        last_sent = now;
      }
      if (IsTerminal(p.state())) break;
    }
    // finished is complete once the state is terminal (written before the final Notify).
    v1::Finished fin = job.finished;
    if (fin.state() == v1::JOB_STATE_UNSPECIFIED) fin = EncodeFailure(job.status);  // ended before running
    if (fin.state() == v1::JOB_STATE_SUCCEEDED && include_result) {
      AXEQ_RETURN_IF_ERROR(jobs_->LoadResult(job));
      if (!EmitResultChunks(id, *job.codes, *job.scales, job.bias.get(), write))
        return absl::CancelledError("client went away while the result was streamed");
    }
    write(FinishedEvent(id, fin));
    return FinishedStatus(fin);
  }

  JobManager* jobs_;
  Metrics* metrics_;
  Authenticator auth_;
  int64_t max_upload_bytes_;
};

}  // namespace

std::unique_ptr<grpc::Service> MakeQuantizerService(JobManager* jobs, Metrics* metrics, Authenticator auth,
                                                    int64_t max_upload_bytes) {
  return std::make_unique<QuantizerService>(jobs, metrics, std::move(auth), max_upload_bytes);
}

}  // namespace axeq::server
