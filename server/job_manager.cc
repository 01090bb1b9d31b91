// Job lifecycle after admission: queue, workers, terminal states, cancellation, drain. Admission,
// idempotency and upload activity are in job_admission.cc; lookups, mirrors of other replicas'
// jobs and housekeeping (eviction, retention) in job_lookup.cc.
#include "server/job_manager.h"

#include <random>

#include "absl/strings/str_cat.h"
#include "grpcpp/client_context.h"
#include "proto/convert.h"
#include "server/limits.h"

namespace axeq::server {
namespace {

uint64_t Random64() {
  static thread_local std::mt19937_64 rng(std::random_device{}() ^
                                          std::hash<std::thread::id>{}(std::this_thread::get_id()));
  return rng();
}

}  // namespace

JobManager::JobManager(const JobManagerOptions& options) : options_(options) {
  if (options_.workers <= 0) options_.workers = CpuQuota();
  if (options_.compute_threads <= 0) options_.compute_threads = CpuQuota();
  if (options_.memory_budget_bytes <= 0) options_.memory_budget_bytes = DefaultMemoryBudget();
  replica_id_ = options_.peers.replica_id.empty() ? DefaultReplicaId() : options_.peers.replica_id;
  options_.peers.replica_id = replica_id_;
  boot_ = absl::StrCat(absl::Hex(Random64() & 0xffffffffu, absl::kZeroPad8));
}

absl::StatusOr<std::unique_ptr<JobManager>> JobManager::Create(const JobManagerOptions& options) {
  if (options.max_queue < 0) return absl::InvalidArgumentError("max_queue must be >= 0");
  if (options.memory_budget_bytes < 0)
    return absl::InvalidArgumentError("memory budget must be > 0 (0 = from the cgroup limit)");
  std::unique_ptr<JobManager> m(new JobManager(options));
  auto peers = Peers::Create(m->options_.peers);
  if (!peers.ok()) return peers.status();
  m->peers_ = std::move(peers).value();
  if (!options.results_dir.empty()) {
    auto d = DurableResults::Open(options.results_dir);
    if (!d.ok()) return d.status();
    m->durable_ = std::move(d).value();
    m->earlier_boots_ = m->durable_->RegisterBoot(m->boot_);
  }
  // Engine threads run below the gRPC threads: an upload in progress (or a progress event) is
  // never starved by a running job, and the job uses whatever CPU the network leaves.
  m->compute_ = std::make_unique<ThreadPool>(m->options_.compute_threads, m->options_.compute_nice);
  JobManager* self = m.get();
  for (int i = 0; i < m->options_.workers; ++i)
    m->workers_.emplace_back([self] {
      SetThreadNice(self->options_.compute_nice);
      self->Worker();
    });
  m->housekeeper_ = std::thread([self] { self->Housekeeping(); });
  return m;
}

JobManager::~JobManager() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stopping_ = true;
    for (auto& [id, j] : jobs_) j->cancel = true;
    for (auto& [job, call] : mirror_calls_) call->TryCancel();
  }
  work_cv_.notify_all();
  housekeeping_cv_.notify_all();
  for (auto& t : workers_) t.join();
  if (housekeeper_.joinable()) housekeeper_.join();  // not started when Create failed
  std::unique_lock<std::mutex> l(mu_);
  change_cv_.wait(l, [&] { return active_mirrors_ == 0; });
}

std::string JobManager::NewJobId() {
  return absl::StrCat(replica_id_, "-", boot_, absl::Hex(Random64(), absl::kZeroPad16),
                      absl::Hex(Random64() & 0xffffffffu, absl::kZeroPad8));
}

void JobManager::Notify(Job& job) {
  ++job.version;
  change_cv_.notify_all();
}

void JobManager::ReportLoad() {
  int q, r;
  int64_t b;
  {
    std::lock_guard<std::mutex> l(mu_);
    q = static_cast<int>(queue_.size());
    r = running_;
    b = reserved_;
  }
  if (hooks_.on_load) hooks_.on_load(q, r, b);
}

