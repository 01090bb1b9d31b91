// Jobs of the axeq server: a bounded queue in front of a fixed set of workers that run the core
// engine, with admission control (jobs receiving or queued against --max-queue, and a memory
// budget reserved in full at admission, before the upload allocates anything), idle-upload
// timeouts, per-job cancellation and deadlines, watchers that wait for progress, idempotency keys
// bound at admission (a resubmission carries the existing job's id from its first event), bounded
// in-memory state, durable results (server/durable.h) and job ids that name their replica, whose
// Watch/Cancel are forwarded to the owner (server/replicas.h).
//
// Call sequence of an upload handler: Admit (before allocating) -> KeepAlive per message and
// AddReceived every few MiB -> Deduplicate -> Submit, or Fail on any error; then follow the job
// with WaitForChange/Snapshot.
// It may set Job::abort_upload (e.g. to ServerContext::TryCancel) so that an idle timeout also
// ends the call and frees its buffers; it is cleared by Submit and Fail.
#ifndef AXEQ_SERVER_JOB_MANAGER_H_
#define AXEQ_SERVER_JOB_MANAGER_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "core/job_state.h"
#include "core/layer.h"
#include "core/quantized_layer.h"
#include "core/thread_pool.h"
#include "server/durable.h"
#include "server/replicas.h"

namespace axeq::server {

inline constexpr size_t kMaxLayerNameBytes = 512;
inline constexpr size_t kMaxIdempotencyKeyBytes = 256;

struct JobManagerOptions {
  int workers = 0;          // concurrent jobs; 0 = the container's CPU quota
  int compute_threads = 0;  // engine threads inside a job; 0 = the CPU quota
  int compute_nice = 10;    // nice value of engine threads (above the network threads')
  int max_queue = 64;       // jobs receiving or waiting for a worker
  int64_t memory_budget_bytes =
      0;  // reserved by receiving + queued + running jobs; 0 = 75% of the cgroup limit
  std::chrono::milliseconds upload_idle_timeout{60000};    // an upload silent this long is ended
  std::chrono::milliseconds finished_ttl{10 * 60 * 1000};  // finished jobs leave memory after this
  int max_finished_jobs = 1000;                            // ... or beyond this many (oldest first)
  int max_failed_jobs = 256;                 // failed/cancelled records kept (oldest dropped first)
  std::string results_dir;                   // empty: results live in memory only
  double retention_hours = 24 * 7;           // durable results older than this are deleted
  int64_t retention_max_bytes = 20ll << 30;  // and the oldest beyond this total
  std::chrono::milliseconds housekeeping_interval{1000};  // timeouts, eviction, retention
  // Freed job buffers stay with the allocator (reused without faulting their pages in again) until
  // nothing has been received or run for this long; then they go back to the system.
  std::chrono::milliseconds release_idle{10000};
  PeerOptions peers;  // replica id (empty = host name) and how to reach peers
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
  JobState state = JobState::kReceiving;
  int64_t bytes_received = 0;
  double fraction = 0;
  int64_t version = 0;  // bumps on every change; watchers wait for it
  absl::Status status;
  std::unique_ptr<JobInput> input;
  std::function<void()> abort_upload;  // set by the upload handler; see the file comment
  absl::StatusCode stop_code = absl::StatusCode::kCancelled;  // why `cancel` was set
  std::atomic<int64_t> last_activity_ms{0};  // written without the lock (KeepAlive)
  int64_t ended_ms = 0;
  std::shared_ptr<Job> resubmission_of;  // an upload under a key already bound to this job
  bool listed = true;  // in the job table (a resubmission is not, until it replaces its job)
  // The result (SUCCEEDED); reloaded from its durable file by LoadResult when it is not here.
  // With `status`, what the job's summary (Finished) is made of once the state is terminal.
  std::shared_ptr<const QuantizedLayer> result;
  std::string durable_path;
};

// True once `deadline` (not max) has passed, within the slack of gRPC's deadline timers, which can
// end a call a few milliseconds before the system clock reaches its deadline: a call cancelled that
// close to its deadline was ended by it (DEADLINE_EXCEEDED, not CANCELLED).
inline bool DeadlinePassed(std::chrono::system_clock::time_point deadline) {
  return deadline != std::chrono::system_clock::time_point::max() &&
         std::chrono::system_clock::now() + std::chrono::milliseconds(50) >= deadline;
}

struct AdmitRequest {
  std::string principal, layer_name, idempotency_key;
  int64_t bytes = 0;  // the job's whole peak memory; < 0 means the estimate overflowed
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
    std::function<void()> on_memory_released;  // after an idle period (release_idle)
  };
  void SetHooks(Hooks hooks) { hooks_ = std::move(hooks); }

