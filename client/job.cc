// Embedded quantization job and result-file verification.
#include "client/job.h"

#include <atomic>
#include <chrono>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/bounds.h"
#include "core/status_macros.h"
#include "core/thread_pool.h"
#include "client/remote.h"
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

namespace {

class EmbeddedEngine : public Engine {
 public:
  explicit EmbeddedEngine(int threads) : pool_(threads) {}
  absl::StatusOr<LayerOutcome> Run(const LayerTask& t, const std::function<void(double, const std::string&)>& progress) override {
    const auto t0 = std::chrono::steady_clock::now();
    RunContext ctx;
    ctx.parallel_for = [this](int64_t n, const std::function<void(int64_t)>& fn) { pool_.ParallelFor(n, fn); };
    StatsAccumulator acc(t.weights.cols(), /*keep_cross=*/true, /*keep_xx=*/true, ctx);
    AXEQ_RETURN_IF_ERROR(acc.Add(t.x, t.xq));
    LayerStats stats;
    AXEQ_ASSIGN_OR_RETURN(stats, acc.Finish());
    ctx.progress = [&](int64_t done, int64_t total) {
      if (progress) progress(static_cast<double>(done) / total, "");
    };
    LayerOutcome o;
    o.name = t.name;
    o.activations = t.activations;
    o.samples = stats.samples;
    AXEQ_ASSIGN_OR_RETURN(o.result, QuantizeLayer(t.weights, t.bias ? &*t.bias : nullptr, stats, t.options, ctx));
    o.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return o;
  }

 private:
  ThreadPool pool_;
};

class RemoteEngine : public Engine {
 public:
  RemoteEngine(std::unique_ptr<RemoteClient> client, int concurrency)
      : client_(std::move(client)), concurrency_(std::max(1, concurrency)) {}
  int concurrency() const override { return concurrency_; }
  absl::StatusOr<LayerOutcome> Run(const LayerTask& t, const std::function<void(double, const std::string&)>& progress) override {
    RemoteLayer l{t.name, t.weights};
    l.bias = t.bias ? &*t.bias : nullptr;
    l.x = &t.x;
    l.xq = &t.xq;
    l.activations = t.activations;
    l.options = t.options;
    auto r = client_->Quantize(l, [&](double f, const std::string& state) {
      if (!progress) return;
      if (state == "UPLOADING") {
        progress(0.0, absl::StrCat("uploading ", static_cast<int>(100 * f), "%"));
      } else if (state == "JOB_STATE_RECEIVING") {
        progress(0.0, "server checking upload");
      } else if (state == "JOB_STATE_QUEUED") {
        progress(0.0, "queued");
      } else {
        progress(f, "");
      }
    });
    if (!r.ok()) return r.status();
    LayerOutcome o;
    o.name = t.name;
    o.job_id = r->job_id;
    o.result = std::move(r->result);
    o.activations = r->activations;
    o.samples = r->samples;
    o.seconds = r->seconds;
    return o;
  }

 private:
  std::unique_ptr<RemoteClient> client_;
  int concurrency_;
};

}  // namespace

std::unique_ptr<Engine> MakeEmbeddedEngine(int threads) {
  return std::make_unique<EmbeddedEngine>(threads > 0 ? threads : std::max(1u, std::thread::hardware_concurrency()));
}

std::unique_ptr<Engine> MakeRemoteEngine(std::unique_ptr<RemoteClient> client, int concurrency) {
  return std::make_unique<RemoteEngine>(std::move(client), concurrency);
}