void JobManager::Submit(const std::shared_ptr<Job>& job, std::unique_ptr<JobInput> input) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (job->state != JobState::kReceiving) return;  // ended meanwhile (idle timeout, cancel)
    if (draining_) {
      Finish(*job,
             absl::UnavailableError("server is draining; resubmit the job to another replica"));
      return;
    }
    uploads_.erase(job.get());  // its slot moves to the queue
    job->abort_upload = nullptr;
    job->input = std::move(input);
    job->state = JobState::kQueued;
    queue_.push_back(job);
    Notify(*job);
  }
  work_cv_.notify_one();
  if (hooks_.on_event) hooks_.on_event(*job, "queued");
  ReportLoad();
}

void JobManager::Release(Job& job) {
  reserved_ -= job.reserved_bytes;
  job.reserved_bytes = 0;
  uploads_.erase(&job);
  last_release_ms_ = UnixMs();
  memory_to_release_ = true;
}

void JobManager::Finish(Job& job, const absl::Status& status) {
  job.state = TerminalState(status);
  job.status = status;
  job.ended_ms = UnixMs();
  job.input.reset();
  job.abort_upload = nullptr;
  Release(job);
  if (job.listed) (status.ok() ? finished_order_ : failed_order_).push_back(job.id);
  Notify(job);
}

void JobManager::StoreResult(Job& job, QuantizedLayer&& layer) {
  job.result = std::make_shared<const QuantizedLayer>(std::move(layer));
}

bool JobManager::FailLocked(const std::shared_ptr<Job>& job, const absl::Status& status) {
  if (IsTerminal(job->state)) return false;
  absl::Status st = status;
  if (st.code() == absl::StatusCode::kCancelled && DeadlinePassed(job->deadline))
    st = absl::DeadlineExceededError("the job's deadline passed");
  if (job->state == JobState::kRunning || job->state == JobState::kCancelling) {  // ends in Run()
    job->stop_code = st.code();
    job->cancel = true;
    job->state = JobState::kCancelling;
    Notify(*job);
    return true;
  }
  if (job->state == JobState::kQueued)
    for (auto it = queue_.begin(); it != queue_.end(); ++it)
      if (*it == job) {
        queue_.erase(it);
        break;
      }
  const bool upload = job->state == JobState::kReceiving;
  if (upload && job->listed) {  // a rejected or abandoned upload leaves no record
    job->listed = false;
    auto self = jobs_.find(job->id);
    if (self != jobs_.end() && self->second == job) jobs_.erase(self);
    auto key = by_key_.find({job->principal, job->idempotency_key});
    if (key != by_key_.end() && key->second == job->id) by_key_.erase(key);
  }
  Finish(*job, st);
  return true;
}

void JobManager::Fail(const std::shared_ptr<Job>& job, const absl::Status& status) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!FailLocked(job, status)) return;
  }
  if (hooks_.on_event) hooks_.on_event(*job, absl::StrCat("ended: ", status.ToString()));
  ReportLoad();
}

absl::StatusOr<JobState> JobManager::Cancel(const std::string& principal, const std::string& id) {
  if (auto p = ParseJobId(id); p && p->replica != replica_id_)
    return peers_->Cancel(p->replica, principal, id);
  auto found = Get(principal, id);
  if (!found.ok()) return found.status();
  const std::shared_ptr<Job>& job = *found;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!IsTerminal(job->state) && job->abort_upload)
      job->abort_upload();  // ends the upload call too
    FailLocked(job, absl::CancelledError("cancelled by the client"));
  }
  if (hooks_.on_event) hooks_.on_event(*job, "cancel requested");
  ReportLoad();
  std::lock_guard<std::mutex> l(mu_);
  return job->state;
}

