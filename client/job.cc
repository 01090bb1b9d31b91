// Embedded quantization job and result-file verification.
#include "client/job.h"

#include <chrono>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/bounds.h"
#include "core/status_macros.h"
#include "core/thread_pool.h"
#include "formats/certificate_json.h"

namespace axeq {
namespace {

constexpr char kWeightSuffix[] = ".weight";

absl::StatusOr<MatrixXf> Get(const SafetensorsFile& f, const std::string& key, const char* file) {
  auto it = f.tensors.find(key);
  if (it == f.tensors.end()) return absl::NotFoundError(absl::StrCat(file, " has no tensor ", key));
  return TensorToMatrix(it->second, key);
}

}  // namespace

absl::StatusOr<std::vector<LayerOutcome>> RunQuantizeJob(const SafetensorsFile& model,
                                                         const SafetensorsFile& calibration,
                                                         const JobOptions& options,
                                                         const JobProgress& progress) {
  AXEQ_RETURN_IF_ERROR(options.layer.Validate());
  std::vector<std::string> names = options.layers;
  if (names.empty()) {
    for (const auto& [key, t] : model.tensors)
      if (absl::EndsWith(key, kWeightSuffix) && t.shape.size() == 2)
        names.push_back(key.substr(0, key.size() - (sizeof(kWeightSuffix) - 1)));
  }
  if (names.empty()) return absl::InvalidArgumentError("the model file holds no 2-D <layer>.weight tensors");
  const int threads = options.threads > 0 ? options.threads
                                          : std::max(1u, std::thread::hardware_concurrency());
  ThreadPool pool(threads);
  RunContext ctx;
  ctx.parallel_for = [&](int64_t n, const std::function<void(int64_t)>& fn) { pool.ParallelFor(n, fn); };
  std::vector<LayerOutcome> out;
  for (size_t li = 0; li < names.size(); ++li) {
    const std::string& name = names[li];
    const auto t0 = std::chrono::steady_clock::now();
    MatrixXf w, x;
    AXEQ_ASSIGN_OR_RETURN(w, Get(model, name + ".weight", "model"));
    AXEQ_ASSIGN_OR_RETURN(x, Get(calibration, name + ".inputs", "calibration"));
    if (x.cols() != w.cols())
      return absl::InvalidArgumentError(absl::StrCat(name, ".inputs has ", x.cols(), " columns but ", name,
                                                     ".weight has K = ", w.cols()));
    std::optional<Eigen::VectorXf> bias;
    if (model.tensors.count(name + ".bias")) {
      MatrixXf b;
      AXEQ_ASSIGN_OR_RETURN(b, Get(model, name + ".bias", "model"));
      bias = Eigen::VectorXf(b.row(0).transpose());
    }
    LayerOptions lo = options.layer;
    if (lo.method == Method::kNaive) {  // naive bit-width manipulation: smaller M, N with P* <= P
      BitWidths bw;
      AXEQ_ASSIGN_OR_RETURN(bw, NaiveBitWidths(w.cols(), lo.weights.bits, lo.inputs.bits,
                                               lo.inputs.is_signed, lo.accumulator.bits));
      lo.weights.bits = bw.weight_bits;
      lo.inputs.bits = bw.input_bits;
    }
    LayerOutcome o;
    o.name = name;
    const bool has_xq = calibration.tensors.count(name + ".quant_inputs") && lo.inputs.bits == options.layer.inputs.bits;
    MatrixXf xq;
    if (has_xq) {
      AXEQ_ASSIGN_OR_RETURN(xq, Get(calibration, name + ".quant_inputs", "calibration"));
      AXEQ_ASSIGN_OR_RETURN(o.activations, CalibrateActivations(xq, lo.inputs, {}));
    } else {
      AXEQ_ASSIGN_OR_RETURN(o.activations, CalibrateActivations(x, lo.inputs, options.activation_calibration));
      xq = o.activations.Apply(x);
    }
    StatsAccumulator acc(w.cols(), /*keep_cross=*/true, /*keep_xx=*/true);
    AXEQ_RETURN_IF_ERROR(acc.Add(x, xq));
    LayerStats stats;
    AXEQ_ASSIGN_OR_RETURN(stats, acc.Finish());
    o.samples = stats.samples;
    ctx.progress = [&](int64_t done, int64_t total) {
      if (progress) progress(static_cast<int>(li), static_cast<int>(names.size()), name, double(done) / total);
    };
    auto r = QuantizeLayer(w, bias ? &*bias : nullptr, stats, lo, ctx);
    if (!r.ok()) return absl::Status(r.status().code(), absl::StrCat("layer ", name, ": ", r.status().message()));
    o.result = std::move(r).value();
    o.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (progress) progress(static_cast<int>(li), static_cast<int>(names.size()), name, 1.0);
    out.push_back(std::move(o));
  }
  return out;
}

nlohmann::json ReportToJson(const LayerOutcome& o) {
  const auto& r = o.result;
  auto num = [](double v) { return std::isnan(v) ? nlohmann::json(nullptr) : nlohmann::json(v); };
  return {{"layer", o.name},
          {"method", r.description},
          {"output_channels", r.codes.rows()},
          {"inputs", r.codes.cols()},
          {"weight_bits", r.weight_bits},
          {"input_bits", r.input_bits},
          {"calibration_samples", o.samples},
          {"relative_error", num(r.report.relative_error)},
          {"relative_error_quantized_inputs", num(r.report.relative_error_quantized_inputs)},
          {"sparsity", r.report.sparsity},
          {"max_abs_code", r.report.max_abs_code},
          {"mean_l1", r.report.mean_l1},
          {"max_l1", r.report.max_l1},
          {"min_accumulator_bits", r.report.min_accumulator_bits},
          {"min_outer_accumulator_bits", r.report.min_outer_accumulator_bits},
          {"certificate_safe", r.certificate.safe},
          {"bias_corrected", r.bias_corrected},
          {"damping", r.damping},
          {"damping_retries", r.damping_retries},
          {"dead_inputs", r.dead_inputs},
          {"input_scale", o.activations.scale},
          {"input_zero_point", o.activations.zero_point},
          {"input_signed", o.activations.spec.is_signed},
          {"seconds", o.seconds}};
}

SafetensorsFile ResultsToFile(const std::vector<LayerOutcome>& outcomes, const JobOptions& options) {
  SafetensorsFile f;
  for (const auto& o : outcomes) {
    f.tensors[o.name + ".qweight"] = CodesToTensor(o.result.codes);
    f.tensors[o.name + ".scales"] = MatrixToTensor(o.result.scales);
    f.tensors[o.name + ".input_scale"] = ScalarF32Tensor(o.activations.scale);
    f.tensors[o.name + ".input_zero_point"] = ScalarI32Tensor(o.activations.zero_point);
    if (o.result.bias) f.tensors[o.name + ".bias"] = VectorToTensor(*o.result.bias);
    f.metadata[o.name + ".certificate"] = CertificateToJson(o.result.certificate).dump();
    f.metadata[o.name + ".report"] = ReportToJson(o).dump();
  }
  f.metadata["format"] = "axeq-result";
  f.metadata["axeq.group_size"] = std::to_string(options.layer.weights.group_size);
  return f;
}

absl::StatusOr<std::vector<VerifyOutcome>> VerifyResultFile(const SafetensorsFile& result) {
  std::vector<VerifyOutcome> out;
  for (const auto& [key, text] : result.metadata) {
    if (!absl::EndsWith(key, ".certificate")) continue;
    VerifyOutcome v;
    v.name = key.substr(0, key.size() - std::string(".certificate").size());
    auto cert = ParseCertificate(text);
    auto it = result.tensors.find(v.name + ".qweight");
    if (!cert.ok()) {
      v.problems.push_back(std::string(cert.status().message()));
    } else if (it == result.tensors.end()) {
      v.problems.push_back("no " + v.name + ".qweight tensor");
    } else {
      auto codes = TensorToCodes(it->second, v.name + ".qweight");
      if (!codes.ok()) {
        v.problems.push_back(std::string(codes.status().message()));
      } else {
        Verification ver = VerifyCertificate(*codes, *cert);
        v.consistent = ver.consistent;
        v.safe = ver.safe;
        v.problems = ver.problems;
        v.accumulator_bits = cert->accumulator_bits;
        v.tile_size = cert->tile_size;
        v.min_accumulator_bits = cert->min_accumulator_bits;
        v.min_outer_accumulator_bits = cert->min_outer_accumulator_bits;
      }
    }
    out.push_back(std::move(v));
  }
  if (out.empty()) return absl::InvalidArgumentError("the file holds no <layer>.certificate metadata");
  return out;
}

}  // namespace axeq
