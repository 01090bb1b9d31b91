// RESULT file codec (see result_file.h and docs/result-format.md).
#include "formats/result_file.h"

#include <cmath>
#include <cstring>
#include <set>
#include <string>
#include <type_traits>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "formats/certificate_json.h"

namespace axeq {
namespace {

constexpr char kFormat[] = "axeq-result";

nlohmann::json Num(double v) { return std::isnan(v) ? nlohmann::json(nullptr) : nlohmann::json(v); }
// Returns j[key] when it has T's JSON type, else `fallback` (never throws on hostile input).
template <typename T>
T Field(const nlohmann::json& j, const char* key, T fallback) {
  if (!j.is_object() || !j.contains(key)) return fallback;
  const nlohmann::json& v = j[key];
  bool ok;
  if constexpr (std::is_same_v<T, bool>)
    ok = v.is_boolean();
  else if constexpr (std::is_same_v<T, std::string>)
    ok = v.is_string();
  else if constexpr (std::is_integral_v<T>)
    ok = v.is_number_integer();
  else
    ok = v.is_number();
  return ok ? v.get<T>() : fallback;
}

double NumOr(const nlohmann::json& j, const char* key) {
  return j.contains(key) && j[key].is_number() ? j[key].get<double>() : std::nan("");
}

template <typename T>
Tensor Scalar(const char* dtype, T v) {
  Tensor t;
  t.dtype = dtype;
  t.data.resize(sizeof(T));
  std::memcpy(t.data.data(), &v, sizeof(T));
  return t;
}

// Reads a scalar (shape [] or [1]) of the given dtype.
template <typename T>
absl::StatusOr<T> ScalarFrom(const Tensor& t, const char* dtype) {
  if (t.dtype != dtype || t.numel() != 1 || t.data.size() != sizeof(T) || t.shape.size() > 1)
    return absl::DataLossError(absl::StrCat("must be a ", dtype, " scalar"));
  T v;
  std::memcpy(&v, t.data.data(), sizeof(T));
  return v;
}

// The layer-level JSON fields a reader needs (v2 keeps them in the report).
struct LayerFacts {
  int group_size = 0, weight_bits = 0, input_bits = 0;
  bool input_signed = false;
};

class LayerDecoder {
 public:
  LayerDecoder(const SafetensorsFile& f, std::string name, int version, int file_group)
      : f_(f), name_(std::move(name)), version_(version), file_group_(file_group) {}
  absl::StatusOr<QuantizedLayer> Decode();

 private:
  absl::Status Bad(const std::string& field, const std::string& why) const {
    return absl::DataLossError(absl::StrCat("layer ", name_, ": ", field, ": ", why));
  }
  const Tensor* Find(const std::string& suffix) const {
    auto it = f_.tensors.find(name_ + suffix);
    return it == f_.tensors.end() ? nullptr : &it->second;
  }
  absl::Status DecodeTensors(QuantizedLayer* l);
  absl::Status DecodeJson(QuantizedLayer* l, LayerFacts* facts);
  absl::Status CheckConsistency(const QuantizedLayer& l, const LayerFacts& facts) const;

