// The RESULT file (docs/result-format.md): the one codec between QuantizedLayer and disk, used by
// `axeq quantize`, `fetch`, `verify`, `simulate`, `llama2c-eval` and the server's durable results
// (the Python package mirrors it). Writes schema version 2; reads versions 1 and 2, checking every
// layer's tensors, shapes and JSON against each other.
#ifndef AXEQ_FORMATS_RESULT_FILE_H_
#define AXEQ_FORMATS_RESULT_FILE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/quantized_layer.h"
#include "formats/safetensors.h"
#include "nlohmann/json.hpp"

namespace axeq {

inline constexpr int kResultSchemaVersion = 2;

// The report JSON of one layer (`<layer>.report`, the CLI's --json rows): what ran and the
// quality figures. NaN figures are written as null.
nlohmann::json LayerReportToJson(const QuantizedLayer& layer);

// Builds the RESULT file's tensors and metadata; WriteResultFile writes it atomically and durably.
SafetensorsFile ResultToSafetensors(const std::vector<QuantizedLayer>& layers);
absl::Status WriteResultFile(const std::string& path, const std::vector<QuantizedLayer>& layers);

// One listed layer of a RESULT file: decoded, or why not (DATA_LOSS naming the layer and field).
struct ResultEntry {
  std::string name;
  absl::StatusOr<QuantizedLayer> layer;
};

// Decodes every layer the file lists (v2: `axeq.layers`; v1: every `.certificate` key and every
// `.qweight` tensor, so a layer whose certificate was removed still shows up, as an error).
// INVALID_ARGUMENT when the file is not a RESULT file or has an unknown schema version.
absl::StatusOr<std::vector<ResultEntry>> DecodeResultEntries(const SafetensorsFile& file);

// Strict: all layers or the first layer's error (DATA_LOSS: "layer X: field: problem").
absl::StatusOr<std::vector<QuantizedLayer>> DecodeResult(const SafetensorsFile& file);
absl::StatusOr<std::vector<QuantizedLayer>> ReadResultFile(const std::string& path);

}  // namespace axeq

#endif  // AXEQ_FORMATS_RESULT_FILE_H_
