// Accumulator sweeps: quantize every layer at each (P, M, N, method) point, keep the per-point
// quality (layer reconstruction error summed over layers, or a model metric from an evaluation
// command), sparsity, minimal P_O and certificate verdicts, and report for each P the best (M, N)
// per method: the Pareto frontier of the paper's Fig. 1 and Tables 7-8. Finished points are cached
// by a fingerprint of the inputs and the configuration, so an interrupted sweep resumes.
#ifndef AXEQ_TOOLS_SWEEP_H_
#define AXEQ_TOOLS_SWEEP_H_

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/job.h"
#include "nlohmann/json.hpp"

namespace axeq {

struct SweepOptions {
  std::vector<int> accumulator_bits{16, 18, 20, 24, 32};
  std::vector<int> weight_bits{3, 4, 5, 6, 7, 8};
  std::vector<int> input_bits{3, 4, 5, 6, 7, 8};
  bool allow_inputs_below_weights = false;                      // the paper sweeps N >= M
  std::vector<std::string> methods{"axe", "naive", "ep-init"};  // + rtz, hco
  JobOptions job;         // algorithm, tile, alphabet, calibration, threads, layers
  std::string cache_dir;  // empty: no cache
  // Optional model metric: run with {result} replaced by a RESULT file of the point; the last
  // "perplexity <x>" (or else the last number) printed is the quality (lower is better).
  std::string eval_command;
  std::string work_dir = "/tmp";
};

struct SweepPoint {
  std::string method;
  int p = 0, m = 0, n = 0;
  double quality = 0;    // lower is better
  double error_sum = 0;  // sum over layers of the relative reconstruction error
  double sparsity = 0;
  int min_outer_bits = 0;  // max over layers of the exact minimal P_O
  int min_inner_bits = 0;
  bool certified = false;  // every layer's certificate SAFE at P
  bool cached = false;
  std::map<std::string, std::map<int, int>> channel_bits;  // layer -> (bits needed -> channels)
  nlohmann::json ToJson() const;
  static SweepPoint FromJson(const nlohmann::json& j);
};

struct SweepResult {
  std::vector<SweepPoint> points;
  // For each P and method: the index of the best point (lowest quality) in points.
  std::map<int, std::map<std::string, int>> frontier;
};

// progress(points done, points total, point description).
absl::StatusOr<SweepResult> RunSweep(
    const std::string& model_path, const std::string& calibration_path, const SweepOptions& options,
    Engine* engine, const std::function<void(int, int, const std::string&)>& progress = {});

// Writes frontier tables and plots: sweep.json, sweep.csv, pareto.svg, accumulator_bits.svg.
absl::Status WriteSweepOutputs(const SweepResult& r, const SweepOptions& o, const std::string& dir);
std::string FrontierTable(const SweepResult& r, const SweepOptions& o);

}  // namespace axeq

#endif  // AXEQ_TOOLS_SWEEP_H_
