// LayerHeader <-> UploadPlan and the upload messages.
#include "proto/upload.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "proto/convert.h"

namespace axeq {

std::vector<std::pair<int64_t, int64_t>> ChunkRanges(int64_t total, int64_t chunk, int64_t align) {
  std::vector<std::pair<int64_t, int64_t>> out;
  const int64_t step = std::max<int64_t>(align, chunk / std::max<int64_t>(align, 1) * align);
  for (int64_t b = 0; b < total; b += step) out.emplace_back(b, std::min(total, b + step));
  return out;
}

std::string UploadTensor::name() const {
  std::string n = v1::TensorKind_Name(kind);
  constexpr char kPrefix[] = "TENSOR_KIND_";
  return n.rfind(kPrefix, 0) == 0 ? n.substr(sizeof(kPrefix) - 1) : n;
}

const UploadTensor* UploadPlan::Find(v1::TensorKind kind) const {
  for (const auto& t : tensors)
    if (t.kind == kind) return &t;
  return nullptr;
}

int64_t UploadPlan::TensorBytes() const {
  int64_t b = 0;
  for (const auto& t : tensors) b += t.bytes();
  return b;
}

void PlanTensors(UploadPlan* p) {
  const int64_t c = p->output_channels, k = p->inputs;
  auto& t = p->tensors;
  t.clear();
  if (!p->rows) t.push_back({v1::TENSOR_KIND_GRAM, k, k});
  t.push_back({v1::TENSOR_KIND_WEIGHT, c, k});
  if (p->has_bias) t.push_back({v1::TENSOR_KIND_BIAS, 1, c});
  if (p->rows) return;
  t.push_back({v1::TENSOR_KIND_CROSS, k, k, /*optional=*/p->options.algorithm == Algorithm::kOptq});
  if (p->has_xx) t.push_back({v1::TENSOR_KIND_XX, k, k});
  if (p->has_means) {
    t.push_back({v1::TENSOR_KIND_MEAN_X, 1, k});
    t.push_back({v1::TENSOR_KIND_MEAN_XQ, 1, k});
  }
}

v1::LayerHeader EncodeHeader(const UploadPlan& p) {
  v1::LayerHeader h;
  h.set_layer_name(p.layer_name);
  h.set_output_channels(p.output_channels);
  h.set_inputs(p.inputs);
  *h.mutable_config() = OptionsToProto(p.options);
  *h.mutable_activations() = ActivationsToProto(p.activations);
  h.set_calibration(p.rows ? v1::CALIBRATION_KIND_ROWS : v1::CALIBRATION_KIND_STATISTICS);
  h.set_has_bias(p.has_bias);
  if (!p.rows) {
    h.set_samples(p.samples);
    h.set_has_xx(p.has_xx);
    h.set_has_means(p.has_means);
  }
  h.set_idempotency_key(p.idempotency_key);
  h.set_detach(p.detach);
  return h;
}

absl::StatusOr<UploadPlan> DecodeHeader(const v1::LayerHeader& h) {
  UploadPlan p;
  if (h.layer_name().empty() || h.layer_name().size() > kMaxLayerName)
    return absl::InvalidArgumentError(absl::StrCat("header.layer_name must have 1..", kMaxLayerName,
                                                   " characters, got ", h.layer_name().size()));
  p.layer_name = h.layer_name();
  p.output_channels = h.output_channels();
  p.inputs = h.inputs();
  if (p.output_channels < 1 || p.output_channels > kMaxOutputChannels)
    return absl::InvalidArgumentError(
        absl::StrCat("header.output_channels must be in [1, 2^20], got ", p.output_channels));
  if (p.inputs < 1 || p.inputs > kMaxInputs)
    return absl::InvalidArgumentError(
        absl::StrCat("header.inputs must be in [1, 2^17], got ", p.inputs));
  AXEQ_ASSIGN_OR_RETURN(p.options, OptionsFromProto(h.config()));
  auto act = ActivationsFromProto(h.activations());
  if (!act.ok()) return absl::InvalidArgumentError(absl::StrCat("header.", act.status().message()));
  p.activations = *act;
  const InputSpec& a = p.activations.spec;
  const InputSpec& o = p.options.inputs;
  if (a.bits != o.bits || a.is_signed != o.is_signed)
    return absl::InvalidArgumentError(
        absl::StrCat("header.activations (", a.bits, "-bit ", a.is_signed ? "signed" : "unsigned",
                     ") disagree with config input_bits/signed_inputs (", o.bits, "-bit ",
                     o.is_signed ? "signed" : "unsigned", ")"));
  p.rows = h.calibration() == v1::CALIBRATION_KIND_ROWS;
  if (!p.rows && h.calibration() != v1::CALIBRATION_KIND_STATISTICS)
    return absl::InvalidArgumentError("header.calibration must be ROWS or STATISTICS");
  if (!p.rows && h.samples() < 1)
    return absl::InvalidArgumentError(
        absl::StrCat("header.samples must be >= 1 with STATISTICS, got ", h.samples()));
  p.has_bias = h.has_bias();
  if (!p.rows) {
    p.samples = h.samples();
    p.has_xx = h.has_xx();
    p.has_means = h.has_means();
  }
  p.idempotency_key = h.idempotency_key();
  p.detach = h.detach();
  PlanTensors(&p);
  return p;
}

v1::UploadRequest HeaderMessage(const UploadPlan& plan) {
  v1::UploadRequest r;
  *r.mutable_header() = EncodeHeader(plan);
  return r;
}

void SetTensorChunk(v1::TensorKind kind, int64_t offset, const void* data, int64_t bytes,
                    v1::UploadRequest* out) {
  v1::TensorChunk* t = out->mutable_tensor();
  t->set_tensor(kind);
  t->set_offset(offset);
  t->set_data(static_cast<const char*>(data), bytes);
}

void SetRowsChunk(int64_t row_offset, int64_t n, int64_t k, const float* x, const float* xq,
                  v1::UploadRequest* out) {
  v1::RowsChunk* r = out->mutable_rows();
  r->set_row_offset(row_offset);
  r->set_inputs(reinterpret_cast<const char*>(x + row_offset * k), n * k * 4);
  if (xq)
    r->set_quant_inputs(reinterpret_cast<const char*>(xq + row_offset * k), n * k * 4);
  else
    r->clear_quant_inputs();
}

v1::UploadRequest CommitMessage(int64_t chunks) {
  v1::UploadRequest r;
  r.mutable_commit()->set_chunks(chunks);
  return r;
}

int64_t RowsPerChunk(int64_t k, bool with_xq) {
  return std::max<int64_t>(1, kChunkBytes / (with_xq ? 2 : 1) / (4 * k));
}

}  // namespace axeq
