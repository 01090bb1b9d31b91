// The quantized layer: the one type every layer above core/ passes around (engine results, the
// RESULT file, the wire, the server's durable results). It holds the integer codes and scales,
// the activation quantizer the codes were made for, the corrected bias, the overflow certificate
// (which carries the input and accumulator specs it was made under), the quality report and what
// ran. Codecs live in formats/ (file, JSON) and proto/ (wire).
#ifndef AXEQ_CORE_QUANTIZED_LAYER_H_
#define AXEQ_CORE_QUANTIZED_LAYER_H_

#include <cstdint>
#include <limits>
#include <optional>
#include <string>

#include "Eigen/Core"
#include "core/certificate.h"
#include "core/quantizer.h"

namespace axeq {

struct QualityReport {
  // ||X W^T - X~ Q~^T||_F / ||X W^T||_F with Q~ the dequantized weights; NaN without xx & cross.
  double relative_error = std::numeric_limits<double>::quiet_NaN();
  // ||X~ W^T - X~ Q~^T||_F / ||X~ W^T||_F (gram only; the OPTQ objective).
  double relative_error_quantized_inputs = std::numeric_limits<double>::quiet_NaN();
  double sparsity = 0;  // fraction of zero codes
  int max_abs_code = 0;
  double mean_l1 = 0;            // mean over channels of ||q_c||_1
  int64_t max_l1 = 0;            // max over channels of ||q_c||_1
  int min_accumulator_bits = 0;  // smallest P (P_I when tiled) the codes need (certificate)
  int min_outer_accumulator_bits = 0;
};

// What ran and how it went (the bit widths that ran are the certificate's).
struct RunInfo {
  std::string description;  // e.g. "OPTQ + AXE (rtn, soft+hard, error from W), P = 16"
  double damping = 0;       // OPTQ damping used (fraction of mean diag H)
  int damping_retries = 0;
  int64_t dead_inputs = 0;  // inputs with zero variance
  int64_t samples = 0;      // calibration samples D behind the statistics
  double seconds = 0;       // wall time of the layer, as its engine measured it
  std::string job_id;       // the server's job id (remote engine only)
};

struct QuantizedLayer {
  std::string name;
  MatrixXi8 codes;                      // [C, K]
  MatrixXf scales;                      // [C, NumGroups(K, group_size)]
  int group_size = 0;                   // G; 0 = one scale per output channel
  std::optional<Eigen::VectorXf> bias;  // corrected (or passed-through) bias [C]
  bool bias_corrected = false;
  ActivationQuantizer activations;  // the per-tensor input quantizer X~ was made with
  Certificate certificate;
  QualityReport report;
  RunInfo run;

  int64_t output_channels() const { return codes.rows(); }
  int64_t inputs() const { return codes.cols(); }
  int weight_bits() const { return certificate.weight_bits; }
  // Returns codes * scales [C, K].
  MatrixXf DequantizedWeights() const { return Dequantize(codes, scales, group_size); }
};

}  // namespace axeq

#endif  // AXEQ_CORE_QUANTIZED_LAYER_H_
