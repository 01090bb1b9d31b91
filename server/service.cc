// axeq.v1.Quantizer on gRPC's generated synchronous service: reads the upload's messages into an
// Upload (server/upload.h checks each against the header's plan), hands the layer to the
// JobManager and follows the job, streaming progress and the chunked result. Every message is
// built and read by the codec in proto/; status conversion happens in ToGrpc.
#include "server/service.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "axeq/v1/axeq.grpc.pb.h"
#include "core/status_macros.h"
#include "grpcpp/grpcpp.h"
#include "proto/convert.h"
#include "server/upload.h"

namespace axeq::server {
namespace {

using UploadStream = grpc::ServerReaderWriter<v1::JobEvent, v1::UploadRequest>;

class QuantizerService final : public v1::Quantizer::Service {
 public:
  QuantizerService(JobManager* jobs, Metrics* metrics, Authenticator auth, int64_t max_upload_bytes)
      : jobs_(jobs),
        metrics_(metrics),
        auth_(std::move(auth)),
        max_upload_bytes_(max_upload_bytes) {}

  grpc::Status Quantize(grpc::ServerContext* ctx, UploadStream* stream) override {
    return Done("Quantize", DoQuantize(ctx, stream));
  }

  grpc::Status Watch(grpc::ServerContext* ctx, const v1::WatchRequest* req,
                     grpc::ServerWriter<v1::JobEvent>* writer) override {
    auto principal = auth_.Authenticate(*ctx);
    if (!principal.ok()) return Done("Watch", principal.status());
    auto job = jobs_->Get(*principal, req->job_id());
    if (!job.ok()) return Done("Watch", job.status());
    return Done("Watch",
                Follow(ctx, *job, req->job_id(), req->include_result(), /*owner_call=*/false,
                       [&](const v1::JobEvent& e) { return writer->Write(e); }));
  }

  grpc::Status Cancel(grpc::ServerContext* ctx, const v1::CancelRequest* req,
                      v1::CancelResponse* resp) override {
    auto principal = auth_.Authenticate(*ctx);
    if (!principal.ok()) return Done("Cancel", principal.status());
    auto state = jobs_->Cancel(*principal, req->job_id());
    if (!state.ok()) return Done("Cancel", state.status());
    resp->set_state(EncodeState(*state));
    return Done("Cancel", absl::OkStatus());
  }

  grpc::Status ListJobs(grpc::ServerContext* ctx, const v1::ListJobsRequest*,
                        v1::ListJobsResponse* resp) override {
    auto principal = auth_.Authenticate(*ctx);
    if (!principal.ok()) return Done("ListJobs", principal.status());
    for (const auto& j : jobs_->List(*principal))
      *resp->add_jobs() =
          EncodeJobInfo(j->id, j->layer_name, jobs_->Snapshot(*j).state, j->created_unix_ms);
    return Done("ListJobs", absl::OkStatus());
  }

 private:
  grpc::Status Done(const char* method, const absl::Status& s) {
    if (metrics_) metrics_->Request(method, absl::StatusCodeToString(s.code()));
    return ToGrpc(s);
  }

