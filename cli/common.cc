// Shared pieces of the axeq commands (see common.h).
#include "cli/common.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>

#include "absl/strings/str_cat.h"

namespace axeq::cli {

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "axeq: error: %s: %s\n", absl::StatusCodeToString(s.code()).c_str(),
               std::string(s.message()).c_str());
  const bool usage =
      s.code() == absl::StatusCode::kInvalidArgument || s.code() == absl::StatusCode::kNotFound;
  return usage ? kExitUsage : kExitFailed;
}

void RemoteFlags::Add(CLI::App& app) {
  app.add_option("--server", options.address,
                 "gRPC target of axeq-server (HOST:PORT, dns:///NAME:PORT, ipv4:H1:P1,H2:P2); "
                 "without it the embedded engine runs");
  app.add_flag("--tls", options.tls, "connect with TLS (system roots unless --tls-ca)");
  app.add_option("--tls-ca", options.tls_ca_file, "PEM roots to verify the server");
  app.add_option("--tls-cert", options.tls_cert_file, "client certificate (mTLS)");
  app.add_option("--tls-key", options.tls_key_file, "client key (mTLS)");
  app.add_option("--tls-server-name", options.tls_server_name,
                 "name to verify in the server certificate");
  app.add_option("--token", options.token, "bearer token");
  app.add_option("--token-file", token_file, "file holding the bearer token");
  app.add_option("--deadline-seconds", options.deadline_seconds, "per-layer deadline")
      ->capture_default_str();
  app.add_option("--retries", options.max_attempts,
                 "most attempts per layer (0 = as many as --retry-seconds allows; 1 = no retry); "
                 "retried: UNAVAILABLE (server gone or draining), RESOURCE_EXHAUSTED (full: after "
                 "its axeq-retry-after-ms), ABORTED (job lost in a restart: resubmitted)")
      ->capture_default_str();
  app.add_option("--retry-seconds", options.retry_seconds,
                 "keep retrying a layer this long (backoff 0.25 s doubling to 10 s, jittered), "
                 "resubmitting under the same idempotency key")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--concurrency", concurrency, "layers in flight at once (remote)")
      ->capture_default_str();
}

absl::StatusOr<std::unique_ptr<RemoteClient>> RemoteFlags::Connect() const {
  if (options.address.empty())
    return absl::InvalidArgumentError("this command needs --server HOST:PORT");
  RemoteOptions o = options;
  if (!token_file.empty()) {
    std::ifstream in(token_file);
    if (!in || !(in >> o.token))
      return absl::NotFoundError(absl::StrCat("cannot read a token from ", token_file));
  }
  return RemoteClient::Connect(o);
}

ProgressBar::ProgressBar(bool enabled) : enabled_(enabled), tty_(isatty(2)) {}

void ProgressBar::Update(int item, int items, const std::string& name, double fraction) {
  if (!enabled_) return;
  std::lock_guard<std::mutex> l(mu_);
  double& f = frac_[item];
  const bool finished_now = fraction >= 1.0 && f < 1.0;
  f = std::max(f, fraction);
  double total = 0;
  int done = 0;
  for (const auto& [i, v] : frac_) total += v, done += v >= 1.0;
  total /= items;
  if (tty_) {
    const int width = 30, filled = static_cast<int>(total * width);
    std::fprintf(stderr, "\r[%s%s] %5.1f%% %d/%d layers done, %zu in flight  %-50.50s",
                 std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(),
                 100 * total, done, items, frac_.size() - done, name.c_str());
    if (done == items) std::fprintf(stderr, "\n");
  } else if (finished_now) {
    std::fprintf(stderr, "[%3.0f%%] layer %d/%d %s done\n", 100 * total, done, items, name.c_str());
  }
}

absl::Status ParseChoice(const std::string& value, const std::map<std::string, int>& choices,
                         const char* flag, int* out) {
  auto it = choices.find(value);
  if (it != choices.end()) {
    *out = it->second;
    return absl::OkStatus();
  }
  std::string allowed;
  for (const auto& [k, _] : choices) absl::StrAppend(&allowed, allowed.empty() ? "" : "|", k);
  return absl::InvalidArgumentError(
      absl::StrCat(flag, " must be one of ", allowed, ", got '", value, "'"));
}

void PrintLayerTable(const std::vector<QuantizedLayer>& layers) {
  std::printf("%-30s %11s %-44s %8s %8s %6s %5s %5s %5s %-6s %7s\n", "layer", "C x K", "method",
              "rel.err", "sparsity", "max|q|", "P", "minP", "minPO", "cert", "seconds");
  for (const auto& l : layers) {
    std::printf("%-30s %11s %-44s %8.4f %8.3f %6d %5d %5d %5d %-6s %7.3f\n", l.name.c_str(),
                absl::StrCat(l.codes.rows(), "x", l.codes.cols()).c_str(),
                l.run.description.substr(0, 44).c_str(), l.report.relative_error, l.report.sparsity,
                l.report.max_abs_code, l.certificate.accumulator.bits,
                l.report.min_accumulator_bits, l.report.min_outer_accumulator_bits,
                l.certificate.safe ? "SAFE" : "UNSAFE", l.run.seconds);
  }
}

}  // namespace axeq::cli
