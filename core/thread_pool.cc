// Fixed-size thread pool with a blocking ParallelFor (dynamic scheduling over an atomic index).
#include "core/thread_pool.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <memory>

namespace axeq {

bool SetThreadNice(int nice) {
  if (nice == 0) return true;
  return setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), nice) == 0;
}

ThreadPool::ThreadPool(int threads, int nice) {
  for (int i = 0; i < std::max(threads, 1); ++i)
    workers_.emplace_back([this, nice] {
      SetThreadNice(nice);
      Loop();
    });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::Schedule(std::function<void()> fn) {
  {
    std::lock_guard<std::mutex> l(mu_);
    queue_.push_back(std::move(fn));
  }
  cv_.notify_one();
}

void ThreadPool::Loop() {
  for (;;) {
    std::function<void()> fn;
    {
      std::unique_lock<std::mutex> l(mu_);
      cv_.wait(l, [this] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;
      fn = std::move(queue_.front());
      queue_.pop_front();
    }
    fn();
  }
}

void ThreadPool::ParallelFor(int64_t n, const std::function<void(int64_t)>& fn) {
  if (n <= 0) return;
  // Helpers that have not started when the caller finishes draining are skipped, so nested use
  // from inside a worker cannot deadlock on a busy pool.
  struct Shared {
    std::atomic<int64_t> next{0};
    std::mutex mu;
    std::condition_variable cv;
    int running = 0;
    bool closed = false;
  };
  auto sh = std::make_shared<Shared>();
  const std::function<void(int64_t)>* f = &fn;
  const int helpers = static_cast<int>(std::min<int64_t>(size(), n - 1));
  for (int h = 0; h < helpers; ++h) {
    Schedule([sh, n, f] {
      {
        std::lock_guard<std::mutex> l(sh->mu);
        if (sh->closed) return;
        ++sh->running;
      }
      for (int64_t i; (i = sh->next.fetch_add(1)) < n;) (*f)(i);
      std::lock_guard<std::mutex> l(sh->mu);
      if (--sh->running == 0) sh->cv.notify_all();
    });
  }
  for (int64_t i; (i = sh->next.fetch_add(1)) < n;) fn(i);
  std::unique_lock<std::mutex> l(sh->mu);
  sh->closed = true;
  sh->cv.wait(l, [&] { return sh->running == 0; });
}

}  // namespace axeq
