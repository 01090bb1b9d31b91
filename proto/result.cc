// JobEvents, Finished <-> QuantizedLayer, result chunks.
#include "proto/result.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "proto/convert.h"
#include "proto/upload.h"

namespace axeq {

namespace {

constexpr std::pair<JobState, v1::JobState> kStates[] = {
    {JobState::kReceiving, v1::JOB_STATE_RECEIVING},
    {JobState::kQueued, v1::JOB_STATE_QUEUED},
    {JobState::kRunning, v1::JOB_STATE_RUNNING},
    {JobState::kCancelling, v1::JOB_STATE_CANCELLING},
    {JobState::kSucceeded, v1::JOB_STATE_SUCCEEDED},
    {JobState::kFailed, v1::JOB_STATE_FAILED},
    {JobState::kCancelled, v1::JOB_STATE_CANCELLED}};

}  // namespace

v1::JobState EncodeState(JobState state) {
  for (auto [core, wire] : kStates)
    if (core == state) return wire;
  return v1::JOB_STATE_UNSPECIFIED;
}

JobState DecodeState(v1::JobState state) {
  for (auto [core, wire] : kStates)
    if (wire == state) return core;
  return JobState::kUnknown;
}

v1::Progress EncodeProgress(const JobSnapshot& p) {
  v1::Progress out;
  out.set_state(EncodeState(p.state));
  out.set_bytes_received(p.bytes_received);
  out.set_fraction(p.fraction);
  out.set_queue_position(p.queue_position);
  return out;
}

JobSnapshot DecodeProgress(const v1::Progress& p) {
  return JobSnapshot{DecodeState(p.state()), p.bytes_received(), p.fraction(), p.queue_position()};
}

std::string WireStateName(JobState state) { return v1::JobState_Name(EncodeState(state)); }

v1::Finished EncodeFinished(const QuantizedLayer& l) {
  v1::Finished f;
  f.set_state(v1::JOB_STATE_SUCCEEDED);
  f.set_layer_name(l.name);
  f.set_output_channels(l.output_channels());
  f.set_inputs(l.inputs());
  f.set_scale_groups(l.scales.cols());
  f.set_group_size(l.group_size);
  f.set_has_bias(l.bias.has_value());
  *f.mutable_activations() = ActivationsToProto(l.activations);
  *f.mutable_report() = ReportToProto(l);
  *f.mutable_certificate() = CertificateToProto(l.certificate);
  return f;
}

v1::Finished EncodeFailure(const absl::Status& s) {
  v1::Finished f;
  f.set_state(EncodeState(TerminalState(s)));
  f.set_code(static_cast<int>(s.code()));
  f.set_message(std::string(s.message()));
  return f;
}

v1::Finished EncodeOutcome(const absl::Status& status, const QuantizedLayer* result) {
  return status.ok() && result
             ? EncodeFinished(*result)
             : EncodeFailure(status.ok() ? absl::InternalError("no result") : status);
}

absl::Status FinishedStatus(const v1::Finished& f) {
  if (f.state() == v1::JOB_STATE_SUCCEEDED) return absl::OkStatus();
  const auto code =
      f.code() == 0 ? absl::StatusCode::kUnknown : static_cast<absl::StatusCode>(f.code());
  return absl::Status(code,
                      f.message().empty() ? JobStateName(DecodeState(f.state())) : f.message());
}

v1::JobEvent ProgressEvent(const std::string& job_id, const JobSnapshot& progress) {
  v1::JobEvent e;
  e.set_job_id(job_id);
  *e.mutable_progress() = EncodeProgress(progress);
  return e;
}

v1::JobEvent FinishedEvent(const std::string& job_id, const v1::Finished& finished) {
  v1::JobEvent e;
  e.set_job_id(job_id);
  *e.mutable_finished() = finished;
  return e;
}

bool EmitResultChunks(const std::string& job_id, const MatrixXi8& codes, const MatrixXf& scales,
                      const Eigen::VectorXf* bias,
                      const std::function<bool(const v1::JobEvent&)>& emit) {
  auto send = [&](v1::ResultPart part, const void* data, int64_t bytes, int64_t align) {
    v1::JobEvent e;
    e.set_job_id(job_id);
    v1::ResultChunk* r = e.mutable_result();
    r->set_part(part);
    for (auto [b, end] : ChunkRanges(bytes, kChunkBytes, align)) {
      r->set_offset(b);
      r->set_data(static_cast<const char*>(data) + b, end - b);
      if (!emit(e)) return false;
    }
    return true;
  };
  return send(v1::RESULT_PART_CODES, codes.data(), codes.size(), 1) &&
         send(v1::RESULT_PART_SCALES, scales.data(), scales.size() * 4, 4) &&
         (!bias || send(v1::RESULT_PART_BIAS, bias->data(), bias->size() * 4, 4));
}

absl::Status ResultDecoder::Add(const v1::JobEvent& e,
                                const std::function<void(const JobSnapshot&)>& progress) {
  if (!e.job_id().empty()) job_id_ = e.job_id();
  if (e.has_progress()) {
    if (progress) progress(DecodeProgress(e.progress()));
  } else if (e.has_result()) {
    const v1::ResultChunk& r = e.result();
    std::string* buf = r.part() == v1::RESULT_PART_CODES    ? &codes_
                       : r.part() == v1::RESULT_PART_SCALES ? &scales_
                       : r.part() == v1::RESULT_PART_BIAS   ? &bias_
                                                            : nullptr;
    if (!buf) return absl::DataLossError(absl::StrCat("result chunk of unknown part ", r.part()));
    if (r.offset() != static_cast<int64_t>(buf->size()))
      return absl::DataLossError(absl::StrCat("result chunk of ", v1::ResultPart_Name(r.part()),
                                              " at byte ", r.offset(),
                                              " arrived out of order (have ", buf->size(), ")"));
    buf->append(r.data());
  } else if (e.has_finished()) {
    finished_ = e.finished();
    has_finished_ = true;
  }
  return absl::OkStatus();
}

absl::StatusOr<QuantizedLayer> ResultDecoder::Finish() const {
  if (!has_finished_)
    return absl::DataLossError("the server ended the stream without a summary (Finished)");
  const v1::Finished& f = finished_;
  if (absl::Status s = FinishedStatus(f); !s.ok()) return s;
  const int64_t c = f.output_channels(), k = f.inputs(), g = f.scale_groups();
  if (c < 1 || k < 1 || g < 1 || c > kMaxOutputChannels || k > kMaxInputs || g > k ||
      g != NumGroups(k, f.group_size()))
    return absl::DataLossError(absl::StrCat("result shape [", c, ", ", k, "] with ", g,
                                            " scale groups of ", f.group_size(),
                                            " is not consistent"));
  if (static_cast<int64_t>(codes_.size()) != c * k ||
      static_cast<int64_t>(scales_.size()) != c * g * 4 ||
      static_cast<int64_t>(bias_.size()) != (f.has_bias() ? c * 4 : 0))
    return absl::DataLossError(absl::StrCat("incomplete result: ", codes_.size(), " code bytes, ",
                                            scales_.size(), " scale bytes, ", bias_.size(),
                                            " bias bytes for [", c, ", ", k, "] with ", g,
                                            " groups", f.has_bias() ? " and a bias" : ""));
  QuantizedLayer l;
  l.name = f.layer_name();
  l.codes.resize(c, k);
  std::memcpy(l.codes.data(), codes_.data(), codes_.size());
  l.scales.resize(c, g);
  std::memcpy(l.scales.data(), scales_.data(), scales_.size());
  l.group_size = f.group_size();
  if (f.has_bias()) {
    l.bias = Eigen::VectorXf(c);
    std::memcpy(l.bias->data(), bias_.data(), bias_.size());
  }
  auto act = ActivationsFromProto(f.activations());
  if (!act.ok())
    return absl::DataLossError(absl::StrCat("result activations: ", act.status().message()));
  l.activations = *act;
  auto cert = CertificateFromProto(f.certificate());
  if (!cert.ok()) return cert.status();
  l.certificate = std::move(cert).value();
  if (l.certificate.output_channels != c || l.certificate.inputs != k)
    return absl::DataLossError(absl::StrCat("certificate is for [", l.certificate.output_channels,
                                            ", ", l.certificate.inputs, "], the result is [", c,
                                            ", ", k, "]"));
  ReportFromProto(f.report(), &l);
  l.run.job_id = job_id_;
  return l;
}

v1::JobInfo EncodeJobInfo(const std::string& job_id, const std::string& layer_name, JobState state,
                          int64_t created_unix_ms) {
  v1::JobInfo i;
  i.set_job_id(job_id);
  i.set_layer_name(layer_name);
  i.set_state(EncodeState(state));
  i.set_created_unix_ms(created_unix_ms);
  return i;
}

}  // namespace axeq
