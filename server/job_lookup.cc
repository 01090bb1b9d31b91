// Job lookups (memory, durable results, mirrors of jobs owned by other replicas), progress
// snapshots and housekeeping: idle-upload timeouts, eviction of finished jobs from memory and
// retention of durable results, all on one background thread.
#include <cstring>

#include "absl/strings/str_cat.h"
#include "grpcpp/client_context.h"
#include "proto/convert.h"
#include "server/job_manager.h"

namespace axeq::server {
namespace {

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}
bool Terminal(v1::JobState s) {
  return s == v1::JOB_STATE_SUCCEEDED || s == v1::JOB_STATE_FAILED || s == v1::JOB_STATE_CANCELLED;
}

}  // namespace

// The summary of a finished layer as the wire carries it.
v1::Finished FinishedFromLayer(const QuantizedLayer& res) {
  v1::Finished f;
  f.set_state(v1::JOB_STATE_SUCCEEDED);
  f.set_layer_name(res.name);
  f.set_output_channels(res.codes.rows());
  f.set_inputs(res.codes.cols());
  f.set_scale_groups(res.scales.cols());
  f.set_has_bias(res.bias.has_value());
  *f.mutable_activations() = ActivationsToProto(res.activations);
  *f.mutable_report() = ReportToProto(res);
  f.set_group_size(res.group_size);
  *f.mutable_certificate() = CertificateToProto(res.certificate);
  return f;
}

absl::StatusOr<std::shared_ptr<Job>> JobManager::Get(const std::string& principal, const std::string& id) {
  if (id.empty() || id.size() > kMaxJobIdBytes)
    return absl::InvalidArgumentError(absl::StrCat("job id must have 1..", kMaxJobIdBytes, " bytes, got ", id.size()));
  {
    std::lock_guard<std::mutex> l(mu_);
    auto it = jobs_.find(id);
    if (it != jobs_.end()) {
      if (it->second->principal != principal)
        return absl::PermissionDeniedError(absl::StrCat("job ", id, " belongs to another principal"));
      return it->second;
    }
  }
  const auto parts = ParseJobId(id);
  if (parts && parts->replica != replica_id_) return Mirror(principal, id, parts->replica);
  if (durable_ && durable_->Find(id)) return FromDisk(principal, id);
  const bool issued_before = parts && parts->boot != boot_ && (!durable_ || earlier_boots_.count(parts->boot));
  if (issued_before)
    return absl::AbortedError(absl::StrCat("job ", id, " was lost: replica ", replica_id_,
                                           " restarted before it finished and its result was not stored; resubmit it"));
  return absl::NotFoundError(absl::StrCat("no job ", id, " on replica ", replica_id_, " (never existed, or expired)"));
}

absl::StatusOr<std::shared_ptr<Job>> JobManager::FromDisk(const std::string& principal, const std::string& id) {
  auto entry = durable_->Find(id);
  if (!entry) return absl::NotFoundError(absl::StrCat("no job ", id, " (expired)"));
  if (entry->principal != principal) return absl::PermissionDeniedError(absl::StrCat("job ", id, " belongs to another principal"));
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
  job->finished = FinishedFromLayer(*layer);
  job->codes = std::make_shared<const MatrixXi8>(std::move(layer->codes));
  job->scales = std::make_shared<const MatrixXf>(std::move(layer->scales));
  if (layer->bias) job->bias = std::make_shared<const Eigen::VectorXf>(std::move(*layer->bias));
  std::lock_guard<std::mutex> l(mu_);
  auto [it, inserted] = jobs_.emplace(id, job);
  if (!inserted) return it->second;  // loaded meanwhile by another call
  job->fraction = 1;
  Finish(*job, absl::OkStatus());
  return job;
}

