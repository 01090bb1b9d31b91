// A quantization job: every layer of a LAYERS.safetensors file with its calibration inputs from
// CAL.safetensors, through an engine (in-process core/, or a remote axeq-server), into
// QuantizedLayers (formats/result_file.h writes them as a RESULT file).
#ifndef AXEQ_CLIENT_JOB_H_
#define AXEQ_CLIENT_JOB_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/layer.h"
#include "formats/safetensors.h"

namespace axeq {

struct JobOptions {
  LayerOptions layer;
  ActivationCalibration activation_calibration{ActivationRange::kAuto};
  std::vector<std::string> layers;  // empty = every "<name>.weight" in the model file
  int threads = 0;                  // 0 = hardware threads
};

// Progress: (layer index, layer count, layer name, fraction of this layer done). May be called
// from several threads at once when the engine runs layers concurrently.
using JobProgress = std::function<void(int, int, const std::string&, double)>;

// One layer, ready for an engine: weights, bias, calibration rows X and X~ and the activation
// quantizer that made X~, and the resolved options.
struct LayerTask {
  std::string name;
  MatrixXf weights;
  std::optional<Eigen::VectorXf> bias;
  MatrixXf x, xq;
  ActivationQuantizer activations;
  LayerOptions options;
  // Further activation ranges to try end to end (ActivationRange::kAuto): the runner keeps the
  // result with the least report.relative_error (the first on ties or when it is NaN).
  std::vector<ActivationQuantizer> alternatives;
};

// The CLI's two engines behind one interface: in-process (core/) and remote (axeq-server).
class Engine {
 public:
  virtual ~Engine() = default;
  virtual int concurrency() const { return 1; }  // layers in flight at once
  // progress(fraction of the layer, phase): phase is empty while quantizing, else what the
  // layer is waiting on ("uploading 40%", "queued").
  virtual absl::StatusOr<QuantizedLayer> Run(
      const LayerTask& task, const std::function<void(double, const std::string&)>& progress) = 0;
};
std::unique_ptr<Engine> MakeEmbeddedEngine(int threads);
class RemoteClient;
std::unique_ptr<Engine> MakeRemoteEngine(std::unique_ptr<RemoteClient> client, int concurrency);

absl::StatusOr<std::vector<QuantizedLayer>> RunQuantizeJob(const SafetensorsFile& model,
                                                           const SafetensorsFile& calibration,
                                                           const JobOptions& options,
                                                           const JobProgress& progress = {},
                                                           Engine* engine = nullptr);

}  // namespace axeq

#endif  // AXEQ_CLIENT_JOB_H_
