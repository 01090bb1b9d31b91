// What every `axeq` command shares: the remote-server flags, exit codes, the progress display and
// the result table. Each command lives in its own file (cli/*_cmd.cc) as a flags struct plus a
// Run function; cli/main.cc only registers and dispatches.
#ifndef AXEQ_CLI_COMMON_H_
#define AXEQ_CLI_COMMON_H_

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "client/remote.h"
#include "core/quantized_layer.h"

namespace axeq::cli {

// Exit codes of every command: 0 success, 1 the work failed (a certificate does not verify, a
// layer is malformed, the server refused), 2 usage errors and unreadable input files.
inline constexpr int kExitOk = 0, kExitFailed = 1, kExitUsage = 2;

// Prints "axeq: error: CODE: message" and returns the exit code for the status.
int Fail(const absl::Status& s);

// --server and the connection flags (global, before the command name).
struct RemoteFlags {
  RemoteOptions options;
  std::string token_file;
  int concurrency = 4;
  void Add(CLI::App& app);
  bool remote() const { return !options.address.empty(); }
  absl::StatusOr<std::unique_ptr<RemoteClient>> Connect() const;
};

// A progress bar on a TTY, else one line per finished item; thread-safe (several layers may be in
// flight at once with the remote engine).
class ProgressBar {
 public:
  explicit ProgressBar(bool enabled);
  void Update(int item, int items, const std::string& name, double fraction);

 private:
  bool enabled_, tty_;
  std::mutex mu_;
  std::map<int, double> frac_;
};

// Maps a flag's text to an enum value; INVALID_ARGUMENT listing the allowed values.
absl::Status ParseChoice(const std::string& value, const std::map<std::string, int>& choices,
                         const char* flag, int* out);

// The per-layer result table of quantize and fetch.
void PrintLayerTable(const std::vector<QuantizedLayer>& layers);

}  // namespace axeq::cli

#endif  // AXEQ_CLI_COMMON_H_