absl::StatusOr<std::vector<LayerOutcome>> RunQuantizeJob(const SafetensorsFile& model,
                                                         const SafetensorsFile& calibration,
                                                         const JobOptions& options,
                                                         const JobProgress& progress, Engine* engine) {
  AXEQ_RETURN_IF_ERROR(options.layer.Validate());
  std::vector<std::string> names = options.layers;
  if (names.empty()) {
    for (const auto& [key, t] : model.tensors)
      if (absl::EndsWith(key, kWeightSuffix) && t.shape.size() == 2)
        names.push_back(key.substr(0, key.size() - (sizeof(kWeightSuffix) - 1)));
  }
  if (names.empty()) return absl::InvalidArgumentError("the model file holds no 2-D <layer>.weight tensors");
  std::unique_ptr<Engine> own;
  if (!engine) {
    own = MakeEmbeddedEngine(options.threads);
    engine = own.get();
  }
  // Prepare every task first: file and shape errors surface before any work is done.
  std::vector<LayerTask> tasks(names.size());
  for (size_t li = 0; li < names.size(); ++li) {
    const std::string& name = names[li];
    LayerTask& t = tasks[li];
    t.name = name;
    AXEQ_ASSIGN_OR_RETURN(t.weights, Get(model, name + ".weight", "model"));
    AXEQ_ASSIGN_OR_RETURN(t.x, Get(calibration, name + ".inputs", "calibration"));
    if (t.x.cols() != t.weights.cols())
      return absl::InvalidArgumentError(absl::StrCat(name, ".inputs has ", t.x.cols(), " columns but ", name,
                                                     ".weight has K = ", t.weights.cols()));
    if (model.tensors.count(name + ".bias")) {
      MatrixXf b;
      AXEQ_ASSIGN_OR_RETURN(b, Get(model, name + ".bias", "model"));
      t.bias = Eigen::VectorXf(b.row(0).transpose());
    }
    t.options = options.layer;
    if (t.options.method == Method::kNaive) {  // naive bit-width manipulation: smaller M, N with P* <= P
      BitWidths bw;
      AXEQ_ASSIGN_OR_RETURN(bw, NaiveBitWidths(t.weights.cols(), t.options.weights.bits, t.options.inputs.bits,
                                               t.options.inputs.is_signed, t.options.accumulator.bits));
      t.options.weights.bits = bw.weight_bits;
      t.options.inputs.bits = bw.input_bits;
    }
    const bool has_xq = calibration.tensors.count(name + ".quant_inputs") && t.options.inputs.bits == options.layer.inputs.bits;
    if (has_xq) {
      AXEQ_ASSIGN_OR_RETURN(t.xq, Get(calibration, name + ".quant_inputs", "calibration"));
      AXEQ_ASSIGN_OR_RETURN(t.activations, CalibrateActivations(t.xq, t.options.inputs, {}));
    } else {
      AXEQ_ASSIGN_OR_RETURN(t.activations, CalibrateActivations(t.x, t.options.inputs, options.activation_calibration));
      t.xq = t.activations.Apply(t.x);
    }
  }
  std::vector<absl::StatusOr<LayerOutcome>> results(names.size(), absl::UnknownError("not run"));
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  auto worker = [&] {
    for (size_t li; !failed && (li = next.fetch_add(1)) < tasks.size();) {
      auto cb = [&, li](double f, const std::string& phase) {
        if (progress)
          progress(static_cast<int>(li), static_cast<int>(tasks.size()), phase.empty() ? names[li] : absl::StrCat(names[li], " (", phase, ")"),
                   std::min(f, 0.999));
      };
      results[li] = engine->Run(tasks[li], cb);
      if (!results[li].ok()) {
        failed = true;
      } else if (progress) {
        progress(static_cast<int>(li), static_cast<int>(tasks.size()), names[li], 1.0);
      }
    }
  };
  const int conc = std::min<int>(engine->concurrency(), static_cast<int>(tasks.size()));
  std::vector<std::thread> threads;
  for (int i = 1; i < conc; ++i) threads.emplace_back(worker);
  worker();
  for (auto& th : threads) th.join();
  std::vector<LayerOutcome> out;
  for (size_t li = 0; li < tasks.size(); ++li) {
    if (!results[li].ok()) {
      if (results[li].status().message() == "not run") continue;
      return absl::Status(results[li].status().code(), absl::StrCat("layer ", names[li], ": ", results[li].status().message()));
    }
    out.push_back(std::move(results[li]).value());
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
