// Job queue, workers, admission control, cancellation and durable results.
#include "server/job_manager.h"

#include <filesystem>
#include <random>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "formats/safetensors.h"
#include "proto/convert.h"

namespace axeq::server {
namespace fs = std::filesystem;

namespace {
int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch()).count();
}
constexpr char kResultSuffix[] = ".axeqjob.safetensors";
}  // namespace

std::string NewJobId() {
  static thread_local std::mt19937_64 rng(std::random_device{}() ^
                                          std::hash<std::thread::id>{}(std::this_thread::get_id()));
  return absl::StrCat(absl::Hex(rng(), absl::kZeroPad16), absl::Hex(rng(), absl::kZeroPad16));
}

JobManager::JobManager(const JobManagerOptions& options) : options_(options) {
  const int hw = std::max(1u, std::thread::hardware_concurrency());
  if (options_.workers <= 0) options_.workers = hw;
  if (options_.compute_threads <= 0) options_.compute_threads = hw;
  // Engine threads run below the gRPC threads: an upload in progress (or a progress event) is
  // never starved by a running job, and the job uses whatever CPU the network leaves.
  compute_ = std::make_unique<ThreadPool>(options_.compute_threads, options_.compute_nice);
  for (int i = 0; i < options_.workers; ++i)
    workers_.emplace_back([this] {
      SetThreadNice(options_.compute_nice);
      Worker();
    });
}

absl::StatusOr<std::unique_ptr<JobManager>> JobManager::Create(const JobManagerOptions& options) {
  if (options.max_queue < 0) return absl::InvalidArgumentError("max_queue must be >= 0");
  if (options.memory_budget_bytes <= 0) return absl::InvalidArgumentError("memory budget must be > 0");
  std::unique_ptr<JobManager> m(new JobManager(options));
  if (!options.results_dir.empty()) {
    std::error_code ec;
    fs::create_directories(options.results_dir, ec);
    if (ec) return absl::PermissionDeniedError(absl::StrCat("cannot create results dir ", options.results_dir, ": ", ec.message()));
    for (const auto& e : fs::directory_iterator(options.results_dir, ec)) {
      const std::string path = e.path().string();
      if (path.size() < sizeof(kResultSuffix) || path.compare(path.size() - (sizeof(kResultSuffix) - 1), std::string::npos, kResultSuffix) != 0) {
        if (absl::EndsWith(path, ".tmp")) fs::remove(e.path(), ec);  // an interrupted write
        continue;
      }
      auto meta = ReadSafetensorsMetadata(path);
      if (!meta.ok()) continue;
      auto job = std::make_shared<Job>();
      job->id = (*meta)["axeq.job_id"];
      job->principal = (*meta)["axeq.principal"];
      job->layer_name = (*meta)["axeq.layer_name"];
      job->idempotency_key = (*meta)["axeq.idempotency_key"];
      job->content_digest = (*meta)["axeq.content_digest"];
      job->created_unix_ms = std::atoll((*meta)["axeq.created_unix_ms"].c_str());
      std::string bin;
      if (job->id.empty() || !absl::Base64Unescape((*meta)["axeq.finished"], &bin) || !job->finished.ParseFromString(bin)) continue;
      job->state = v1::JOB_STATE_SUCCEEDED;
      job->durable_path = path;
      if (!job->idempotency_key.empty()) m->by_key_[{job->principal, job->idempotency_key}] = job->id;
      m->jobs_[job->id] = job;
    }
    m->EnforceRetention();
  }
  return m;
}

JobManager::~JobManager() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stopping_ = true;
    for (auto& [id, j] : jobs_) j->cancel = true;
  }
  work_cv_.notify_all();
  for (auto& t : workers_) t.join();
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

