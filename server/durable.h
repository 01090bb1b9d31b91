// Durable results of the server: one RESULT file per finished job in --results-dir
// (`<job id>.axeqjob.safetensors`, the layout formats/result_file.h writes for the CLI, plus the
// job's id, owner, idempotency key and content digest in `axeq.job.*` metadata), written
// atomically with fsync of the file and its directory. The directory is read once at start
// (garbage `*.tmp` and unreadable result files are removed); after that an in-memory index,
// ordered by age, serves lookups and retention trims it incrementally (no directory scans).
#ifndef AXEQ_SERVER_DURABLE_H_
#define AXEQ_SERVER_DURABLE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/quantized_layer.h"

namespace axeq::server {

// Milliseconds since the Unix epoch: the clock of job records, result metadata and logs.
int64_t UnixMs();

struct DurableEntry {
  std::string id, principal, layer_name, idempotency_key, content_digest, path;
  int64_t created_unix_ms = 0, written_unix_ms = 0, bytes = 0;
};

class DurableResults {
 public:
  // Creates the directory if needed and indexes it; PERMISSION_DENIED when it cannot be created.
  static absl::StatusOr<std::unique_ptr<DurableResults>> Open(const std::string& dir);
  // Writes the job's result durably and indexes it.
  absl::Status Write(const DurableEntry& meta, const QuantizedLayer& layer);
  // Reads a result back (DATA_LOSS naming the job when the file is damaged or gone).
  absl::StatusOr<QuantizedLayer> Load(const std::string& id) const;
  std::optional<DurableEntry> Find(const std::string& id) const;
  std::optional<std::string> FindKey(const std::string& principal, const std::string& key) const;
  // Deletes results written before `oldest_ms` and then the oldest while the total exceeds
  // `max_bytes`; returns the ids removed. Cost: proportional to what is removed.
  std::vector<std::string> Trim(int64_t oldest_ms, int64_t max_bytes);
  // Appends this process's boot id to `<dir>/boots` and returns the earlier ones (the last 10,000),
  // so a restarted replica tells ids it issued before from ids it never issued.
  std::set<std::string> RegisterBoot(const std::string& boot);
  int64_t total_bytes() const;
  size_t size() const;
  int removed_garbage() const { return removed_garbage_; }
  // Directory listings made by any DurableResults of this process (a test hook): one per Open;
  // writes, lookups and Trim use the index only.
  static int64_t directory_scans();

 private:
  explicit DurableResults(std::string dir) : dir_(std::move(dir)) {}
  void Index(const DurableEntry& e);  // requires mu_
  void Unindex(const std::string& id);  // requires mu_

  std::string dir_;
  mutable std::mutex mu_;
  std::map<std::string, DurableEntry> by_id_;
  std::set<std::pair<int64_t, std::string>> by_age_;  // (written_unix_ms, id)
  std::map<std::pair<std::string, std::string>, std::string> by_key_;
  int64_t total_bytes_ = 0;
  int removed_garbage_ = 0;
};

}  // namespace axeq::server

#endif  // AXEQ_SERVER_DURABLE_H_
