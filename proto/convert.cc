// axeq.v1 <-> core conversion.
#include "proto/convert.h"

#include "absl/strings/str_cat.h"

namespace axeq {

absl::StatusOr<LayerOptions> OptionsFromProto(const v1::QuantizationConfig& c) {
  LayerOptions o;
  switch (c.algorithm()) {
    case v1::ALGORITHM_UNSPECIFIED:
    case v1::ALGORITHM_OPTQ:
      o.algorithm = Algorithm::kOptq;
      break;
    case v1::ALGORITHM_GPFQ:
      o.algorithm = Algorithm::kGpfq;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("config.algorithm: unknown value ", c.algorithm()));
  }
  switch (c.method()) {
    case v1::METHOD_UNSPECIFIED:
    case v1::METHOD_AXE:
      o.method = Method::kAxe;
      break;
    case v1::METHOD_BASE:
      o.method = Method::kBase;
      break;
    case v1::METHOD_EP_INIT:
      o.method = Method::kEpInit;
      break;
    case v1::METHOD_NAIVE:
      o.method = Method::kNaive;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("config.method: unknown value ", c.method()));
  }
  switch (c.rounding()) {
    case v1::ROUNDING_UNSPECIFIED:
    case v1::ROUNDING_NEAREST:
      o.rounding = Rounding::kNearest;
      break;
    case v1::ROUNDING_TO_ZERO:
      o.rounding = Rounding::kToZero;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("config.rounding: unknown value ", c.rounding()));
  }
  switch (c.optq_error()) {
    case v1::OPTQ_ERROR_FORM_UNSPECIFIED:
    case v1::OPTQ_ERROR_FORM_ORIGINAL:
      o.optq_error = OptqErrorForm::kOriginal;
      break;
    case v1::OPTQ_ERROR_FORM_CONSTRAINED:
      o.optq_error = OptqErrorForm::kConstrained;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("config.optq_error: unknown value ", c.optq_error()));
  }
  switch (c.precision()) {
    case v1::PRECISION_UNSPECIFIED:
    case v1::PRECISION_FLOAT32:
      o.precision = Precision::kFloat32;
      break;
    case v1::PRECISION_FLOAT64:
      o.precision = Precision::kFloat64;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("config.precision: unknown value ", c.precision()));
  }
  if (c.weight_bits()) o.weights.bits = c.weight_bits();
  o.weights.alphabet = c.full_alphabet() ? WeightAlphabet::kFull : WeightAlphabet::kNarrow;
  o.weights.group_size = c.group_size();
  if (c.input_bits()) o.inputs.bits = c.input_bits();
  o.inputs.is_signed = c.signed_inputs();
  if (c.accumulator_bits()) o.accumulator.bits = c.accumulator_bits();
  o.accumulator.tile_size = c.tile_size();
  o.accumulator.twos_complement = c.twos_complement();
  o.soft_threshold = !c.no_soft_threshold();
  o.act_order = !c.no_act_order();
  if (c.damping() != 0) o.damping = c.damping();
  if (c.block_size()) o.block_size = c.block_size();
  o.bias_correction = !c.no_bias_correction();
  o.quality_report = !c.no_quality_report();
  if (auto s = o.Validate(); !s.ok())
    return absl::InvalidArgumentError(absl::StrCat("config: ", s.message()));
  return o;
}

