// Job lookups (memory, durable results, mirrors of jobs owned by other replicas, whose events are
// decoded by proto/result.h), progress snapshots and housekeeping on one background thread:
// idle-upload timeouts (job_admission.cc), eviction of finished jobs from memory and retention of
// durable results.
#include "absl/strings/str_cat.h"
#include "grpcpp/client_context.h"
#include "proto/convert.h"
#include "server/job_manager.h"
#include "server/limits.h"

namespace axeq::server {

absl::StatusOr<std::shared_ptr<Job>> JobManager::Get(const std::string& principal,
                                                     const std::string& id) {
  if (id.empty() || id.size() > kMaxJobIdBytes)
    return absl::InvalidArgumentError(
        absl::StrCat("job id must have 1..", kMaxJobIdBytes, " bytes, got ", id.size()));
  {
    std::lock_guard<std::mutex> l(mu_);
    auto it = jobs_.find(id);
    if (it != jobs_.end()) {
      if (it->second->principal != principal)
        return absl::PermissionDeniedError(
            absl::StrCat("job ", id, " belongs to another principal"));
      return it->second;
    }
  }
  const auto parts = ParseJobId(id);
  if (parts && parts->replica != replica_id_) return Mirror(principal, id, parts->replica);
  if (durable_ && durable_->Find(id)) return FromDisk(principal, id);
  const bool issued_before =
      parts && parts->boot != boot_ && (!durable_ || earlier_boots_.count(parts->boot));
  if (issued_before)
    return absl::AbortedError(
        absl::StrCat("job ", id, " was lost: replica ", replica_id_,
                     " restarted before it finished and its result was not stored; resubmit it"));
  return absl::NotFoundError(
      absl::StrCat("no job ", id, " on replica ", replica_id_, " (never existed, or expired)"));
}

absl::StatusOr<std::shared_ptr<Job>> JobManager::FromDisk(const std::string& principal,
                                                          const std::string& id) {
  auto entry = durable_->Find(id);
  if (!entry) return absl::NotFoundError(absl::StrCat("no job ", id, " (expired)"));
  if (entry->principal != principal)
    return absl::PermissionDeniedError(absl::StrCat("job ", id, " belongs to another principal"));
  auto layer = durable_->Load(id);
  if (!layer.ok()) return layer.status();
  auto job = std::make_shared<Job>();
  job->id = id;
  job->principal = entry->principal;
  job->layer_name = entry->layer_name;
  job->idempotency_key = entry->idempotency_key;
  job->content_digest = entry->content_digest;
  job->created_unix_ms = entry->created_unix_ms;
  job->durable_path = entry->path;
  StoreResult(*job, std::move(*layer));
  std::lock_guard<std::mutex> l(mu_);
  auto [it, inserted] = jobs_.emplace(id, job);
  if (!inserted) return it->second;  // loaded meanwhile by another call
  job->fraction = 1;
  Finish(*job, absl::OkStatus());
  return job;
}

absl::StatusOr<std::shared_ptr<Job>> JobManager::Mirror(const std::string& principal,
                                                        const std::string& id,
                                                        const std::string& replica) {
  auto job = std::make_shared<Job>();
  job->id = id;
  job->principal = principal;
  job->listed = false;
  job->state = JobState::kUnknown;
  auto first = std::make_shared<std::promise<absl::Status>>();
  auto answered = first->get_future();
  {
    std::lock_guard<std::mutex> l(mu_);
    if (stopping_) return absl::UnavailableError("server is stopping");
    ++active_mirrors_;
  }
  // The owner's events update the mirror; its result is decoded (proto/result.h) at the end.
  std::thread([this, job, first, replica, principal, id] {
    ResultDecoder decoder;
    absl::Status bad;
    bool got_event = false;
    grpc::ClientContext* call = nullptr;
    auto progress = [&](const JobSnapshot& p) {  // called with mu_ held
      // A terminal state is the mirror's only once the result is all in (below).
      if (!IsTerminal(p.state))
        job->state = p.state;
      else if (job->state == JobState::kUnknown)
        job->state = JobState::kRunning;
      job->bytes_received = p.bytes_received;
      job->fraction = p.fraction;
    };
    const absl::Status end = peers_->Watch(
        replica, principal, id,
        [&](const v1::JobEvent& e) {
          std::lock_guard<std::mutex> l(mu_);
          if (!got_event) first->set_value(absl::OkStatus());
          got_event = true;
          const absl::Status s = decoder.Add(e, progress);
          if (bad.ok()) bad = s;
          Notify(*job);
          if (job.use_count() <= 1 && call)
            call->TryCancel();  // nobody follows the mirror any more
        },
        [&](grpc::ClientContext* ctx) {
          std::lock_guard<std::mutex> l(mu_);
          call = ctx;
          mirror_calls_[job.get()] = ctx;
        });
    std::lock_guard<std::mutex> l(mu_);
    mirror_calls_.erase(job.get());
    if (!got_event) first->set_value(end);
    absl::StatusOr<QuantizedLayer> layer =
        bad.ok() ? decoder.Finish() : absl::StatusOr<QuantizedLayer>(bad);
    if (layer.ok()) {
      StoreResult(*job, std::move(layer).value());
      Finish(*job, absl::OkStatus());
    } else if (decoder.succeeded()) {
      Finish(*job, end.ok() ? absl::DataLossError(
                                  absl::StrCat("the result of job ", id, " from replica ", replica,
                                               " was incomplete: ", layer.status().message()))
                            : end);
    } else if (!decoder.finished()) {
      Finish(*job, end.ok()
                       ? absl::UnavailableError(absl::StrCat("lost contact with replica ", replica))
                       : end);
    } else {
      Finish(*job, layer.status());  // the owner's job failed: its code and message
    }
    --active_mirrors_;
    change_cv_.notify_all();
  }).detach();
  const absl::Status s = answered.get();
  if (!s.ok()) return s;
  return job;
}

absl::Status JobManager::LoadResult(Job& job) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (job.state != JobState::kSucceeded)
      return absl::FailedPreconditionError(
          absl::StrCat("job ", job.id, " has no result (state ", JobStateName(job.state), ")"));
    if (job.result) return absl::OkStatus();
  }
  if (!durable_) return absl::DataLossError(absl::StrCat("the result of job ", job.id, " is gone"));
  auto layer = durable_->Load(job.id);
  if (!layer.ok()) return layer.status();
  std::lock_guard<std::mutex> l(mu_);
  StoreResult(job, std::move(*layer));
  return absl::OkStatus();
}

