// Admission of uploads (limits checked and memory reserved before anything is allocated),
// idempotency keys bound once the content is known, and upload activity with its idle timeout.
#include "absl/strings/str_cat.h"
#include "proto/convert.h"
#include "server/job_manager.h"

namespace axeq::server {
namespace {

int64_t MiB(int64_t b) { return (b + (1 << 20) - 1) >> 20; }

}  // namespace

absl::StatusOr<std::shared_ptr<Job>> JobManager::Admit(const AdmitRequest& req) {
  if (req.layer_name.size() > kMaxLayerNameBytes)
    return absl::InvalidArgumentError(absl::StrCat("layer name has ", req.layer_name.size(),
                                                   " bytes, limit ", kMaxLayerNameBytes));
  if (req.idempotency_key.size() > kMaxIdempotencyKeyBytes)  // Deduplicate checks it too
    return absl::InvalidArgumentError(absl::StrCat("idempotency key has ",
                                                   req.idempotency_key.size(), " bytes, limit ",
                                                   kMaxIdempotencyKeyBytes));
  const int64_t budget = options_.memory_budget_bytes;
  if (req.bytes < 0 || req.bytes > budget)
    return absl::FailedPreconditionError(
        absl::StrCat("layer needs ",
                     req.bytes < 0 ? std::string("more than 2^63 bytes")
                                   : absl::StrCat("~", MiB(req.bytes), " MiB"),
                     " at its peak, more than this server's whole memory budget of ", MiB(budget),
                     " MiB: it can never run here"));
  auto job = std::make_shared<Job>();
  {
    std::lock_guard<std::mutex> l(mu_);
    if (draining_) return absl::UnavailableError("server is draining; retry on another replica");
    const size_t waiting = uploads_.size() + queue_.size();
    if (waiting >= static_cast<size_t>(options_.max_queue))
      return absl::ResourceExhaustedError(
          absl::StrCat("queue is full: ", uploads_.size(), " uploads receiving + ", queue_.size(),
                       " jobs waiting, limit ", options_.max_queue));
    if (reserved_ + req.bytes > budget)
      return absl::ResourceExhaustedError(absl::StrCat("memory budget in use: ", MiB(reserved_),
                                                       " MiB reserved + ~", MiB(req.bytes),
                                                       " MiB needed > ", MiB(budget), " MiB"));
    job->principal = req.principal;
    job->layer_name = req.layer_name;
    job->created_unix_ms = job->last_activity_ms = UnixMs();
    job->reserved_bytes = req.bytes;
    reserved_ += req.bytes;
    uploads_[job.get()] = job;
    // A key already bound to a live or finished job: this upload carries that job's id.
    std::string existing;
    if (!req.idempotency_key.empty()) {
      auto it = by_key_.find({req.principal, req.idempotency_key});
      if (it != by_key_.end() && jobs_.count(it->second)) {
        const Job& old = *jobs_[it->second];
        if (old.state != JobState::kFailed && old.state != JobState::kCancelled) existing = old.id;
      } else if (durable_) {
        existing = durable_->FindKey(req.principal, req.idempotency_key).value_or("");
      }
    }
    job->listed = existing.empty();
    job->id = existing.empty() ? NewJobId() : existing;
    if (job->listed) jobs_[job->id] = job;
  }
  if (hooks_.on_event) hooks_.on_event(*job, "admitted");
  ReportLoad();
  return job;
}

absl::StatusOr<std::shared_ptr<Job>> JobManager::Deduplicate(const std::shared_ptr<Job>& job,
                                                             const std::string& key,
                                                             const std::string& digest) {
  std::optional<DurableEntry> on_disk;
  if (!key.empty() && durable_)
    if (auto id = durable_->FindKey(job->principal, key)) on_disk = durable_->Find(*id);
  std::shared_ptr<Job> old;
  std::string old_id, old_digest;
  {
    std::lock_guard<std::mutex> l(mu_);
    job->content_digest = digest;
    if (key.empty()) return job;
    if (key.size() > kMaxIdempotencyKeyBytes)
      return absl::InvalidArgumentError(absl::StrCat("idempotency key has ", key.size(),
                                                     " bytes, limit ", kMaxIdempotencyKeyBytes));
    auto it = by_key_.find({job->principal, key});
    if (it != by_key_.end() && jobs_.count(it->second) && jobs_[it->second] != job) {
      old = jobs_[it->second];
      if (old->state == JobState::kFailed || old->state == JobState::kCancelled) old.reset();
    }
    if (old) {
      old_id = old->id;
      old_digest = old->content_digest;
    } else if (on_disk) {
      old_id = on_disk->id;
      old_digest = on_disk->content_digest;
    }
    if (!old_id.empty() && old_digest != digest)
      return absl::AlreadyExistsError(absl::StrCat(
          "idempotency key '", key, "' was used for different content (job ", old_id, ")"));
    if (old_id.empty()) {  // the key is free (or its job failed): this upload becomes the job
      job->idempotency_key = key;
      by_key_[{job->principal, key}] = job->id;
      if (!job->listed) {
        job->listed = true;
        jobs_[job->id] = job;
      }
      return job;
    }
    // The same content under the same key: the upload is dropped, the earlier job followed.
    auto self = jobs_.find(job->id);
    if (self != jobs_.end() && self->second == job) jobs_.erase(self);
    job->listed = false;
    Finish(*job, absl::AbortedError(absl::StrCat("duplicate of job ", old_id)));
  }
  ReportLoad();
  if (old) return old;
  return Get(job->principal, old_id);  // from disk
}

void JobManager::AddReceived(Job& job, int64_t bytes) {
  std::lock_guard<std::mutex> l(mu_);
  job.bytes_received += bytes;
  job.last_activity_ms = UnixMs();
  Notify(job);
}

void JobManager::KeepAlive(Job& job) { job.last_activity_ms = UnixMs(); }

void JobManager::ExpireUploads(int64_t now) {
  std::vector<std::shared_ptr<Job>> idle;
  for (auto& [p, job] : uploads_)
    if (now - job->last_activity_ms > options_.upload_idle_timeout.count()) idle.push_back(job);
  for (auto& job : idle) {
    if (job->abort_upload) job->abort_upload();  // ends the call, which frees its buffers
    FailLocked(job,
               absl::DeadlineExceededError(absl::StrCat(
                   "upload idle for more than ", options_.upload_idle_timeout.count() / 1000.0,
                   " s; its reservation of ", job->reserved_bytes >> 20, " MiB was released")));
  }
}

}  // namespace axeq::server
