// Durable results: RESULT files with job metadata, indexed in memory, trimmed by age and size.
#include "server/durable.h"

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "formats/result_file.h"
#include "formats/safetensors.h"

namespace axeq::server {
namespace fs = std::filesystem;
namespace {

constexpr char kSuffix[] = ".axeqjob.safetensors";
std::atomic<int64_t> g_directory_scans{0};

int64_t ToInt(const std::map<std::string, std::string>& m, const char* key) {
  auto it = m.find(key);
  return it == m.end() ? 0 : std::atoll(it->second.c_str());
}

std::string Get(const std::map<std::string, std::string>& m, const char* key) {
  auto it = m.find(key);
  return it == m.end() ? "" : it->second;
}

}  // namespace

int64_t UnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

absl::StatusOr<std::unique_ptr<DurableResults>> DurableResults::Open(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec)
    return absl::PermissionDeniedError(
        absl::StrCat("cannot create results dir ", dir, ": ", ec.message()));
  std::unique_ptr<DurableResults> d(new DurableResults(dir));
  ++g_directory_scans;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string path = e.path().string();
    const bool tmp = absl::EndsWith(path, ".tmp");
    if (!tmp && !absl::EndsWith(path, kSuffix)) continue;  // not ours: left alone
    DurableEntry entry;
    if (!tmp) {
      auto meta = ReadSafetensorsMetadata(path);
      if (meta.ok()) {
        entry.id = Get(*meta, "axeq.job.id");
        entry.principal = Get(*meta, "axeq.job.principal");
        entry.layer_name = Get(*meta, "axeq.job.layer_name");
        entry.idempotency_key = Get(*meta, "axeq.job.idempotency_key");
        entry.content_digest = Get(*meta, "axeq.job.content_digest");
        entry.created_unix_ms = ToInt(*meta, "axeq.job.created_unix_ms");
        entry.written_unix_ms = ToInt(*meta, "axeq.job.written_unix_ms");
        entry.path = path;
        entry.bytes = static_cast<int64_t>(fs::file_size(e.path(), ec));
      }
    }
    if (entry.id.empty() || e.path().filename().string() != entry.id + kSuffix) {
      fs::remove(e.path(), ec);  // an interrupted write, or a file that is not a result of ours
      ++d->removed_garbage_;
      continue;
    }
    d->Index(entry);
  }
  return d;
}

void DurableResults::Index(const DurableEntry& e) {
  Unindex(e.id);
  by_id_[e.id] = e;
  by_age_.insert({e.written_unix_ms, e.id});
  if (!e.idempotency_key.empty()) by_key_[{e.principal, e.idempotency_key}] = e.id;
  total_bytes_ += e.bytes;
}

void DurableResults::Unindex(const std::string& id) {
  auto it = by_id_.find(id);
  if (it == by_id_.end()) return;
  by_age_.erase({it->second.written_unix_ms, id});
  auto k = by_key_.find({it->second.principal, it->second.idempotency_key});
  if (k != by_key_.end() && k->second == id) by_key_.erase(k);
  total_bytes_ -= it->second.bytes;
  by_id_.erase(it);
}

absl::Status DurableResults::Write(const DurableEntry& meta, const QuantizedLayer& layer) {
  DurableEntry e = meta;
  e.path = (fs::path(dir_) / (meta.id + kSuffix)).string();
  e.written_unix_ms = UnixMs();
  SafetensorsFile f = ResultToSafetensors({layer});
  f.metadata["axeq.job.id"] = e.id;
  f.metadata["axeq.job.principal"] = e.principal;
  f.metadata["axeq.job.layer_name"] = e.layer_name;
  f.metadata["axeq.job.idempotency_key"] = e.idempotency_key;
  f.metadata["axeq.job.content_digest"] = e.content_digest;
  f.metadata["axeq.job.created_unix_ms"] = std::to_string(e.created_unix_ms);
  f.metadata["axeq.job.written_unix_ms"] = std::to_string(e.written_unix_ms);
  if (auto s = WriteSafetensors(e.path, f); !s.ok()) return s;
  std::error_code ec;
  e.bytes = static_cast<int64_t>(fs::file_size(e.path, ec));
  std::lock_guard<std::mutex> l(mu_);
  Index(e);
  return absl::OkStatus();
}

absl::StatusOr<QuantizedLayer> DurableResults::Load(const std::string& id) const {
  auto entry = Find(id);
  if (!entry)
    return absl::DataLossError(absl::StrCat("the result of job ", id, " is no longer on disk"));
  auto layers = ReadResultFile(entry->path);
  if (!layers.ok() || layers->size() != 1)
    return absl::DataLossError(
        absl::StrCat("the result of job ", id, " is unreadable: ",
                     layers.ok() ? "not one layer" : std::string(layers.status().message())));
  QuantizedLayer l = std::move((*layers)[0]);
  l.run.job_id = id;
  return l;
}

std::optional<DurableEntry> DurableResults::Find(const std::string& id) const {
  std::lock_guard<std::mutex> l(mu_);
  auto it = by_id_.find(id);
  if (it == by_id_.end()) return std::nullopt;
  return it->second;
}

std::optional<std::string> DurableResults::FindKey(const std::string& principal,
                                                   const std::string& key) const {
  std::lock_guard<std::mutex> l(mu_);
  auto it = by_key_.find({principal, key});
  if (it == by_key_.end()) return std::nullopt;
  return it->second;
}

std::vector<std::string> DurableResults::Trim(int64_t oldest_ms, int64_t max_bytes) {
  std::vector<std::string> removed;
  std::lock_guard<std::mutex> l(mu_);
  while (!by_age_.empty() && (by_age_.begin()->first < oldest_ms || total_bytes_ > max_bytes)) {
    const std::string id = by_age_.begin()->second;
    std::error_code ec;
    fs::remove(by_id_[id].path, ec);
    Unindex(id);
    removed.push_back(id);
  }
  return removed;
}

std::set<std::string> DurableResults::RegisterBoot(const std::string& boot) {
  const std::string path = (fs::path(dir_) / "boots").string();
  std::vector<std::string> lines;
  {
    std::ifstream in(path);
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) lines.push_back(line);
  }
  if (lines.size() >= 10000) lines.erase(lines.begin(), lines.end() - 9999);
  std::set<std::string> earlier(lines.begin(), lines.end());
  lines.push_back(boot);
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    for (const auto& l : lines) out << l << "\n";
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  return earlier;
}

int64_t DurableResults::directory_scans() { return g_directory_scans.load(); }

int64_t DurableResults::total_bytes() const {
  std::lock_guard<std::mutex> l(mu_);
  return total_bytes_;
}

size_t DurableResults::size() const {
  std::lock_guard<std::mutex> l(mu_);
  return by_id_.size();
}

}  // namespace axeq::server
