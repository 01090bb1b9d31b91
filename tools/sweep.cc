// Accumulator sweeps with a fingerprint cache, frontier selection and SVG plots.
#include "tools/sweep.h"

#include <openssl/evp.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "core/bounds.h"
#include "core/status_macros.h"
#include "formats/result_file.h"
#include "tools/plot.h"

namespace axeq {
namespace fs = std::filesystem;
namespace {

std::string Sha256Hex(const std::string& data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
  std::string hex;
  for (unsigned int i = 0; i < len; ++i) absl::StrAppendFormat(&hex, "%02x", md[i]);
  return hex;
}

absl::StatusOr<std::string> FileSha256(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return Sha256Hex(ss.str());
}

absl::StatusOr<double> RunEval(const std::string& command, const std::string& result) {
  const std::string cmd = absl::StrReplaceAll(command, {{"{result}", result}});
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return absl::InternalError(absl::StrCat("cannot run ", cmd));
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  if (pclose(p) != 0)
    return absl::FailedPreconditionError(absl::StrCat("evaluation command failed: ", cmd));
  std::smatch m;
  std::regex ppl("perplexity ([0-9.eE+-]+)"), num("([-+]?[0-9]*\\.?[0-9]+([eE][-+]?[0-9]+)?)");
  double value = NAN;
  for (auto it = std::sregex_iterator(out.begin(), out.end(), ppl); it != std::sregex_iterator();
       ++it)
    value = std::stod((*it)[1]);
  if (std::isnan(value))
    for (auto it = std::sregex_iterator(out.begin(), out.end(), num); it != std::sregex_iterator();
         ++it)
      value = std::stod((*it)[1]);
  if (std::isnan(value))
    return absl::FailedPreconditionError(absl::StrCat("no number in the output of ", cmd));
  return value;
}

}  // namespace

nlohmann::json SweepPoint::ToJson() const {
  nlohmann::json bits = nlohmann::json::object();
  for (const auto& [layer, h] : channel_bits) {
    nlohmann::json hj = nlohmann::json::object();
    for (auto [b, c] : h) hj[std::to_string(b)] = c;
    bits[layer] = hj;
  }
  return {{"method", method},
          {"accumulator_bits", p},
          {"weight_bits", m},
          {"input_bits", n},
          {"quality", quality},
          {"error_sum", error_sum},
          {"sparsity", sparsity},
          {"min_outer_accumulator_bits", min_outer_bits},
          {"min_accumulator_bits", min_inner_bits},
          {"certified", certified},
          {"channel_bits", bits}};
}

SweepPoint SweepPoint::FromJson(const nlohmann::json& j) {
  SweepPoint p;
  p.method = j.value("method", "");
  p.p = j.value("accumulator_bits", 0);
  p.m = j.value("weight_bits", 0);
  p.n = j.value("input_bits", 0);
  p.quality = j.value("quality", 0.0);
  p.error_sum = j.value("error_sum", 0.0);
  p.sparsity = j.value("sparsity", 0.0);
  p.min_outer_bits = j.value("min_outer_accumulator_bits", 0);
  p.min_inner_bits = j.value("min_accumulator_bits", 0);
  p.certified = j.value("certified", false);
  if (j.contains("channel_bits"))
    for (auto& [layer, h] : j["channel_bits"].items())
      for (auto& [b, c] : h.items()) p.channel_bits[layer][std::stoi(b)] = c.get<int>();
  return p;
}

namespace {

struct SweepTodo {
  std::string method;
  int p, m, n;
};

// The grid points to run: methods x P x M x N, minus N < M (unless allowed), naive points whose
// data-type bound exceeds P on the widest layer (max_k) and AXE points with no feasible budget.
absl::StatusOr<std::vector<SweepTodo>> PlanSweep(const SweepOptions& o, int64_t max_k) {
  std::vector<SweepTodo> todo;
  for (const auto& method : o.methods) {
    if (method != "axe" && method != "naive" && method != "ep-init" && method != "rtz" &&
        method != "hco")
      return absl::InvalidArgumentError(
          absl::StrCat("unknown sweep method '", method, "' (axe|naive|ep-init|rtz|hco)"));
    for (int p : o.accumulator_bits)
      for (int m : o.weight_bits)
        for (int n : o.input_bits) {
          if (n < m && !o.allow_inputs_below_weights) continue;
          if (method == "naive" && DataTypeBoundBits(max_k, m, n, o.job.layer.inputs.is_signed) > p)
            continue;
          InputSpec in;
          in.bits = n;
          in.is_signed = o.job.layer.inputs.is_signed;
          AccumulatorSpec acc = o.job.layer.accumulator;
          acc.bits = p;
          if (method != "naive" && !AccumulatorBudget(in, acc).Feasible()) continue;
          todo.push_back({method, p, m, n});
        }
  }
  return todo;
}

JobOptions PointJob(const SweepOptions& o, const SweepTodo& t) {
  JobOptions jo = o.job;
  jo.layer.weights.bits = t.m;
  jo.layer.inputs.bits = t.n;
  jo.layer.accumulator.bits = t.p;
  jo.layer.method = t.method == "naive"     ? Method::kNaive
                    : t.method == "ep-init" ? Method::kEpInit
                                            : Method::kAxe;
  jo.layer.rounding = t.method == "rtz" ? Rounding::kToZero : Rounding::kNearest;
  jo.layer.soft_threshold = t.method != "hco";
  return jo;
}

// The cache key of a point: the inputs' digests and every option that changes its result.
std::string PointFingerprint(const std::string& model_sha, const std::string& cal_sha,
                             const SweepOptions& o, const SweepTodo& t, const JobOptions& jo) {
  const nlohmann::json config = {
      {"model", model_sha},
      {"calibration", cal_sha},
      {"method", t.method},
      {"options",
       nlohmann::json::parse(absl::StrFormat(
           R"({"alg":%d,"p":%d,"m":%d,"n":%d,"t":%d,"g":%d,"s":%d,"full":%d,)"
           R"("lo":%g,"hi":%g,"twos":%d})",
           static_cast<int>(jo.layer.algorithm), t.p, t.m, t.n, jo.layer.accumulator.tile_size,
           jo.layer.weights.group_size, jo.layer.inputs.is_signed,
           jo.layer.weights.alphabet == WeightAlphabet::kFull,
           jo.activation_calibration.low_percentile, jo.activation_calibration.high_percentile,
           jo.layer.accumulator.twos_complement))},
      {"range", static_cast<int>(jo.activation_calibration.method)},
      {"layers", jo.layers},
      {"eval", o.eval_command},
      {"version", 2}};
  return Sha256Hex(config.dump());
}

// Error, sparsity, certificate and accumulator-width figures of one point's layers.
SweepPoint Summarize(const SweepTodo& t, const std::vector<QuantizedLayer>& layers) {
  SweepPoint pt{t.method, t.p, t.m, t.n};
  int64_t zeros = 0, total = 0;
  pt.certified = true;
  for (const auto& r : layers) {
    pt.error_sum += r.report.relative_error;
    zeros += static_cast<int64_t>((r.codes.array() == 0).count());
    total += r.codes.size();
    pt.min_outer_bits = std::max(pt.min_outer_bits, r.certificate.min_outer_accumulator_bits);
    pt.min_inner_bits = std::max(pt.min_inner_bits, r.certificate.min_accumulator_bits);
    pt.certified = pt.certified && r.certificate.safe;
    for (const auto& ch : r.certificate.channels)
      ++pt.channel_bits[r.name][MinAccumulatorBits(ch.lo, ch.hi,
                                                   r.certificate.accumulator.twos_complement)];
  }
  pt.sparsity = total ? static_cast<double>(zeros) / total : 0;
  pt.quality = pt.error_sum;
  return pt;
}

}  // namespace

absl::StatusOr<SweepResult> RunSweep(
    const std::string& model_path, const std::string& calibration_path, const SweepOptions& o,
    Engine* engine, const std::function<void(int, int, const std::string&)>& progress) {
  SafetensorsFile model, cal;
  AXEQ_ASSIGN_OR_RETURN(model, ReadSafetensors(model_path));
  AXEQ_ASSIGN_OR_RETURN(cal, ReadSafetensors(calibration_path));
  std::string model_sha, cal_sha;
  AXEQ_ASSIGN_OR_RETURN(model_sha, FileSha256(model_path));
  AXEQ_ASSIGN_OR_RETURN(cal_sha, FileSha256(calibration_path));
  int64_t max_k = 0;
  for (const auto& [key, t] : model.tensors)
    if (t.shape.size() == 2 && key.size() > 7 && key.compare(key.size() - 7, 7, ".weight") == 0)
      max_k = std::max<int64_t>(max_k, t.shape[1]);
  std::vector<SweepTodo> todo;
  AXEQ_ASSIGN_OR_RETURN(todo, PlanSweep(o, max_k));
  if (!o.cache_dir.empty()) fs::create_directories(o.cache_dir);
  SweepResult out;
  for (size_t i = 0; i < todo.size(); ++i) {
    const SweepTodo& t = todo[i];
    const JobOptions jo = PointJob(o, t);
    const std::string fp = PointFingerprint(model_sha, cal_sha, o, t, jo);
    const std::string cache_file =
        o.cache_dir.empty() ? "" : (fs::path(o.cache_dir) / (fp + ".json")).string();
    const std::string what = absl::StrFormat("%s P=%d W%dA%d", t.method, t.p, t.m, t.n);
    if (progress) progress(static_cast<int>(i), static_cast<int>(todo.size()), what);
    if (!cache_file.empty() && fs::exists(cache_file)) {
      std::ifstream in(cache_file);
      auto j = nlohmann::json::parse(in, nullptr, false);
      if (!j.is_discarded()) {
        SweepPoint pt = SweepPoint::FromJson(j);
        pt.cached = true;
        out.points.push_back(pt);
        continue;
      }
    }
    std::vector<QuantizedLayer> layers;
    AXEQ_ASSIGN_OR_RETURN(layers, RunQuantizeJob(model, cal, jo, {}, engine));
    SweepPoint pt = Summarize(t, layers);
    if (!o.eval_command.empty()) {
      const std::string path =
          (fs::path(o.work_dir) / ("axeq-sweep-" + fp.substr(0, 16) + ".safetensors")).string();
      AXEQ_RETURN_IF_ERROR(WriteResultFile(path, layers));
      AXEQ_ASSIGN_OR_RETURN(pt.quality, RunEval(o.eval_command, path));
      fs::remove(path);
    }
    if (!cache_file.empty()) {
      std::ofstream(cache_file + ".tmp") << pt.ToJson().dump();
      fs::rename(cache_file + ".tmp", cache_file);
    }
    out.points.push_back(pt);
  }
  for (size_t i = 0; i < out.points.size(); ++i) {
    const auto& pt = out.points[i];
    auto& best = out.frontier[pt.p];
    auto it = best.find(pt.method);
    if (it == best.end() || pt.quality < out.points[it->second].quality)
      best[pt.method] = static_cast<int>(i);
  }
  if (progress) progress(static_cast<int>(todo.size()), static_cast<int>(todo.size()), "done");
  return out;
}

std::string FrontierTable(const SweepResult& r, const SweepOptions& o) {
  std::string s =
      absl::StrFormat("%4s  %-8s %-6s %12s %9s %6s %5s  %s\n", "P", "method", "W/A", "quality",
                      "sparsity", "minPO", "cert",
                      o.eval_command.empty() ? "(quality = sum of layer relative errors)"
                                             : "(quality = evaluation metric)");
  for (const auto& [p, methods] : r.frontier)
    for (const auto& method : o.methods) {
      auto it = methods.find(method);
      if (it == methods.end()) {
        absl::StrAppendFormat(&s, "%4d  %-8s %-6s %12s\n", p, method, "-", "infeasible");
        continue;
      }
      const auto& pt = r.points[it->second];
      absl::StrAppendFormat(&s, "%4d  %-8s W%dA%-3d %12.4f %9.3f %6d %5s\n", p, method, pt.m, pt.n,
                            pt.quality, pt.sparsity, pt.min_outer_bits,
                            pt.certified ? "SAFE" : "UNSAFE");
    }
  return s;
}

absl::Status WriteSweepOutputs(const SweepResult& r, const SweepOptions& o,
                               const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  nlohmann::json j = {{"points", nlohmann::json::array()}, {"frontier", nlohmann::json::object()}};
  for (const auto& pt : r.points) j["points"].push_back(pt.ToJson());
  for (const auto& [p, methods] : r.frontier)
    for (const auto& [method, idx] : methods)
      j["frontier"][std::to_string(p)][method] = r.points[idx].ToJson();
  std::ofstream(fs::path(dir) / "sweep.json") << j.dump(1);
  std::ofstream csv(fs::path(dir) / "sweep.csv");
  csv << "method,accumulator_bits,weight_bits,input_bits,quality,error_sum,sparsity,min_outer_"
         "accumulator_bits,certified,frontier\n";
  for (size_t i = 0; i < r.points.size(); ++i) {
    const auto& pt = r.points[i];
    const auto& f = r.frontier.at(pt.p);
    const bool on = f.count(pt.method) && f.at(pt.method) == static_cast<int>(i);
    csv << absl::StrFormat("%s,%d,%d,%d,%.6g,%.6g,%.6g,%d,%d,%d\n", pt.method, pt.p, pt.m, pt.n,
                           pt.quality, pt.error_sum, pt.sparsity, pt.min_outer_bits, pt.certified,
                           on);
  }
  std::vector<Series> series;
  for (const auto& method : o.methods) {
    Series s{method, {}};
    for (const auto& [p, methods] : r.frontier) {
      auto it = methods.find(method);
      if (it != methods.end())
        s.points.push_back({static_cast<double>(p), r.points[it->second].quality});
    }
    series.push_back(s);
  }
  std::ofstream(fs::path(dir) / "pareto.svg") << LineChartSvg(
      "Pareto frontier: best (M, N) per target accumulator", "target accumulator bits P",
      o.eval_command.empty() ? "sum of layer relative errors" : "evaluation metric", series, true);
  // Histograms of the bits needed by the AXE point on the frontier at the tightest P.
  for (const auto& [p, methods] : r.frontier) {
    auto it = methods.find("axe");
    if (it == methods.end()) continue;
    const auto& pt = r.points[it->second];
    // The same (M, N) at the widest P swept is the unconstrained reference (AXE does not bind
    // there).
    const SweepPoint* ref = nullptr;
    for (const auto& q : r.points)
      if (q.method == "axe" && q.m == pt.m && q.n == pt.n && q.p > pt.p && (!ref || q.p > ref->p))
        ref = &q;
    std::vector<HistogramPanel> panels;
    for (const auto& [layer, h] : pt.channel_bits) {
      HistogramPanel panel{layer, h, {}, p};
      if (ref && ref->channel_bits.count(layer)) panel.reference = ref->channel_bits.at(layer);
      panels.push_back(panel);
    }
    std::ofstream(fs::path(dir) / "accumulator_bits.svg") << HistogramGridSvg(
        absl::StrFormat("Accumulator bits each channel needs: AXE W%dA%d at P = %d", pt.m, pt.n, p),
        panels, 5,
        ref ? absl::StrFormat("filled: AXE at P = %d (blue fits, red exceeds the dashed target); "
                              "outlined: the same W%dA%d at P = %d (unconstrained)",
                              p, pt.m, pt.n, ref->p)
            : std::string("filled: AXE (blue fits, red exceeds the dashed target)"));
    break;
  }
  if (!fs::exists(fs::path(dir) / "pareto.svg"))
    return absl::InternalError("could not write plots");
  // PNG copies when a converter is installed (librsvg2-bin); the SVGs are the primary output.
  if (std::system("command -v rsvg-convert >/dev/null 2>&1") == 0) {
    for (const char* name : {"pareto", "accumulator_bits"}) {
      const fs::path svg = fs::path(dir) / (std::string(name) + ".svg");
      if (!fs::exists(svg)) continue;
      const std::string cmd =
          absl::StrCat("rsvg-convert '", svg.string(), "' -o '",
                       (fs::path(dir) / (std::string(name) + ".png")).string(), "'");
      if (std::system(cmd.c_str()) != 0) return absl::InternalError(absl::StrCat("failed: ", cmd));
    }
  }
  return absl::OkStatus();
}

}  // namespace axeq