absl::StatusOr<std::shared_ptr<Job>> JobManager::Admit(const std::string& principal,
                                                       const std::string& layer_name, int64_t bytes) {
  std::shared_ptr<Job> job;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (draining_) return absl::UnavailableError("server is draining; retry on another replica");
    if (static_cast<int>(queue_.size()) >= options_.max_queue)
      return absl::ResourceExhaustedError(absl::StrCat("queue is full (", queue_.size(), " jobs waiting, limit ", options_.max_queue, ")"));
    if (bytes > options_.memory_budget_bytes)
      return absl::ResourceExhaustedError(absl::StrCat("layer needs ~", bytes >> 20, " MiB, more than the server's whole budget of ",
                                                       options_.memory_budget_bytes >> 20, " MiB"));
    if (reserved_ + bytes > options_.memory_budget_bytes)
      return absl::ResourceExhaustedError(absl::StrCat("memory budget exhausted: ", reserved_ >> 20, " MiB in use + ~", bytes >> 20,
                                                       " MiB needed > ", options_.memory_budget_bytes >> 20, " MiB"));
    job = std::make_shared<Job>();
    job->id = NewJobId();
    job->principal = principal;
    job->layer_name = layer_name;
    job->created_unix_ms = NowMs();
    job->reserved_bytes = bytes;
    reserved_ += bytes;
    jobs_[job->id] = job;
  }
  if (hooks_.on_event) hooks_.on_event(*job, "admitted");
  ReportLoad();
  return job;
}

absl::StatusOr<std::shared_ptr<Job>> JobManager::Deduplicate(const std::shared_ptr<Job>& job,
                                                             const std::string& key,
                                                             const std::string& digest) {
  std::shared_ptr<Job> old;
  {
    std::lock_guard<std::mutex> l(mu_);
    job->content_digest = digest;
    if (key.empty()) return job;
    auto it = by_key_.find({job->principal, key});
    if (it != by_key_.end() && jobs_.count(it->second)) {
      old = jobs_[it->second];
      const bool failed = old->state == v1::JOB_STATE_FAILED || old->state == v1::JOB_STATE_CANCELLED;
      if (failed) old.reset();
      else if (old->content_digest != digest)
        return absl::AlreadyExistsError(absl::StrCat("idempotency key '", key, "' was used for different content (job ", old->id, ")"));
    }
    if (!old) {
      job->idempotency_key = key;
      by_key_[{job->principal, key}] = job->id;
      return job;
    }
  }
  Fail(job, absl::AbortedError(absl::StrCat("duplicate of job ", old->id)));
  {
    std::lock_guard<std::mutex> l(mu_);
    jobs_.erase(job->id);
  }
  return old;
}

void JobManager::AddReceived(Job& job, int64_t bytes) {
  std::lock_guard<std::mutex> l(mu_);
  job.bytes_received += bytes;
  Notify(job);
}

void JobManager::Submit(const std::shared_ptr<Job>& job, std::unique_ptr<JobInput> input) {
  {
    std::lock_guard<std::mutex> l(mu_);
    job->input = std::move(input);
    job->state = v1::JOB_STATE_QUEUED;
    queue_.push_back(job);
    Notify(*job);
  }
  work_cv_.notify_one();
  if (hooks_.on_event) hooks_.on_event(*job, "queued");
  ReportLoad();
}

void JobManager::Fail(const std::shared_ptr<Job>& job, const absl::Status& status) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (job->state == v1::JOB_STATE_SUCCEEDED || job->state == v1::JOB_STATE_FAILED ||
        job->state == v1::JOB_STATE_CANCELLED)
      return;
    const bool queued = job->state == v1::JOB_STATE_QUEUED;
    if (queued) {
      for (auto it = queue_.begin(); it != queue_.end(); ++it)
        if (*it == job) {
          queue_.erase(it);
          break;
        }
    }
    if (job->state != v1::JOB_STATE_RUNNING) {  // a running job ends in Run()
      job->state = status.code() == absl::StatusCode::kCancelled || status.code() == absl::StatusCode::kDeadlineExceeded
                       ? v1::JOB_STATE_CANCELLED
                       : v1::JOB_STATE_FAILED;
      job->status = status;
      job->input.reset();
      reserved_ -= job->reserved_bytes;
      job->reserved_bytes = 0;
      Notify(*job);
    } else {
      job->cancel = true;
    }
  }
  if (hooks_.on_event) hooks_.on_event(*job, absl::StrCat("ended: ", status.ToString()));
  ReportLoad();
}