  // Reads the header and admits the upload; errors before admission carry no job id.
  absl::StatusOr<std::shared_ptr<Job>> Admit(grpc::ServerContext* ctx, UploadStream* stream,
                                             const std::string& principal,
                                             std::unique_ptr<Upload>* up) {
    v1::UploadRequest msg;
    if (!stream->Read(&msg))
      return ctx->IsCancelled()
                 ? absl::CancelledError("client went away before sending a header")
                 : absl::InvalidArgumentError("empty upload: the first message must be a header");
    if (!msg.has_header())
      return absl::InvalidArgumentError("the first upload message must be a header");
    AXEQ_ASSIGN_OR_RETURN(UploadPlan plan, DecodeHeader(msg.header()));
    if (plan.TensorBytes() > max_upload_bytes_)
      return absl::FailedPreconditionError(
          absl::StrCat("layer upload of ", plan.TensorBytes() >> 20,
                       " MiB exceeds the server's limit of ", max_upload_bytes_ >> 20, " MiB"));
    *up = std::make_unique<Upload>(std::move(plan), jobs_);
    (*up)->HashHeader(msg.header());
    const UploadPlan& p = (*up)->plan();
    auto admitted = jobs_->Admit(
        AdmitRequest{principal, p.layer_name, p.idempotency_key, (*up)->EstimateBytes()});
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
    if (!detach && ctx->deadline() != std::chrono::system_clock::time_point::max())
      job->deadline = ctx->deadline();
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
        return fail(
            ctx->IsCancelled()
                ? absl::CancelledError("upload cancelled by the client or its deadline")
                : absl::InvalidArgumentError("upload stream ended before its commit (truncated)"));
      const int64_t bytes = static_cast<int64_t>(msg.ByteSizeLong());
      if (metrics_) metrics_->Received(bytes);
      since_report += bytes;
      absl::Status s;
      switch (msg.kind_case()) {
        case v1::UploadRequest::kHeader:
          s = absl::InvalidArgumentError("a second header arrived in the same upload");
          break;
        case v1::UploadRequest::kTensor:
          s = up->AddTensor(msg.tensor());
          break;
        case v1::UploadRequest::kRows:
          s = up->AddRows(msg.rows());
          break;
        case v1::UploadRequest::kCommit: {
          auto in = up->Finish(msg.commit());
          if (in.ok())
            input = std::move(in).value();
          else
            s = in.status();
          break;
        }
        default:
          s = absl::InvalidArgumentError("upload message without content");
          break;
      }
      if (!s.ok()) return fail(s);
      jobs_->KeepAlive(*job);  // every chunk resets the idle timer; progress is reported less often
      if (since_report > (16 << 20) || input) {
        jobs_->AddReceived(*job, since_report);
        since_report = 0;
      }
    }
    auto dedup = jobs_->Deduplicate(job, up->plan().idempotency_key, up->DigestHex());
    if (!dedup.ok()) return fail(dedup.status());
    if (*dedup != job)
      job = *dedup;  // the same content under the same key: follow the earlier job
    else
      jobs_->Submit(job, std::move(input));
    up.reset();
    return Follow(ctx, job, id, /*include_result=*/true, /*owner_call=*/!detach,
                  [&](const v1::JobEvent& e) { return stream->Write(e); });
  }

  // Streams progress until the job ends, then (on success, with include_result) the result
  // chunks, then the summary. If owner_call and the client goes away, the job is cancelled.
  template <typename WriteFn>
  absl::Status Follow(grpc::ServerContext* ctx, const std::shared_ptr<Job>& job_ptr,
                      const std::string& id, bool include_result, bool owner_call,
                      WriteFn&& write) {
    Job& job = *job_ptr;
    int64_t seen = -1;
    JobState last_state = JobState::kUnknown;
    auto last_sent = std::chrono::steady_clock::now() - std::chrono::seconds(1);
    for (;;) {
      if (ctx->IsCancelled()) {
        if (owner_call) {
          const bool deadline = DeadlinePassed(ctx->deadline());
          jobs_->Fail(job_ptr, deadline ? absl::DeadlineExceededError("the call's deadline passed")
                                        : absl::CancelledError("the client cancelled the call"));
        }
        return absl::CancelledError("call cancelled by the client or its deadline");
      }
      seen = jobs_->WaitForChange(job, seen, std::chrono::milliseconds(200));
      const JobSnapshot p = jobs_->Snapshot(job);
      const auto now = std::chrono::steady_clock::now();
      if (p.state != last_state || now - last_sent > std::chrono::milliseconds(100)) {
        if (!write(ProgressEvent(id, p)) && !owner_call)
          return absl::CancelledError("watcher went away");
        last_state = p.state;
        last_sent = now;
      }
      if (IsTerminal(p.state)) break;
    }
    // status and result are complete once the state is terminal (written before the final Notify).
    if (job.status.ok() && (include_result || !job.result))
      AXEQ_RETURN_IF_ERROR(jobs_->LoadResult(job));
    const v1::Finished fin = EncodeOutcome(job.status, job.result.get());
    if (job.status.ok() && include_result) {
      const QuantizedLayer& r = *job.result;
      if (!EmitResultChunks(id, r.codes, r.scales, r.bias ? &*r.bias : nullptr, write))
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

std::unique_ptr<grpc::Service> MakeQuantizerService(JobManager* jobs, Metrics* metrics,
                                                    Authenticator auth, int64_t max_upload_bytes) {
  return std::make_unique<QuantizerService>(jobs, metrics, std::move(auth), max_upload_bytes);
}

}  // namespace axeq::server