absl::StatusOr<std::shared_ptr<Job>> JobManager::Mirror(const std::string& principal, const std::string& id,
                                                        const std::string& replica) {
  auto job = std::make_shared<Job>();
  job->id = id;
  job->principal = principal;
  job->listed = false;
  job->state = v1::JOB_STATE_UNSPECIFIED;
  auto first = std::make_shared<std::promise<absl::Status>>();
  auto answered = first->get_future();
  {
    std::lock_guard<std::mutex> l(mu_);
    if (stopping_) return absl::UnavailableError("server is stopping");
    ++active_mirrors_;
  }
  // The owner's events update the mirror; its result parts are reassembled at the end.
  std::thread([this, job, first, replica, principal, id] {
    std::string parts[4];
    bool got_event = false;
    grpc::ClientContext* call = nullptr;
    const absl::Status end = peers_->Watch(
        replica, principal, id,
        [&](const v1::JobEvent& e) {
          std::lock_guard<std::mutex> l(mu_);
          if (!got_event) first->set_value(absl::OkStatus());
          got_event = true;
          if (e.has_progress()) {
            // A terminal state is the mirror's only once the result parts are all in (below).
            if (!Terminal(e.progress().state())) job->state = e.progress().state();
            else if (job->state == v1::JOB_STATE_UNSPECIFIED) job->state = v1::JOB_STATE_RUNNING;
            job->bytes_received = e.progress().bytes_received();
            job->fraction = e.progress().fraction();
          }
          if (e.has_result() && e.result().part() > 0 && e.result().part() < 4) parts[e.result().part()] += e.result().data();
          if (e.has_finished()) job->finished = e.finished();
          Notify(*job);
          if (job.use_count() <= 1 && call) call->TryCancel();  // nobody follows the mirror any more
        },
        [&](grpc::ClientContext* ctx) {
          std::lock_guard<std::mutex> l(mu_);
          call = ctx;
          mirror_calls_[job.get()] = ctx;
        });
    std::lock_guard<std::mutex> l(mu_);
    mirror_calls_.erase(job.get());
    if (!got_event) first->set_value(end);
    const v1::Finished& f = job->finished;
    const int64_t c = f.output_channels(), k = f.inputs(), g = f.scale_groups();
    if (f.state() == v1::JOB_STATE_SUCCEEDED && static_cast<int64_t>(parts[1].size()) == c * k &&
        static_cast<int64_t>(parts[2].size()) == c * g * 4 && (!f.has_bias() || static_cast<int64_t>(parts[3].size()) == c * 4)) {
      auto codes = std::make_shared<MatrixXi8>(c, k);
      std::memcpy(codes->data(), parts[1].data(), parts[1].size());
      auto scales = std::make_shared<MatrixXf>(c, g);
      std::memcpy(scales->data(), parts[2].data(), parts[2].size());
      job->codes = codes;
      job->scales = scales;
      if (f.has_bias()) {
        auto bias = std::make_shared<Eigen::VectorXf>(c);
        std::memcpy(bias->data(), parts[3].data(), parts[3].size());
        job->bias = bias;
      }
      Finish(*job, absl::OkStatus());
    } else if (f.state() == v1::JOB_STATE_SUCCEEDED) {
      Finish(*job, end.ok() ? absl::DataLossError(absl::StrCat("the result of job ", id, " from replica ", replica, " was incomplete")) : end);
    } else if (!Terminal(job->state) || f.state() == v1::JOB_STATE_UNSPECIFIED) {
      Finish(*job, end.ok() ? absl::UnavailableError(absl::StrCat("lost contact with replica ", replica)) : end);
    } else {
      Finish(*job, absl::Status(static_cast<absl::StatusCode>(f.code()), f.message()));
    }
    job->finished.set_state(job->state);  // Finish keeps the owner's summary and code
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
    if (job.state != v1::JOB_STATE_SUCCEEDED)
      return absl::FailedPreconditionError(absl::StrCat("job ", job.id, " has no result (state ", v1::JobState_Name(job.state), ")"));
    if (job.codes) return absl::OkStatus();
  }
  if (!durable_) return absl::DataLossError(absl::StrCat("the result of job ", job.id, " is gone"));
  auto layer = durable_->Load(job.id);
  if (!layer.ok()) return layer.status();
  std::lock_guard<std::mutex> l(mu_);
  job.codes = std::make_shared<const MatrixXi8>(std::move(layer->codes));
  job.scales = std::make_shared<const MatrixXf>(std::move(layer->scales));
  if (layer->bias) job.bias = std::make_shared<const Eigen::VectorXf>(std::move(*layer->bias));
  return absl::OkStatus();
}

std::vector<std::shared_ptr<Job>> JobManager::List(const std::string& principal) {
  std::lock_guard<std::mutex> l(mu_);
  std::vector<std::shared_ptr<Job>> out;
  for (auto& [id, j] : jobs_)
    if (j->principal == principal) out.push_back(j);
  std::sort(out.begin(), out.end(), [](auto& a, auto& b) { return a->created_unix_ms < b->created_unix_ms; });
  return out;
}

int64_t JobManager::WaitForChange(const Job& job, int64_t seen, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> l(mu_);
  change_cv_.wait_for(l, timeout, [&] { return job.version != seen; });
  return job.version;
}

v1::Progress JobManager::Snapshot(const Job& job, int* queue_position) {
  std::lock_guard<std::mutex> l(mu_);
  v1::Progress p;
  p.set_state(job.state);
  p.set_bytes_received(job.bytes_received);
  p.set_fraction(job.fraction);
  int pos = 0;
  for (size_t i = 0; i < queue_.size(); ++i)
    if (queue_[i].get() == &job) pos = static_cast<int>(i) + 1;
  p.set_queue_position(pos);
  if (queue_position) *queue_position = pos;
  return p;
}

RunContext JobManager::ComputeContext() {
  RunContext ctx;
  ctx.parallel_for = [this](int64_t n, const std::function<void(int64_t)>& f) { compute_->ParallelFor(n, f); };
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
    const int64_t now = NowMs();
    ExpireUploads(now);
    EvictFinished(now);
    if (!durable_) continue;
    l.unlock();
    const auto removed = durable_->Trim(now - static_cast<int64_t>(options_.retention_hours * 3600e3), options_.retention_max_bytes);
    l.lock();
    for (const auto& id : removed) {  // results that are gone from disk leave memory as well
      auto it = jobs_.find(id);
      if (it != jobs_.end() && it->second->state == v1::JOB_STATE_SUCCEEDED) jobs_.erase(it);
    }
  }
}

