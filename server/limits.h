// What the container may use: the memory limit and CPU quota of this process's cgroup (v2
// memory.max / cpu.max, v1 memory.limit_in_bytes / cpu.cfs_quota_us), falling back to the
// machine's physical memory and hardware threads. Server defaults (memory budget, worker and
// engine threads) derive from these, so a pod with 2 CPUs and 8 GiB sizes itself for that.
#ifndef AXEQ_SERVER_LIMITS_H_
#define AXEQ_SERVER_LIMITS_H_

#include <cstdint>
#include <string>

namespace axeq::server {

// Returns the cgroup memory limit in bytes, or physical memory when unlimited or unknown.
int64_t MemoryLimitBytes();
// Returns the CPUs the cgroup quota allows (rounded up, >= 1), or hardware threads when unlimited.
int CpuQuota();
// The default memory budget for jobs: 75% of MemoryLimitBytes() (the rest is the process, gRPC's
// buffers and results kept in memory).
int64_t DefaultMemoryBudget();

// Returns the allocator's free memory to the system: tcmalloc's free spans when the process was
// linked with it (AXEQ_TCMALLOC, docs/benchmarks.md), else glibc's malloc_trim.
void ReleaseFreeMemory();

// Parsers of the cgroup files' contents (exposed for tests): -1 when unlimited or malformed.
int64_t ParseMemoryMax(const std::string& text);
double ParseCpuMax(const std::string& text);  // v2 "quota period" / "max period"
double ParseCfsQuota(const std::string& quota, const std::string& period);  // v1

}  // namespace axeq::server

#endif  // AXEQ_SERVER_LIMITS_H_
