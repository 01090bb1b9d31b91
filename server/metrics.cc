// Prometheus metrics.
#include "server/metrics.h"

#include "absl/strings/str_cat.h"

namespace axeq::server {

absl::StatusOr<std::unique_ptr<Metrics>> Metrics::Create(const std::string& address, int workers) {
  auto m = std::make_unique<Metrics>();
  m->workers_ = std::max(workers, 1);
  m->registry_ = std::make_shared<prometheus::Registry>();
  auto& r = *m->registry_;
  m->requests_ = &prometheus::BuildCounter()
                      .Name("axeq_rpc_requests_total")
                      .Help("RPCs by method and status code")
                      .Register(r);
  m->jobs_ =
      &prometheus::BuildCounter().Name("axeq_jobs_total").Help("Jobs by final state").Register(r);
  m->certificates_ = &prometheus::BuildCounter()
                          .Name("axeq_certificates_total")
                          .Help("Certificates issued by verdict")
                          .Register(r);
  m->received_ = &prometheus::BuildCounter()
                      .Name("axeq_received_bytes_total")
                      .Help("Payload bytes received in uploads")
                      .Register(r)
                      .Add({});
  m->releases_ = &prometheus::BuildCounter()
                      .Name("axeq_memory_releases_total")
                      .Help("Freed job memory returned to the system after an idle period")
                      .Register(r)
                      .Add({});
  m->queue_depth_ = &prometheus::BuildGauge()
                         .Name("axeq_queue_depth")
                         .Help("Jobs waiting for a worker")
                         .Register(r)
                         .Add({});
  m->inflight_bytes_ = &prometheus::BuildGauge()
                            .Name("axeq_inflight_bytes")
                            .Help("Memory reserved by receiving, queued and running jobs")
                            .Register(r)
                            .Add({});
  m->busy_ = &prometheus::BuildGauge()
                  .Name("axeq_workers_busy")
                  .Help("Workers running a job")
                  .Register(r)
                  .Add({});
  m->utilisation_ = &prometheus::BuildGauge()
                         .Name("axeq_worker_utilisation_ratio")
                         .Help("Busy workers / workers")
                         .Register(r)
                         .Add({});
  m->latency_ = &prometheus::BuildHistogram()
                     .Name("axeq_layer_duration_seconds")
                     .Help("Quantization time per layer")
                     .Register(r)
                     .Add({}, prometheus::Histogram::BucketBoundaries{0.01, 0.05, 0.1, 0.25, 0.5, 1,
                                                                      2.5, 5, 10, 30, 60, 300});
  if (!address.empty()) {
    try {
      m->exposer_ = std::make_unique<prometheus::Exposer>(address);
    } catch (const std::exception& e) {
      return absl::UnavailableError(
          absl::StrCat("cannot serve metrics on ", address, ": ", e.what()));
    }
    m->exposer_->RegisterCollectable(m->registry_);
    auto ports = m->exposer_->GetListeningPorts();
    if (!ports.empty()) m->port_ = ports[0];
  }
  return m;
}

void Metrics::Request(const std::string& method, const std::string& code) {
  requests_->Add({{"method", method}, {"code", code}}).Increment();
}

void Metrics::Load(int queued, int running, int64_t reserved_bytes) {
  queue_depth_->Set(queued);
  inflight_bytes_->Set(static_cast<double>(reserved_bytes));
  busy_->Set(running);
  utilisation_->Set(static_cast<double>(running) / workers_);
}

void Metrics::Finished(const std::string& state, double seconds, bool has_certificate, bool safe) {
  jobs_->Add({{"state", state}}).Increment();
  if (has_certificate) {
    latency_->Observe(seconds);
    certificates_->Add({{"verdict", safe ? "safe" : "unsafe"}}).Increment();
  }
}

}  // namespace axeq::server
