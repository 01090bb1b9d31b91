// How a host runs the engine: an optional parallel-for (the engine owns no threads), a cancellation
// poll and a progress callback. All three may be empty.
#ifndef AXEQ_CORE_CONTEXT_H_
#define AXEQ_CORE_CONTEXT_H_

#include <cstdint>
#include <functional>

namespace axeq {

struct RunContext {
  // Calls fn(i) for every i in [0, n), possibly concurrently, and returns when all calls returned.
  // Work is split into fixed chunks of output channels, so results are bit-identical whatever the
  // number of threads behind it. Empty: runs serially.
  std::function<void(int64_t n, const std::function<void(int64_t)>& fn)> parallel_for;
  // Polled once per lazy-batch block; returning true stops the run with CANCELLED.
  std::function<bool()> should_stop;
  // Called after each block with (work units done, total); must be thread-safe.
  std::function<void(int64_t done, int64_t total)> progress;
};

}  // namespace axeq

#endif  // AXEQ_CORE_CONTEXT_H_