v1::QuantizationConfig OptionsToProto(const LayerOptions& o) {
  v1::QuantizationConfig c;
  c.set_algorithm(o.algorithm == Algorithm::kOptq ? v1::ALGORITHM_OPTQ : v1::ALGORITHM_GPFQ);
  switch (o.method) {
    case Method::kBase:
      c.set_method(v1::METHOD_BASE);
      break;
    case Method::kAxe:
      c.set_method(v1::METHOD_AXE);
      break;
    case Method::kEpInit:
      c.set_method(v1::METHOD_EP_INIT);
      break;
    case Method::kNaive:
      c.set_method(v1::METHOD_NAIVE);
      break;
  }
  c.set_weight_bits(o.weights.bits);
  c.set_full_alphabet(o.weights.alphabet == WeightAlphabet::kFull);
  c.set_group_size(o.weights.group_size);
  c.set_input_bits(o.inputs.bits);
  c.set_signed_inputs(o.inputs.is_signed);
  c.set_accumulator_bits(o.accumulator.bits);
  c.set_tile_size(o.accumulator.tile_size);
  c.set_twos_complement(o.accumulator.twos_complement);
  c.set_rounding(o.rounding == Rounding::kNearest ? v1::ROUNDING_NEAREST : v1::ROUNDING_TO_ZERO);
  c.set_no_soft_threshold(!o.soft_threshold);
  c.set_no_act_order(!o.act_order);
  c.set_damping(o.damping);
  c.set_block_size(o.block_size);
  c.set_optq_error(o.optq_error == OptqErrorForm::kOriginal ? v1::OPTQ_ERROR_FORM_ORIGINAL
                                                            : v1::OPTQ_ERROR_FORM_CONSTRAINED);
  c.set_precision(o.precision == Precision::kFloat32 ? v1::PRECISION_FLOAT32
                                                     : v1::PRECISION_FLOAT64);
  c.set_no_bias_correction(!o.bias_correction);
  c.set_no_quality_report(!o.quality_report);
  return c;
}

absl::StatusOr<ActivationQuantizer> ActivationsFromProto(const v1::ActivationQuantizer& a) {
  ActivationQuantizer q;
  q.spec.bits = a.bits();
  q.spec.is_signed = a.is_signed();
  q.scale = a.scale();
  q.zero_point = a.zero_point();
  if (q.spec.bits < 2 || q.spec.bits > 16)
    return absl::InvalidArgumentError(
        absl::StrCat("activations.bits must be in [2, 16], got ", a.bits()));
  if (!(q.scale > 0) || !std::isfinite(q.scale))
    return absl::InvalidArgumentError(
        absl::StrCat("activations.scale must be a positive finite number, got ", a.scale()));
  if (q.zero_point < q.spec.min_code() || q.zero_point > q.spec.max_code())
    return absl::InvalidArgumentError(absl::StrCat("activations.zero_point ", a.zero_point(),
                                                   " is outside [", q.spec.min_code(), ", ",
                                                   q.spec.max_code(), "]"));
  return q;
}

v1::ActivationQuantizer ActivationsToProto(const ActivationQuantizer& a) {
  v1::ActivationQuantizer p;
  p.set_bits(a.spec.bits);
  p.set_is_signed(a.spec.is_signed);
  p.set_scale(a.scale);
  p.set_zero_point(a.zero_point);
  return p;
}

v1::Certificate CertificateToProto(const Certificate& c) {
  v1::Certificate p;
  p.set_weights_sha256(c.weights_sha256);
  p.set_output_channels(c.output_channels);
  p.set_inputs(c.inputs);
  p.set_weight_bits(c.weight_bits);
  p.set_input_bits(c.input.bits);
  p.set_inputs_signed(c.input.is_signed);
  p.set_input_min(c.input_min());
  p.set_input_max(c.input_max());
  p.set_accumulator_bits(c.accumulator.bits);
  p.set_tile_size(c.tile_size());
  p.set_twos_complement(c.accumulator.twos_complement);
  p.set_outer_accumulator_bits(c.outer_accumulator_bits);
  p.set_min_accumulator_bits(c.min_accumulator_bits);
  p.set_min_outer_accumulator_bits(c.min_outer_accumulator_bits);
  p.set_unsafe_channels(c.unsafe_channels);
  p.set_safe(c.safe);
  p.set_assumptions(CertificateAssumptions(c));
  for (const auto& b : c.channels) {
    auto* ch = p.add_channels();
    ch->set_lo(b.lo);
    ch->set_hi(b.hi);
    ch->set_tile(b.worst_tile);
    ch->set_row_lo(b.row_lo);
    ch->set_row_hi(b.row_hi);
  }
  return p;
}

