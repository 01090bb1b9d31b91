// An embedded quantization job: every layer of a LAYERS.safetensors file with its calibration
// inputs from CAL.safetensors, through the core engine, into a RESULT.safetensors with integer
// codes, scales, the activation quantizer, corrected biases, reports and certificates.
#ifndef AXEQ_CLIENT_JOB_H_
#define AXEQ_CLIENT_JOB_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/layer.h"
#include "formats/safetensors.h"
#include "nlohmann/json.hpp"

namespace axeq {

struct JobOptions {
  LayerOptions layer;
  ActivationCalibration activation_calibration;
  std::vector<std::string> layers;  // empty = every "<name>.weight" in the model file
  int threads = 0;                  // 0 = hardware threads
};

struct LayerOutcome {
  std::string name;
  LayerResult result;
  ActivationQuantizer activations;
  int64_t samples = 0;
  double seconds = 0;
};

// Progress: (layer index, layer count, layer name, fraction of this layer done).
using JobProgress = std::function<void(int, int, const std::string&, double)>;

absl::StatusOr<std::vector<LayerOutcome>> RunQuantizeJob(const SafetensorsFile& model,
                                                         const SafetensorsFile& calibration,
                                                         const JobOptions& options,
                                                         const JobProgress& progress = {});

// Builds the RESULT file: tensors and per-layer certificate/report JSON in the metadata.
SafetensorsFile ResultsToFile(const std::vector<LayerOutcome>& outcomes, const JobOptions& options);

nlohmann::json ReportToJson(const LayerOutcome& o);

struct VerifyOutcome {
  std::string name;
  bool consistent = false, safe = false;
  std::vector<std::string> problems;
  int accumulator_bits = 0, min_accumulator_bits = 0, min_outer_accumulator_bits = 0;
  int64_t tile_size = 0;
};
// Re-checks every `<layer>.certificate` of a RESULT file against its `<layer>.qweight`.
absl::StatusOr<std::vector<VerifyOutcome>> VerifyResultFile(const SafetensorsFile& result);

}  // namespace axeq

#endif  // AXEQ_CLIENT_JOB_H_
