// A fixed-size thread pool for hosts of the engine (CLI, server, benchmarks). The engine itself
// owns no threads: hosts hand it ParallelFor through RunContext::parallel_for.
#ifndef AXEQ_CORE_THREAD_POOL_H_
#define AXEQ_CORE_THREAD_POOL_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace axeq {

// Gives the calling thread a nice value (Linux: per thread; higher = lower priority; only lowering
// needs no privilege). Servers run compute below their network threads so that uploads and
// progress are not starved by the engine. Returns false if the OS refused.
bool SetThreadNice(int nice);

class ThreadPool {
 public:
  // Starts `threads` workers (at least 1), each at the given nice value (see SetThreadNice).
  explicit ThreadPool(int threads, int nice = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()); }
  // Queues fn to run on a worker.
  void Schedule(std::function<void()> fn);
  // Calls fn(i) for i in [0, n) on the workers and the calling thread; returns when all are done.
  void ParallelFor(int64_t n, const std::function<void(int64_t)>& fn);

 private:
  void Loop();
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stop_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace axeq

#endif  // AXEQ_CORE_THREAD_POOL_H_
