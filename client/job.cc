// Embedded quantization job and result-file verification.
#include "client/job.h"

#include <atomic>
#include <chrono>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/remote.h"
#include "core/status_macros.h"
#include "core/thread_pool.h"

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
  absl::StatusOr<QuantizedLayer> Run(
      const LayerTask& t,
      const std::function<void(double, const std::string&)>& progress) override {
    const auto t0 = std::chrono::steady_clock::now();
    RunContext ctx;
    ctx.parallel_for = [this](int64_t n, const std::function<void(int64_t)>& fn) {
      pool_.ParallelFor(n, fn);
    };
    StatsAccumulator acc(t.weights.cols(), /*keep_cross=*/true, /*keep_xx=*/true, ctx);
    AXEQ_RETURN_IF_ERROR(acc.Add(t.x, t.xq));
    LayerStats stats;
    AXEQ_ASSIGN_OR_RETURN(stats, acc.Finish());
    ctx.progress = [&](int64_t done, int64_t total) {
      if (progress) progress(static_cast<double>(done) / total, "");
    };
    QuantizedLayer o;
    AXEQ_ASSIGN_OR_RETURN(
        o, QuantizeLayer(t.weights, t.bias ? &*t.bias : nullptr, stats, t.options, ctx));
    o.name = t.name;
    o.activations = t.activations;
    o.run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
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
  absl::StatusOr<QuantizedLayer> Run(
      const LayerTask& t,
      const std::function<void(double, const std::string&)>& progress) override {
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
    r->name = t.name;
    return r;
  }

 private:
  std::unique_ptr<RemoteClient> client_;
  int concurrency_;
};

// Runs t, then t with each alternative activation range, keeping the least relative output error.
absl::StatusOr<QuantizedLayer> RunWithAlternatives(
    Engine* engine, LayerTask& t, const std::function<void(double, const std::string&)>& progress) {
  const size_t n = 1 + t.alternatives.size();
  absl::StatusOr<QuantizedLayer> best = absl::UnknownError("not run");
  for (size_t i = 0; i < n; ++i) {
    if (i > 0) {
      t.activations = t.alternatives[i - 1];
      t.xq = t.activations.Apply(t.x);
    }
    auto r = engine->Run(t, [&](double f, const std::string& phase) {
      if (progress) progress((static_cast<double>(i) + f) / static_cast<double>(n), phase);
    });
    if (!r.ok()) return r.status();
    const double e = r->report.relative_error;
    if (i == 0 || (e < best->report.relative_error)) best = std::move(r);
  }
  return best;
}

}  // namespace

std::unique_ptr<Engine> MakeEmbeddedEngine(int threads) {
  return std::make_unique<EmbeddedEngine>(
      threads > 0 ? threads : std::max(1u, std::thread::hardware_concurrency()));
}

std::unique_ptr<Engine> MakeRemoteEngine(std::unique_ptr<RemoteClient> client, int concurrency) {
  return std::make_unique<RemoteEngine>(std::move(client), concurrency);
}

absl::StatusOr<std::vector<QuantizedLayer>> RunQuantizeJob(const SafetensorsFile& model,
                                                           const SafetensorsFile& calibration,
                                                           const JobOptions& options,
                                                           const JobProgress& progress,
                                                           Engine* engine) {
  AXEQ_RETURN_IF_ERROR(options.layer.Validate());
  std::vector<std::string> names = options.layers;
  if (names.empty()) {
    for (const auto& [key, t] : model.tensors)
      if (absl::EndsWith(key, kWeightSuffix) && t.shape.size() == 2)
        names.push_back(key.substr(0, key.size() - (sizeof(kWeightSuffix) - 1)));
  }
  if (names.empty())
    return absl::InvalidArgumentError("the model file holds no 2-D <layer>.weight tensors");
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
      return absl::InvalidArgumentError(absl::StrCat(name, ".inputs has ", t.x.cols(),
                                                     " columns but ", name,
                                                     ".weight has K = ", t.weights.cols()));
    if (model.tensors.count(name + ".bias")) {
      MatrixXf b;
      AXEQ_ASSIGN_OR_RETURN(b, Get(model, name + ".bias", "model"));
      t.bias = Eigen::VectorXf(b.row(0).transpose());
    }
    AXEQ_ASSIGN_OR_RETURN(t.options, ResolveOptions(options.layer, t.weights.cols()));
    const bool has_xq = calibration.tensors.count(name + ".quant_inputs") &&
                        t.options.inputs.bits == options.layer.inputs.bits;
    if (has_xq) {
      AXEQ_ASSIGN_OR_RETURN(t.xq, Get(calibration, name + ".quant_inputs", "calibration"));
      AXEQ_ASSIGN_OR_RETURN(t.activations,
                            CalibrateActivations(t.xq, t.options.inputs, ActivationRange::kMinMax));
    } else {
      std::vector<ActivationQuantizer> ranges;
      AXEQ_ASSIGN_OR_RETURN(
          ranges,
          ActivationCandidates(t.x, t.options.inputs, options.activation_calibration, &t.weights));
      t.activations = ranges.front();
      t.xq = t.activations.Apply(t.x);
      t.alternatives.assign(ranges.begin() + 1, ranges.end());
    }
  }
  std::vector<absl::StatusOr<QuantizedLayer>> results(names.size(), absl::UnknownError("not run"));
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  auto worker = [&] {
    for (size_t li; !failed && (li = next.fetch_add(1)) < tasks.size();) {
      auto cb = [&, li](double f, const std::string& phase) {
        if (progress)
          progress(static_cast<int>(li), static_cast<int>(tasks.size()),
                   phase.empty() ? names[li] : absl::StrCat(names[li], " (", phase, ")"),
                   std::min(f, 0.999));
      };
      results[li] = RunWithAlternatives(engine, tasks[li], cb);
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
  std::vector<QuantizedLayer> out;
  for (size_t li = 0; li < tasks.size(); ++li) {
    if (!results[li].ok()) {
      if (results[li].status().message() == "not run") continue;
      return absl::Status(results[li].status().code(),
                          absl::StrCat("layer ", names[li], ": ", results[li].status().message()));
    }
    out.push_back(std::move(results[li]).value());
  }
  return out;
}

}  // namespace axeq