  const SafetensorsFile& f_;
  std::string name_;
  int version_, file_group_;
};

absl::Status LayerDecoder::DecodeTensors(QuantizedLayer* l) {
  const Tensor* q = Find(".qweight");
  if (!q) return Bad(".qweight", "missing");
  auto codes = TensorToCodes(*q, name_ + ".qweight");
  if (!codes.ok()) return Bad(".qweight", std::string(codes.status().message()));
  l->codes = std::move(codes).value();
  if (l->codes.size() == 0) return Bad(".qweight", "is empty");
  const Tensor* s = Find(".scales");
  if (!s) return Bad(".scales", "missing");
  if (s->shape.size() != 2 || s->shape[0] != l->codes.rows())
    return Bad(".scales", absl::StrCat("must be [", l->codes.rows(), ", groups]"));
  auto scales = TensorToMatrix(*s, name_ + ".scales");
  if (!scales.ok()) return Bad(".scales", std::string(scales.status().message()));
  l->scales = std::move(scales).value();
  if (l->scales.cols() < 1 || !l->scales.allFinite() || (l->scales.array() <= 0).any())
    return Bad(".scales", "must be finite and > 0 with at least one group");
  const Tensor* xs = Find(".input_scale");
  const Tensor* zp = Find(".input_zero_point");
  if (!xs) return Bad(".input_scale", "missing");
  if (!zp) return Bad(".input_zero_point", "missing");
  auto scale = ScalarFrom<float>(*xs, "F32");
  if (!scale.ok()) return Bad(".input_scale", std::string(scale.status().message()));
  auto zero = ScalarFrom<int32_t>(*zp, "I32");
  if (!zero.ok()) return Bad(".input_zero_point", std::string(zero.status().message()));
  if (!std::isfinite(*scale) || *scale <= 0)
    return Bad(".input_scale", absl::StrCat(*scale, " is not finite and > 0"));
  l->activations.scale = *scale;
  l->activations.zero_point = *zero;
  if (const Tensor* b = Find(".bias")) {
    if (b->shape.size() != 1 || b->shape[0] != l->codes.rows())
      return Bad(".bias", absl::StrCat("must be [", l->codes.rows(), "]"));
    auto bias = TensorToMatrix(*b, name_ + ".bias");
    if (!bias.ok()) return Bad(".bias", std::string(bias.status().message()));
    l->bias = Eigen::VectorXf(bias->row(0).transpose());
  }
  return absl::OkStatus();
}

absl::Status LayerDecoder::DecodeJson(QuantizedLayer* l, LayerFacts* facts) {
  auto cit = f_.metadata.find(name_ + ".certificate");
  if (cit == f_.metadata.end())
    return Bad(".certificate", "missing (every quantized layer must have one)");
  auto cert = ParseCertificate(cit->second);
  if (!cert.ok()) return Bad(".certificate", std::string(cert.status().message()));
  l->certificate = std::move(cert).value();
  auto rit = f_.metadata.find(name_ + ".report");
  nlohmann::json rep = nlohmann::json::object();
  if (rit != f_.metadata.end()) rep = nlohmann::json::parse(rit->second, nullptr, false);
  if (rep.is_discarded() || !rep.is_object()) return Bad(".report", "is not a JSON object");
  if (version_ >= 2) {
    if (rit == f_.metadata.end()) return Bad(".report", "missing");
    for (const char* key : {"group_size", "weight_bits", "input_bits"})
      if (!rep.contains(key) || !rep[key].is_number_integer())
        return Bad(".report", absl::StrCat("lacks integer ", key));
    if (!rep.contains("input_signed") || !rep["input_signed"].is_boolean())
      return Bad(".report", "lacks boolean input_signed");
    facts->group_size = rep["group_size"].get<int>();
    facts->weight_bits = rep["weight_bits"].get<int>();
    facts->input_bits = rep["input_bits"].get<int>();
    facts->input_signed = rep["input_signed"].get<bool>();
  } else {  // v1: the certificate is the record of what ran; the group size is file-wide
    facts->weight_bits = l->certificate.weight_bits;
    facts->input_bits = l->certificate.input.bits;
    facts->input_signed = l->certificate.input.is_signed;
    facts->group_size = file_group_;
    const int64_t groups = l->scales.cols(), k = l->codes.cols();
    if (groups > 1 && NumGroups(k, facts->group_size) != groups)  // writers that wrote "0"
      facts->group_size = static_cast<int>((k + groups - 1) / groups);
  }
  l->group_size = facts->group_size;
  l->activations.spec = l->certificate.input;
  QualityReport& r = l->report;
  r.relative_error = NumOr(rep, "relative_error");
  r.relative_error_quantized_inputs = NumOr(rep, "relative_error_quantized_inputs");
  r.sparsity = Field(rep, "sparsity", 0.0);
  r.max_abs_code = Field(rep, "max_abs_code", 0);
  r.mean_l1 = Field(rep, "mean_l1", 0.0);
  r.max_l1 = Field(rep, "max_l1", int64_t{0});
  r.min_accumulator_bits = l->certificate.min_accumulator_bits;
  r.min_outer_accumulator_bits = l->certificate.min_outer_accumulator_bits;
  RunInfo& run = l->run;
  run.description = Field(rep, "method", std::string());
  run.damping = Field(rep, "damping", 0.0);
  run.damping_retries = Field(rep, "damping_retries", 0);
  run.dead_inputs = Field(rep, "dead_inputs", int64_t{0});
  run.samples = Field(rep, "calibration_samples", int64_t{0});
  run.seconds = Field(rep, "seconds", 0.0);
  run.job_id = Field(rep, "job_id", std::string());
  l->bias_corrected = Field(rep, "bias_corrected", false);
  return absl::OkStatus();
}

absl::Status LayerDecoder::CheckConsistency(const QuantizedLayer& l,
                                            const LayerFacts& facts) const {
  const Certificate& c = l.certificate;
  const int64_t rows = l.codes.rows(), k = l.codes.cols();
  if (c.output_channels != rows || c.inputs != k)
    return Bad(".certificate", absl::StrCat("is for [", c.output_channels, ", ", c.inputs,
                                            "] but .qweight is [", rows, ", ", k, "]"));
  if (facts.group_size < 0)
    return Bad(".report", absl::StrCat("group_size ", facts.group_size, " is negative"));
  if (NumGroups(k, facts.group_size) != l.scales.cols())
    return Bad(".scales",
               absl::StrCat("has ", l.scales.cols(), " groups; group size ", facts.group_size,
                            " with K = ", k, " needs ", NumGroups(k, facts.group_size)));
  if (facts.weight_bits != c.weight_bits || facts.input_bits != c.input.bits ||
      facts.input_signed != c.input.is_signed)
    return Bad(".report", absl::StrCat("states W", facts.weight_bits, "A", facts.input_bits,
                                       facts.input_signed ? " signed" : " unsigned",
                                       ", the certificate W", c.weight_bits, "A", c.input.bits,
                                       c.input.is_signed ? " signed" : " unsigned"));
  const ActivationQuantizer& a = l.activations;
  if (a.zero_point < a.spec.min_code() || a.zero_point > a.spec.max_code())
    return Bad(".input_zero_point", absl::StrCat(a.zero_point, " is outside the code range [",
                                                 a.spec.min_code(), ", ", a.spec.max_code(), "]"));
  return absl::OkStatus();
}

absl::StatusOr<QuantizedLayer> LayerDecoder::Decode() {
  QuantizedLayer l;
  l.name = name_;
  LayerFacts facts;
  if (auto s = DecodeTensors(&l); !s.ok()) return s;
  if (auto s = DecodeJson(&l, &facts); !s.ok()) return s;
  if (auto s = CheckConsistency(l, facts); !s.ok()) return s;
  return l;
}

// The layer names a file lists, and its schema version.
absl::StatusOr<std::vector<std::string>> ListedLayers(const SafetensorsFile& f, int* version) {
  auto meta = [&](const char* key) -> const std::string* {
    auto it = f.metadata.find(key);
    return it == f.metadata.end() ? nullptr : &it->second;
  };
  const std::string* format = meta("format");
  if (format && *format != kFormat)
    return absl::InvalidArgumentError(absl::StrCat("not a RESULT file (format ", *format, ")"));
  const std::string* v = meta("axeq.schema_version");
  *version = 1;
  if (v && (!absl::SimpleAtoi(*v, version) || *version < 1 || *version > kResultSchemaVersion))
    return absl::InvalidArgumentError(
        absl::StrCat("RESULT schema version '", *v, "' is not 1 or ", kResultSchemaVersion));
  std::vector<std::string> names;
  if (*version >= 2) {
    const std::string* list = meta("axeq.layers");
    if (!list) return absl::InvalidArgumentError("RESULT file lacks the axeq.layers list");
    nlohmann::json j = nlohmann::json::parse(*list, nullptr, false);
    if (j.is_discarded() || !j.is_array())
      return absl::InvalidArgumentError("axeq.layers is not a JSON array");
    std::set<std::string> seen;
    for (const auto& e : j) {
      if (!e.is_string() || e.get<std::string>().empty() ||
          !seen.insert(e.get<std::string>()).second)
        return absl::InvalidArgumentError("axeq.layers must hold distinct, non-empty layer names");
      names.push_back(e.get<std::string>());
    }
  } else {
    std::set<std::string> found;
    for (const auto& [key, _] : f.metadata)
      if (absl::EndsWith(key, ".certificate")) found.insert(key.substr(0, key.size() - 12));
    for (const auto& [key, _] : f.tensors)
      if (absl::EndsWith(key, ".qweight")) found.insert(key.substr(0, key.size() - 8));
    names.assign(found.begin(), found.end());
  }
  if (names.empty()) return absl::InvalidArgumentError("the RESULT file holds no quantized layers");
  return names;
}

}  // namespace

nlohmann::json LayerReportToJson(const QuantizedLayer& l) {
  const QualityReport& r = l.report;
  nlohmann::json j = {{"layer", l.name},
                      {"method", l.run.description},
                      {"output_channels", l.codes.rows()},
                      {"inputs", l.codes.cols()},
                      {"group_size", l.group_size},
                      {"weight_bits", l.certificate.weight_bits},
                      {"input_bits", l.certificate.input.bits},
                      {"input_signed", l.certificate.input.is_signed},
                      {"calibration_samples", l.run.samples},
                      {"relative_error", Num(r.relative_error)},
                      {"relative_error_quantized_inputs", Num(r.relative_error_quantized_inputs)},
                      {"sparsity", r.sparsity},
                      {"max_abs_code", r.max_abs_code},
                      {"mean_l1", r.mean_l1},
                      {"max_l1", r.max_l1},
                      {"min_accumulator_bits", r.min_accumulator_bits},
                      {"min_outer_accumulator_bits", r.min_outer_accumulator_bits},
                      {"certificate_safe", l.certificate.safe},
                      {"bias_corrected", l.bias_corrected},
                      {"damping", l.run.damping},
                      {"damping_retries", l.run.damping_retries},
                      {"dead_inputs", l.run.dead_inputs},
                      {"input_scale", l.activations.scale},
                      {"input_zero_point", l.activations.zero_point},
                      {"seconds", l.run.seconds}};
  if (!l.run.job_id.empty()) j["job_id"] = l.run.job_id;
  return j;
}

SafetensorsFile ResultToSafetensors(const std::vector<QuantizedLayer>& layers) {
  SafetensorsFile f;
  nlohmann::json names = nlohmann::json::array();
  for (const auto& l : layers) {
    names.push_back(l.name);
    f.tensors[l.name + ".qweight"] = CodesToTensor(l.codes);
    f.tensors[l.name + ".scales"] = MatrixToTensor(l.scales);
    f.tensors[l.name + ".input_scale"] = Scalar<float>("F32", l.activations.scale);
    f.tensors[l.name + ".input_zero_point"] = Scalar<int32_t>("I32", l.activations.zero_point);
    if (l.bias) f.tensors[l.name + ".bias"] = VectorToTensor(*l.bias);
    f.metadata[l.name + ".certificate"] = CertificateToJson(l.certificate).dump();
    f.metadata[l.name + ".report"] = LayerReportToJson(l).dump();
  }
  f.metadata["format"] = kFormat;
  f.metadata["axeq.schema_version"] = std::to_string(kResultSchemaVersion);
  f.metadata["axeq.layers"] = names.dump();
  return f;
}

absl::Status WriteResultFile(const std::string& path, const std::vector<QuantizedLayer>& layers) {
  return WriteSafetensors(path, ResultToSafetensors(layers));
}

absl::StatusOr<std::vector<ResultEntry>> DecodeResultEntries(const SafetensorsFile& file) {
  int version = 0;
  auto names = ListedLayers(file, &version);
  if (!names.ok()) return names.status();
  int file_group = 0;
  if (auto it = file.metadata.find("axeq.group_size"); it != file.metadata.end())
    if (!absl::SimpleAtoi(it->second, &file_group) || file_group < 0) file_group = 0;
  std::vector<ResultEntry> out;
  for (const auto& name : *names)
    out.push_back({name, LayerDecoder(file, name, version, file_group).Decode()});
  return out;
}

absl::StatusOr<std::vector<QuantizedLayer>> DecodeResult(const SafetensorsFile& file) {
  auto entries = DecodeResultEntries(file);
  if (!entries.ok()) return entries.status();
  std::vector<QuantizedLayer> out;
  for (auto& e : *entries) {
    if (!e.layer.ok()) return e.layer.status();
    out.push_back(std::move(e.layer).value());
  }
  return out;
}

absl::StatusOr<std::vector<QuantizedLayer>> ReadResultFile(const std::string& path) {
  auto f = ReadSafetensors(path);
  if (!f.ok()) return f.status();
  auto r = DecodeResult(*f);
  if (!r.ok())
    return absl::Status(r.status().code(), absl::StrCat(path, ": ", r.status().message()));
  return r;
}

}  // namespace axeq