void JobManager::ExpireUploads(int64_t now) {
  std::vector<std::shared_ptr<Job>> idle;
  for (auto& [p, job] : uploads_)
    if (now - job->last_activity_ms > options_.upload_idle_timeout.count()) idle.push_back(job);
  for (auto& job : idle) {
    if (job->abort_upload) job->abort_upload();  // ends the call, which frees its buffers
    FailLocked(job, absl::DeadlineExceededError(absl::StrCat("upload idle for more than ", options_.upload_idle_timeout.count() / 1000.0,
                                                              " s; its reservation of ", job->reserved_bytes >> 20, " MiB was released")));
  }
}

void JobManager::EvictFinished(int64_t now) {
  auto evict = [&](std::list<std::string>& order, size_t keep) {
    while (!order.empty()) {
      auto it = jobs_.find(order.front());
      const bool gone = it == jobs_.end() || !Terminal(it->second->state);
      if (!gone && order.size() <= keep && now - it->second->ended_ms < options_.finished_ttl.count()) break;
      if (!gone) {
        const Job& j = *it->second;
        auto key = by_key_.find({j.principal, j.idempotency_key});
        if (key != by_key_.end() && key->second == j.id) by_key_.erase(key);  // durable results keep theirs
        jobs_.erase(it);
      }
      order.pop_front();
    }
  };
  evict(finished_order_, static_cast<size_t>(options_.max_finished_jobs));
  evict(failed_order_, static_cast<size_t>(options_.max_failed_jobs));
}

}  // namespace axeq::server
