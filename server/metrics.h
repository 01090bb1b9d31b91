// Prometheus metrics of the server (prometheus-cpp), exposed on their own port at /metrics.
// Names follow Prometheus conventions: axeq_ prefix, _total counters, base units (seconds, bytes).
#ifndef AXEQ_SERVER_METRICS_H_
#define AXEQ_SERVER_METRICS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace axeq::server {

class Metrics {
 public:
  // Starts the /metrics endpoint on address ("host:port"; port 0 picks one), or none if empty.
  static absl::StatusOr<std::unique_ptr<Metrics>> Create(const std::string& address, int workers);
  int port() const { return port_; }

  void Request(const std::string& method, const std::string& code);
  void Received(int64_t bytes) { received_->Increment(static_cast<double>(bytes)); }
  void Load(int queued, int running, int64_t reserved_bytes);
  void Finished(const std::string& state, double seconds, bool has_certificate, bool safe);
  void MemoryReleased() { releases_->Increment(); }

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0, workers_ = 1;
  prometheus::Family<prometheus::Counter>* requests_ = nullptr;
  prometheus::Family<prometheus::Counter>* jobs_ = nullptr;
  prometheus::Family<prometheus::Counter>* certificates_ = nullptr;
  prometheus::Counter *received_ = nullptr, *releases_ = nullptr;
  prometheus::Gauge *queue_depth_ = nullptr, *inflight_bytes_ = nullptr, *busy_ = nullptr,
                    *utilisation_ = nullptr;
  prometheus::Histogram* latency_ = nullptr;
};

}  // namespace axeq::server

#endif  // AXEQ_SERVER_METRICS_H_
