// Jobs of the axeq server: a bounded queue in front of a fixed set of workers that run the core
// engine, with admission control (queue length and a memory budget), per-job cancellation and
// deadlines, watchers that wait for progress, idempotency keys, and durable results written
// atomically to a results directory so a restarted server still serves them.
#ifndef AXEQ_SERVER_JOB_MANAGER_H_
#define AXEQ_SERVER_JOB_MANAGER_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "axeq/v1/axeq.pb.h"
#include "core/layer.h"
#include "core/thread_pool.h"

namespace axeq::server {

struct JobManagerOptions {
  int workers = 0;                       // concurrent jobs; 0 = hardware threads
  int compute_threads = 0;               // threads the engine uses inside a job; 0 = hardware
  int compute_nice = 10;                 // nice value of engine threads (above the network threads')
  int max_queue = 64;                    // jobs waiting for a worker
  int64_t memory_budget_bytes = 16ll << 30;  // reserved by receiving + queued + running jobs
  std::string results_dir;               // empty: results live in memory only
  double retention_hours = 24 * 7;       // durable results older than this are deleted
  int64_t retention_max_bytes = 20ll << 30;  // and the oldest beyond this total
};

// Everything a job needs to run, gathered by the upload handler.
struct JobInput {
  JobInput() = default;
  JobInput(const JobInput&) = delete;
  JobInput& operator=(const JobInput&) = delete;
  ~JobInput() {  // a job that ends (or never runs) stops the factorization it did not wait for
    if (optq_factor_stop) *optq_factor_stop = true;
  }
  std::string layer_name;
  LayerOptions options;
  ActivationQuantizer activations;
  MatrixXf weights;
  std::optional<Eigen::VectorXf> bias;
  LayerStats stats;
  // OPTQ's factorization of stats.gram, started while the upload was still arriving. Declared
  // last: destroyed (waited for) before the Gram matrix it reads.
  std::shared_ptr<std::atomic<bool>> optq_factor_stop;  // its should_stop
  std::future<absl::StatusOr<std::shared_ptr<const OptqFactor>>> optq_factor;
};

struct Job {
  std::string id, principal, layer_name, idempotency_key, content_digest;
  int64_t created_unix_ms = 0;
  int64_t reserved_bytes = 0;
  std::chrono::system_clock::time_point deadline = std::chrono::system_clock::time_point::max();
  std::atomic<bool> cancel{false};
  // Guarded by JobManager::mu_.
  v1::JobState state = v1::JOB_STATE_RECEIVING;
  int64_t bytes_received = 0;
  double fraction = 0;
  int64_t version = 0;  // bumps on every change; watchers wait for it
  absl::Status status;
  std::unique_ptr<JobInput> input;
  // Result (SUCCEEDED): codes, scales, bias and the summary; loaded from disk when evicted.
  std::shared_ptr<const MatrixXi8> codes;
  std::shared_ptr<const MatrixXf> scales;
  std::shared_ptr<const Eigen::VectorXf> bias;
  v1::Finished finished;
  std::string durable_path;
};

class JobManager {
 public:
  // Loads the index of durable results from options.results_dir (created if missing).
  static absl::StatusOr<std::unique_ptr<JobManager>> Create(const JobManagerOptions& options);
  ~JobManager();

  // Observers for metrics and logs; called without locks held.
  struct Hooks {
    std::function<void(const Job&, const std::string& event)> on_event;
    std::function<void(int queued, int running, int64_t reserved)> on_load;
    std::function<void(const Job&, double seconds, bool safe)> on_finished;
  };
  void SetHooks(Hooks hooks) { hooks_ = std::move(hooks); }

  // Admits a new job in RECEIVING for `principal` reserving `bytes`. RESOURCE_EXHAUSTED when the
  // queue is full or the budget would be exceeded; UNAVAILABLE while draining.
  absl::StatusOr<std::shared_ptr<Job>> Admit(const std::string& principal,
                                             const std::string& layer_name, int64_t bytes);
  // Once the whole upload is in: binds the idempotency key to the job, or returns the earlier job
  // of the same principal with the same key and content digest (the new one is then dropped).
  // ALREADY_EXISTS when the key was used for different content.
  absl::StatusOr<std::shared_ptr<Job>> Deduplicate(const std::shared_ptr<Job>& job,
                                                   const std::string& key, const std::string& digest);
  void AddReceived(Job& job, int64_t bytes);
  // Queues an admitted job with its input. The job then runs on a worker.
  void Submit(const std::shared_ptr<Job>& job, std::unique_ptr<JobInput> input);
  // Ends a job that never got queued (bad upload) or that is cancelled, with `status`.
  void Fail(const std::shared_ptr<Job>& job, const absl::Status& status);
  // Requests cancellation; returns the job's state.
  absl::StatusOr<v1::JobState> Cancel(const std::string& principal, const std::string& id);
  // Looks up a job the principal owns: NOT_FOUND or PERMISSION_DENIED.
  absl::StatusOr<std::shared_ptr<Job>> Get(const std::string& principal, const std::string& id);
  std::vector<std::shared_ptr<Job>> List(const std::string& principal);
  // Waits until the job's version differs from `seen` or `timeout` passes; returns the version.
  int64_t WaitForChange(const Job& job, int64_t seen, std::chrono::milliseconds timeout);
  // Copies the job's state under the lock.
  v1::Progress Snapshot(const Job& job, int* queue_position = nullptr);
  // Loads the result of a SUCCEEDED job (from memory or its durable file).
  absl::Status LoadResult(Job& job);
  // Stops admitting; waits up to `grace` for running and queued jobs, then cancels the rest.
  void Drain(std::chrono::milliseconds grace);
  int queued() const;
  int running() const;
  // The engine's thread pool, for work done ahead of a job (e.g. OPTQ's factor during the upload).
  RunContext ComputeContext();
  // Lowers the calling thread to the engine's priority (for engine work started outside a job).
  void LowerToComputePriority() const { SetThreadNice(options_.compute_nice); }

 private:
  explicit JobManager(const JobManagerOptions& options);
  void Worker();
  void Run(const std::shared_ptr<Job>& job);
  void Notify(Job& job);  // requires mu_
  void Persist(Job& job);
  void EnforceRetention();
  void ReportLoad();

  JobManagerOptions options_;
  Hooks hooks_;
  mutable std::mutex mu_;
  std::condition_variable work_cv_, change_cv_;
  std::map<std::string, std::shared_ptr<Job>> jobs_;
  std::map<std::pair<std::string, std::string>, std::string> by_key_;  // (principal, key) -> id
  std::deque<std::shared_ptr<Job>> queue_;
  int running_ = 0;
  int64_t reserved_ = 0;
  bool draining_ = false, stopping_ = false;
  std::unique_ptr<ThreadPool> compute_;
  std::vector<std::thread> workers_;
};

// Returns a fresh random job id (128 bits, hex).
std::string NewJobId();

}  // namespace axeq::server

#endif  // AXEQ_SERVER_JOB_MANAGER_H_