void JobManager::Worker() {
  for (;;) {
    std::shared_ptr<Job> job;
    {
      std::unique_lock<std::mutex> l(mu_);
      work_cv_.wait(l, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      job = queue_.front();
      queue_.pop_front();
      job->state = JobState::kRunning;
      ++running_;
      Notify(*job);
    }
    ReportLoad();
    Run(job);
    {
      std::lock_guard<std::mutex> l(mu_);
      --running_;
    }
    ReportLoad();
  }
}

void JobManager::Run(const std::shared_ptr<Job>& job) {
  if (hooks_.on_event) hooks_.on_event(*job, "running");
  const auto t0 = std::chrono::steady_clock::now();
  JobInput& in = *job->input;
  RunContext ctx = ComputeContext();
  ctx.should_stop = [job] {
    return job->cancel.load() || std::chrono::system_clock::now() > job->deadline;
  };
  ctx.progress = [this, job](int64_t done, int64_t total) {
    std::lock_guard<std::mutex> l(mu_);
    job->fraction = static_cast<double>(done) / static_cast<double>(total);
    Notify(*job);
  };
  if (in.optq_factor.valid()) {  // on error the engine factors again and reports why
    while (in.optq_factor.wait_for(std::chrono::milliseconds(50)) != std::future_status::ready)
      if (ctx.should_stop()) *in.optq_factor_stop = true;  // then the engine reports CANCELLED
    auto f = in.optq_factor.get();
    if (f.ok()) in.stats.optq_factor = *f;
  }
  auto r = QuantizeLayer(in.weights, in.bias ? &*in.bias : nullptr, in.stats, in.options, ctx);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  absl::Status st = r.status();
  if (st.code() == absl::StatusCode::kCancelled) {
    if (DeadlinePassed(job->deadline))
      st = absl::DeadlineExceededError("the job's deadline passed");
    else if (job->stop_code == absl::StatusCode::kUnavailable)
      st = absl::UnavailableError(
          "the server shut down before the job finished; resubmit it to another replica");
  }
  bool safe = false;
  if (st.ok()) {
    QuantizedLayer& res = *r;
    res.name = in.layer_name;
    res.activations = in.activations;
    res.run.seconds = seconds;
    res.run.job_id = job->id;
    safe = res.certificate.safe;
    Persist(*job, res);  // durable before it is reported SUCCEEDED
    std::lock_guard<std::mutex> l(mu_);
    StoreResult(*job, std::move(res));
    job->fraction = 1.0;
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    Finish(*job, st);
  }
  if (hooks_.on_finished) hooks_.on_finished(*job, seconds, safe);
  if (hooks_.on_event)
    hooks_.on_event(*job, st.ok() ? absl::StrCat("succeeded in ", seconds, " s, certificate ",
                                                 safe ? "SAFE" : "UNSAFE")
                                  : absl::StrCat("ended: ", st.ToString()));
}

void JobManager::Persist(Job& job, const QuantizedLayer& layer) {
  if (!durable_) return;
  DurableEntry e{job.id, job.principal, job.layer_name, job.idempotency_key, job.content_digest,
                 ""};
  e.created_unix_ms = job.created_unix_ms;
  if (auto s = durable_->Write(e, layer); !s.ok()) {
    if (hooks_.on_event) hooks_.on_event(job, absl::StrCat("persist failed: ", s.ToString()));
    return;
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    job.durable_path = e.id;
  }
  housekeeping_cv_.notify_one();  // retention, incrementally
}

void JobManager::Drain(std::chrono::milliseconds grace) {
  {
    std::lock_guard<std::mutex> l(mu_);
    draining_ = true;
  }
  const auto until = std::chrono::steady_clock::now() + grace;
  for (;;) {
    {
      std::lock_guard<std::mutex> l(mu_);
      if (queue_.empty() && running_ == 0) return;
      if (std::chrono::steady_clock::now() >= until) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  // Out of time: queued and running jobs end UNAVAILABLE (clients resubmit them elsewhere).
  const absl::Status gone = absl::UnavailableError(
      "the server shut down before the job finished; resubmit it to another replica");
  std::vector<std::shared_ptr<Job>> rest;
  {
    std::lock_guard<std::mutex> l(mu_);
    for (auto& [id, j] : jobs_) rest.push_back(j);
  }
  for (auto& j : rest) Fail(j, gone);
  for (int i = 0; i < 200 && running() > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
}

}  // namespace axeq::server