absl::StatusOr<std::shared_ptr<Job>> JobManager::Get(const std::string& principal, const std::string& id) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("no job ", id));
  if (it->second->principal != principal)
    return absl::PermissionDeniedError(absl::StrCat("job ", id, " belongs to another principal"));
  return it->second;
}

absl::StatusOr<v1::JobState> JobManager::Cancel(const std::string& principal, const std::string& id) {
  std::shared_ptr<Job> job;
  {
    auto j = Get(principal, id);
    if (!j.ok()) return j.status();
    job = *j;
  }
  job->cancel = true;
  Fail(job, absl::CancelledError("cancelled by the client"));
  std::lock_guard<std::mutex> l(mu_);
  return job->state;
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

void JobManager::Worker() {
  for (;;) {
    std::shared_ptr<Job> job;
    {
      std::unique_lock<std::mutex> l(mu_);
      work_cv_.wait(l, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      job = queue_.front();
      queue_.pop_front();
      job->state = v1::JOB_STATE_RUNNING;
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
  RunContext ctx;
  ctx.parallel_for = [this](int64_t n, const std::function<void(int64_t)>& f) { compute_->ParallelFor(n, f); };
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
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  bool safe = false;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!r.ok()) {
      absl::Status st = r.status();
      if (st.code() == absl::StatusCode::kCancelled && !job->cancel && std::chrono::system_clock::now() > job->deadline)
        st = absl::DeadlineExceededError("the job's deadline passed");
      job->status = st;
      job->state = (st.code() == absl::StatusCode::kCancelled || st.code() == absl::StatusCode::kDeadlineExceeded)
                       ? v1::JOB_STATE_CANCELLED : v1::JOB_STATE_FAILED;
      job->finished.set_state(job->state);
      job->finished.set_code(static_cast<int>(st.code()));
      job->finished.set_message(std::string(st.message()));
    } else {
      LayerResult& res = *r;
      safe = res.certificate.safe;
      v1::Finished& f = job->finished;
      f.set_state(v1::JOB_STATE_SUCCEEDED);
      f.set_layer_name(in.layer_name);
      f.set_output_channels(res.codes.rows());
      f.set_inputs(res.codes.cols());
      f.set_scale_groups(res.scales.cols());
      f.set_has_bias(res.bias.has_value());
      *f.mutable_activations() = ActivationsToProto(in.activations);
      *f.mutable_report() = ReportToProto(res, in.stats.samples, seconds);
      *f.mutable_certificate() = CertificateToProto(res.certificate);
      job->codes = std::make_shared<const MatrixXi8>(std::move(res.codes));
      job->scales = std::make_shared<const MatrixXf>(std::move(res.scales));
      if (res.bias) job->bias = std::make_shared<const Eigen::VectorXf>(std::move(*res.bias));
      job->state = v1::JOB_STATE_SUCCEEDED;
      job->fraction = 1.0;
    }
    job->input.reset();
    reserved_ -= job->reserved_bytes;
    job->reserved_bytes = 0;
  }
  if (job->state == v1::JOB_STATE_SUCCEEDED) Persist(*job);
  {
    std::lock_guard<std::mutex> l(mu_);
    Notify(*job);
  }
  if (hooks_.on_finished) hooks_.on_finished(*job, seconds, safe);
  if (hooks_.on_event)
    hooks_.on_event(*job, job->state == v1::JOB_STATE_SUCCEEDED ? absl::StrCat("succeeded in ", seconds, " s, certificate ", safe ? "SAFE" : "UNSAFE")
                                                                : absl::StrCat("ended: ", job->status.ToString()));
}

void JobManager::Persist(Job& job) {
  if (options_.results_dir.empty()) return;
  SafetensorsFile f;
  f.tensors["codes"] = CodesToTensor(*job.codes);
  f.tensors["scales"] = MatrixToTensor(*job.scales);
  if (job.bias) f.tensors["bias"] = VectorToTensor(*job.bias);
  f.metadata["axeq.job_id"] = job.id;
  f.metadata["axeq.principal"] = job.principal;
  f.metadata["axeq.layer_name"] = job.layer_name;
  f.metadata["axeq.idempotency_key"] = job.idempotency_key;
  f.metadata["axeq.content_digest"] = job.content_digest;
  f.metadata["axeq.created_unix_ms"] = std::to_string(job.created_unix_ms);
  f.metadata["axeq.finished"] = absl::Base64Escape(job.finished.SerializeAsString());
  const std::string path = (fs::path(options_.results_dir) / (job.id + kResultSuffix)).string();
  if (auto s = WriteSafetensors(path, f); !s.ok()) {
    if (hooks_.on_event) hooks_.on_event(job, absl::StrCat("persist failed: ", s.ToString()));
    return;
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    job.durable_path = path;
  }
  EnforceRetention();
}

absl::Status JobManager::LoadResult(Job& job) {
  std::string path;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (job.state != v1::JOB_STATE_SUCCEEDED)
      return absl::FailedPreconditionError(absl::StrCat("job ", job.id, " has no result (state ", v1::JobState_Name(job.state), ")"));
    if (job.codes) return absl::OkStatus();
    path = job.durable_path;
  }
  auto f = ReadSafetensors(path);
  if (!f.ok()) return absl::DataLossError(absl::StrCat("result of job ", job.id, " is unreadable: ", f.status().message()));
  auto codes = TensorToCodes(f->tensors["codes"], "codes");
  auto scales = TensorToMatrix(f->tensors["scales"], "scales");
  if (!codes.ok() || !scales.ok()) return absl::DataLossError(absl::StrCat("result of job ", job.id, " is corrupt"));
  std::lock_guard<std::mutex> l(mu_);
  job.codes = std::make_shared<const MatrixXi8>(std::move(*codes));
  job.scales = std::make_shared<const MatrixXf>(std::move(*scales));
  if (f->tensors.count("bias")) {
    auto b = TensorToMatrix(f->tensors["bias"], "bias");
    if (b.ok()) job.bias = std::make_shared<const Eigen::VectorXf>(b->row(0).transpose());
  }
  return absl::OkStatus();
}

void JobManager::EnforceRetention() {
  if (options_.results_dir.empty()) return;
  std::error_code ec;
  struct Entry {
    fs::path path;
    fs::file_time_type mtime;
    int64_t size;
  };
  std::vector<Entry> files;
  for (const auto& e : fs::directory_iterator(options_.results_dir, ec)) {
    const std::string p = e.path().string();
    if (!absl::EndsWith(p, kResultSuffix)) continue;
    files.push_back({e.path(), fs::last_write_time(e.path(), ec), static_cast<int64_t>(fs::file_size(e.path(), ec))});
  }
  std::sort(files.begin(), files.end(), [](const Entry& a, const Entry& b) { return a.mtime > b.mtime; });
  const auto cutoff = fs::file_time_type::clock::now() -
                      std::chrono::duration_cast<fs::file_time_type::duration>(std::chrono::duration<double, std::ratio<3600>>(options_.retention_hours));
  int64_t total = 0;
  for (const auto& f : files) {
    total += f.size;
    if (f.mtime >= cutoff && total <= options_.retention_max_bytes) continue;
    fs::remove(f.path, ec);
    std::string id = f.path.filename().string();
    id = id.substr(0, id.size() - (sizeof(kResultSuffix) - 1));
    std::lock_guard<std::mutex> l(mu_);
    auto it = jobs_.find(id);
    if (it != jobs_.end() && it->second->state == v1::JOB_STATE_SUCCEEDED) jobs_.erase(it);
  }
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
      if (std::chrono::steady_clock::now() >= until) {
        for (auto& j : queue_) {
          j->cancel = true;
        }
        for (auto& [id, j] : jobs_) j->cancel = true;
        break;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  // Cancel what is still queued; running jobs stop within one block.
  std::vector<std::shared_ptr<Job>> rest;
  {
    std::lock_guard<std::mutex> l(mu_);
    rest.assign(queue_.begin(), queue_.end());
  }
  for (auto& j : rest) Fail(j, absl::CancelledError("server shut down before the job ran"));
  for (int i = 0; i < 200 && running() > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(25));
}

}  // namespace axeq::server