absl::StatusOr<Certificate> CertificateFromProto(const v1::Certificate& p) {
  Certificate c;
  c.weights_sha256 = p.weights_sha256();
  c.output_channels = p.output_channels();
  c.inputs = p.inputs();
  c.weight_bits = p.weight_bits();
  c.input.bits = p.input_bits();
  c.input.is_signed = p.inputs_signed();
  if (c.input.bits < 2 || c.input.bits > 16 || p.input_min() != c.input_min() ||
      p.input_max() != c.input_max())
    return absl::DataLossError(absl::StrCat("certificate input range [", p.input_min(), ", ",
                                            p.input_max(), "] is not that of ", c.input.bits,
                                            "-bit codes"));
  if (p.tile_size() < 1 || p.tile_size() > p.inputs() || p.tile_size() > INT32_MAX)
    return absl::DataLossError(
        absl::StrCat("certificate tile_size ", p.tile_size(), " is outside [1, ", p.inputs(), "]"));
  c.accumulator.bits = p.accumulator_bits();
  c.accumulator.tile_size = static_cast<int>(p.tile_size());
  c.accumulator.twos_complement = p.twos_complement();
  c.outer_accumulator_bits = p.outer_accumulator_bits();
  c.min_accumulator_bits = p.min_accumulator_bits();
  c.min_outer_accumulator_bits = p.min_outer_accumulator_bits();
  c.unsafe_channels = p.unsafe_channels();
  c.safe = p.safe();
  for (const auto& ch : p.channels())
    c.channels.push_back({ch.lo(), ch.hi(), ch.tile(), ch.row_lo(), ch.row_hi()});
  return c;
}

v1::QualityReport ReportToProto(const QuantizedLayer& r) {
  v1::QualityReport p;
  p.set_relative_error(r.report.relative_error);
  p.set_relative_error_quantized_inputs(r.report.relative_error_quantized_inputs);
  p.set_sparsity(r.report.sparsity);
  p.set_max_abs_code(r.report.max_abs_code);
  p.set_mean_l1(r.report.mean_l1);
  p.set_max_l1(r.report.max_l1);
  p.set_min_accumulator_bits(r.report.min_accumulator_bits);
  p.set_min_outer_accumulator_bits(r.report.min_outer_accumulator_bits);
  p.set_description(r.run.description);
  p.set_damping(r.run.damping);
  p.set_damping_retries(r.run.damping_retries);
  p.set_dead_inputs(r.run.dead_inputs);
  p.set_bias_corrected(r.bias_corrected);
  p.set_seconds(r.run.seconds);
  p.set_weight_bits(r.certificate.weight_bits);
  p.set_input_bits(r.certificate.input.bits);
  p.set_samples(r.run.samples);
  return p;
}

void ReportFromProto(const v1::QualityReport& p, QuantizedLayer* r) {
  r->report.relative_error = p.relative_error();
  r->report.relative_error_quantized_inputs = p.relative_error_quantized_inputs();
  r->report.sparsity = p.sparsity();
  r->report.max_abs_code = p.max_abs_code();
  r->report.mean_l1 = p.mean_l1();
  r->report.max_l1 = p.max_l1();
  r->report.min_accumulator_bits = p.min_accumulator_bits();
  r->report.min_outer_accumulator_bits = p.min_outer_accumulator_bits();
  r->run.description = p.description();
  r->run.damping = p.damping();
  r->run.damping_retries = p.damping_retries();
  r->run.dead_inputs = p.dead_inputs();
  r->run.samples = p.samples();
  r->run.seconds = p.seconds();
  r->bias_corrected = p.bias_corrected();
}

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

}  // namespace axeq