std::vector<std::shared_ptr<Job>> JobManager::List(const std::string& principal) {
  std::lock_guard<std::mutex> l(mu_);
  std::vector<std::shared_ptr<Job>> out;
  for (auto& [id, j] : jobs_)
    if (j->principal == principal) out.push_back(j);
  std::sort(out.begin(), out.end(),
            [](auto& a, auto& b) { return a->created_unix_ms < b->created_unix_ms; });
  return out;
}

int64_t JobManager::WaitForChange(const Job& job, int64_t seen, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> l(mu_);
  change_cv_.wait_for(l, timeout, [&] { return job.version != seen; });
  return job.version;
}

JobSnapshot JobManager::Snapshot(const Job& job) {
  std::lock_guard<std::mutex> l(mu_);
  JobSnapshot p{job.state, job.bytes_received, job.fraction, 0};
  for (size_t i = 0; i < queue_.size(); ++i)
    if (queue_[i].get() == &job) p.queue_position = static_cast<int>(i) + 1;
  return p;
}

RunContext JobManager::ComputeContext() {
  RunContext ctx;
  ctx.parallel_for = [this](int64_t n, const std::function<void(int64_t)>& f) {
    compute_->ParallelFor(n, f);
  };
  return ctx;
}

int JobManager::queued() const {
  std::lock_guard<std::mutex> l(mu_);
  return static_cast<int>(queue_.size());
}
int JobManager::running() const {
  std::lock_guard<std::mutex> l(mu_);
  return running_;
}
size_t JobManager::jobs_in_memory() const {
  std::lock_guard<std::mutex> l(mu_);
  return jobs_.size();
}

void JobManager::Housekeeping() {
  std::unique_lock<std::mutex> l(mu_);
  while (!stopping_) {
    housekeeping_cv_.wait_for(l, options_.housekeeping_interval);
    if (stopping_) break;
    const int64_t now = UnixMs();
    ExpireUploads(now);
    EvictFinished(now);
    if (ReleaseMemoryWhenIdle(now)) {
      l.unlock();
      ReleaseFreeMemory();
      if (hooks_.on_memory_released) hooks_.on_memory_released();
      l.lock();
    }
    if (!durable_) continue;
    l.unlock();
    const auto removed =
        durable_->Trim(now - static_cast<int64_t>(options_.retention_hours * 3600e3),
                       options_.retention_max_bytes);
    l.lock();
    for (const auto& id : removed) {  // results that are gone from disk leave memory as well
      auto it = jobs_.find(id);
      if (it != jobs_.end() && it->second->state == JobState::kSucceeded) jobs_.erase(it);
    }
  }
}

bool JobManager::ReleaseMemoryWhenIdle(int64_t now) {
  if (!memory_to_release_ || running_ > 0 || !queue_.empty() || !uploads_.empty()) return false;
  if (now - last_release_ms_ < options_.release_idle.count()) return false;
  memory_to_release_ = false;
  return true;
}

void JobManager::EvictFinished(int64_t now) {
  auto evict = [&](std::list<std::string>& order, size_t keep) {
    while (!order.empty()) {
      auto it = jobs_.find(order.front());
      const bool gone = it == jobs_.end() || !IsTerminal(it->second->state);
      if (!gone && order.size() <= keep &&
          now - it->second->ended_ms < options_.finished_ttl.count())
        break;
      if (!gone) {
        const Job& j = *it->second;
        auto key = by_key_.find({j.principal, j.idempotency_key});
        if (key != by_key_.end() && key->second == j.id)
          by_key_.erase(key);  // durable results keep theirs
        jobs_.erase(it);
      }
      order.pop_front();
    }
  };
  evict(finished_order_, static_cast<size_t>(options_.max_finished_jobs));
  evict(failed_order_, static_cast<size_t>(options_.max_failed_jobs));
}

}  // namespace axeq::server