  // Admits an upload in RECEIVING, reserving `bytes` before anything is allocated. INVALID_ARGUMENT
  // for over-long names/keys; FAILED_PRECONDITION when the layer can never fit the whole budget
  // (permanent); RESOURCE_EXHAUSTED when jobs receiving + queued reach max_queue or the budget is
  // in use (transient); UNAVAILABLE while draining. With a key already bound to a live or
  // succeeded job of the principal, the returned upload carries that job's id.
  absl::StatusOr<std::shared_ptr<Job>> Admit(const AdmitRequest& request);
  absl::StatusOr<std::shared_ptr<Job>> Admit(const std::string& principal,
                                             const std::string& layer_name, int64_t bytes) {
    return Admit(AdmitRequest{principal, layer_name, "", bytes});
  }
  // Once the whole upload is in: binds the idempotency key to the job, or returns the earlier job
  // of the same principal with the same key and content digest (the upload is then dropped).
  // ALREADY_EXISTS when the key was used for different content.
  absl::StatusOr<std::shared_ptr<Job>> Deduplicate(const std::shared_ptr<Job>& job,
                                                   const std::string& key,
                                                   const std::string& digest);
  // Counts received bytes for progress (and resets the idle timer).
  void AddReceived(Job& job, int64_t bytes);
  // Resets the upload's idle timer; lock-free, called for every received message.
  void KeepAlive(Job& job);
  // Queues an admitted job with its input (ignored if the upload already ended, e.g. timed out).
  void Submit(const std::shared_ptr<Job>& job, std::unique_ptr<JobInput> input);
  // Ends a job that never got queued (bad upload) or that is cancelled, with `status`. A rejected
  // upload leaves no record; a running job is asked to stop (state CANCELLING).
  void Fail(const std::shared_ptr<Job>& job, const absl::Status& status);
  // Cancels: a job not yet running ends CANCELLED at once; a running one answers CANCELLING and
  // ends CANCELLED within one block. Forwarded to the owner for another replica's id.
  absl::StatusOr<JobState> Cancel(const std::string& principal, const std::string& id);
  // Looks up a job the principal owns: NOT_FOUND (never existed, or expired), ABORTED (this
  // replica's id from before a restart, whose job was lost: resubmit), PERMISSION_DENIED. Another
  // replica's id returns a mirror of the owner's job, followed through a forwarded Watch.
  absl::StatusOr<std::shared_ptr<Job>> Get(const std::string& principal, const std::string& id);
  std::vector<std::shared_ptr<Job>> List(const std::string& principal);
  // Waits until the job's version differs from `seen` or `timeout` passes; returns the version.
  int64_t WaitForChange(const Job& job, int64_t seen, std::chrono::milliseconds timeout);
  // Copies the job's state under the lock.
  JobSnapshot Snapshot(const Job& job);
  // Loads the result of a SUCCEEDED job (from memory or its durable file).
  absl::Status LoadResult(Job& job);
  // Stops admitting; waits up to `grace` for running and queued jobs, then stops the rest, which
  // end UNAVAILABLE (retry on another replica).
  void Drain(std::chrono::milliseconds grace);
  int queued() const;
  int running() const;
  size_t jobs_in_memory() const;
  const std::string& replica_id() const { return replica_id_; }
  const JobManagerOptions& options() const { return options_; }
  // The engine's thread pool, for work done ahead of a job (e.g. OPTQ's factor during the upload).
  RunContext ComputeContext();
  // Lowers the calling thread to the engine's priority (for engine work started outside a job).
  void LowerToComputePriority() const { SetThreadNice(options_.compute_nice); }

 private:
  explicit JobManager(const JobManagerOptions& options);
  std::string NewJobId();
  void Worker();
  void Run(const std::shared_ptr<Job>& job);
  void Finish(Job& job, const absl::Status& status);  // requires mu_: terminal state + record
  static void StoreResult(Job& job, QuantizedLayer&& layer);  // requires mu_
  void Release(Job& job);  // requires mu_: reservation, upload slot
  bool FailLocked(const std::shared_ptr<Job>& job, const absl::Status& status);  // requires mu_
  void Notify(Job& job);                                                         // requires mu_
  void Housekeeping();
  void ExpireUploads(int64_t now_ms);
  void EvictFinished(int64_t now_ms);
  bool ReleaseMemoryWhenIdle(int64_t now_ms);  // requires mu_; true: release now (unlocked)
  void Persist(Job& job, const QuantizedLayer& layer);
  absl::StatusOr<std::shared_ptr<Job>> FromDisk(const std::string& principal,
                                                const std::string& id);
  absl::StatusOr<std::shared_ptr<Job>> Mirror(const std::string& principal, const std::string& id,
                                              const std::string& replica);
  void ReportLoad();

  JobManagerOptions options_;
  std::string replica_id_, boot_;
  std::set<std::string> earlier_boots_;  // from the results dir; empty without one
  Hooks hooks_;
  mutable std::mutex mu_;
  std::condition_variable work_cv_, change_cv_, housekeeping_cv_;
  std::map<std::string, std::shared_ptr<Job>> jobs_;
  std::map<std::pair<std::string, std::string>, std::string> by_key_;  // (principal, key) -> id
  std::deque<std::shared_ptr<Job>> queue_;
  std::list<std::string> finished_order_, failed_order_;  // ids, oldest first
  std::map<const Job*, std::shared_ptr<Job>> uploads_;    // jobs in RECEIVING
  int running_ = 0, active_mirrors_ = 0;
  int64_t reserved_ = 0, last_release_ms_ = 0;  // last reservation released (job or upload ended)
  bool draining_ = false, stopping_ = false, memory_to_release_ = false;
  std::unique_ptr<DurableResults> durable_;
  std::unique_ptr<Peers> peers_;
  std::map<const Job*, grpc::ClientContext*> mirror_calls_;  // cancelled on destruction
  std::unique_ptr<ThreadPool> compute_;
  std::vector<std::thread> workers_;
  std::thread housekeeper_;
};

}  // namespace axeq::server

#endif  // AXEQ_SERVER_JOB_MANAGER_H_
