// Container limits from cgroup v2 / v1 files, with the machine's resources as the fallback.
#include "server/limits.h"

#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

// tcmalloc's C entry point; null unless the binary was linked with tcmalloc.
extern "C" void MallocExtension_ReleaseFreeMemory(void) __attribute__((weak));

namespace axeq::server {
namespace {

std::string Slurp(const char* path) {
  std::ifstream in(path);
  if (!in) return "";
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int64_t PhysicalMemory() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? static_cast<int64_t>(pages) * page : int64_t{8} << 30;
}

}  // namespace

void ReleaseFreeMemory() {
  if (MallocExtension_ReleaseFreeMemory)
    MallocExtension_ReleaseFreeMemory();
  else
    malloc_trim(0);
}

int64_t ParseMemoryMax(const std::string& text) {
  std::istringstream ss(text);
  std::string word;
  if (!(ss >> word) || word == "max") return -1;
  char* end = nullptr;
  const long long v = std::strtoll(word.c_str(), &end, 10);
  if (end == word.c_str() || *end != '\0' || v <= 0) return -1;
  // cgroup v1 reports "no limit" as a huge page-rounded number.
  return v >= (int64_t{1} << 60) ? -1 : static_cast<int64_t>(v);
}

double ParseCpuMax(const std::string& text) {
  std::istringstream ss(text);
  std::string quota;
  double period = 0;
  if (!(ss >> quota >> period) || quota == "max" || period <= 0) return -1;
  const double q = std::atof(quota.c_str());
  return q > 0 ? q / period : -1;
}

double ParseCfsQuota(const std::string& quota, const std::string& period) {
  const double q = std::atof(quota.c_str()), p = std::atof(period.c_str());
  return q > 0 && p > 0 ? q / p : -1;
}

int64_t MemoryLimitBytes() {
  const int64_t physical = PhysicalMemory();
  int64_t limit = ParseMemoryMax(Slurp("/sys/fs/cgroup/memory.max"));
  if (limit < 0) limit = ParseMemoryMax(Slurp("/sys/fs/cgroup/memory/memory.limit_in_bytes"));
  return limit > 0 ? std::min(limit, physical) : physical;
}

int CpuQuota() {
  const int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  double cpus = ParseCpuMax(Slurp("/sys/fs/cgroup/cpu.max"));
  if (cpus < 0)
    cpus = ParseCfsQuota(Slurp("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
                         Slurp("/sys/fs/cgroup/cpu/cpu.cfs_period_us"));
  if (cpus < 0) return hw;
  return std::clamp(static_cast<int>(std::ceil(cpus - 1e-9)), 1, hw);
}

int64_t DefaultMemoryBudget() { return MemoryLimitBytes() / 4 * 3; }

}  // namespace axeq::server
