// The `axeq` command line: quantize layers with the embedded engine, verify certificates, and
// capture/evaluate a real llama2.c model (stories260K) end to end. Parses flags and wires; the
// work is in client/job.cc, client/llama2c.cc and core/.
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <random>

#include "CLI/CLI.hpp"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "client/job.h"
#include "client/llama2c.h"
#include "client/remote.h"
#include "client/sweep.h"
#include "core/bounds.h"
#include "core/simulate.h"
#include "formats/certificate_json.h"

namespace axeq {
namespace {

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "axeq: error: %s: %s\n", absl::StatusCodeToString(s.code()).c_str(),
               std::string(s.message()).c_str());
  return s.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
}

// One line on stderr (a tty) or a line per finished layer; thread-safe, several layers may be in
// flight at once with the remote engine.
class ProgressBar {
 public:
  explicit ProgressBar(bool enabled) : enabled_(enabled), tty_(isatty(2)) {}
  void Update(int layer, int layers, const std::string& name, double frac) {
    if (!enabled_) return;
    std::lock_guard<std::mutex> l(mu_);
    double& f = frac_[layer];
    const bool finished_now = frac >= 1.0 && f < 1.0;
    f = std::max(f, frac);
    double total = 0;
    int done = 0;
    for (const auto& [i, v] : frac_) total += v, done += v >= 1.0;
    total /= layers;
    if (tty_) {
      const int width = 30, filled = static_cast<int>(total * width);
      std::fprintf(stderr, "\r[%s%s] %5.1f%% %d/%d layers done, %zu in flight  %-50.50s",
                   std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(), 100 * total, done,
                   layers, frac_.size() - done, name.c_str());
      if (done == layers) std::fprintf(stderr, "\n");
    } else if (finished_now) {
      std::fprintf(stderr, "[%3.0f%%] layer %d/%d %s done\n", 100 * total, done, layers, name.c_str());
    }
  }

 private:
  bool enabled_, tty_;
  std::mutex mu_;
  std::map<int, double> frac_;
};

void PrintTable(const std::vector<LayerOutcome>& outs) {
  std::printf("%-30s %11s %-44s %8s %8s %6s %5s %5s %5s %-6s %7s\n", "layer", "C x K", "method", "rel.err",
              "sparsity", "max|q|", "P", "minP", "minPO", "cert", "seconds");
  for (const auto& o : outs) {
    const auto& r = o.result;
    std::printf("%-30s %11s %-44s %8.4f %8.3f %6d %5d %5d %5d %-6s %7.3f\n", o.name.c_str(),
                absl::StrCat(r.codes.rows(), "x", r.codes.cols()).c_str(), r.description.substr(0, 44).c_str(),
                r.report.relative_error, r.report.sparsity, r.report.max_abs_code, r.certificate.accumulator_bits,
                r.report.min_accumulator_bits, r.report.min_outer_accumulator_bits,
                r.certificate.safe ? "SAFE" : "UNSAFE", o.seconds);
  }
}

absl::Status ParseEnum(const std::string& v, const std::map<std::string, int>& m, const char* flag, int* out) {
  auto it = m.find(v);
  if (it == m.end()) {
    std::string allowed;
    for (const auto& [k, _] : m) absl::StrAppend(&allowed, allowed.empty() ? "" : "|", k);
    return absl::InvalidArgumentError(absl::StrCat(flag, " must be one of ", allowed, ", got '", v, "'"));
  }
  *out = it->second;
  return absl::OkStatus();
}

}  // namespace
}  // namespace axeq

int main(int argc, char** argv) {
  using namespace axeq;
  CLI::App app{"axeq: accumulator-aware post-training quantization (GPFQ/OPTQ + AXE) with overflow certificates"};
  app.require_subcommand(1);
  RemoteOptions ro;
  std::string token_file;
  int concurrency = 4;
  app.add_option("--server", ro.address, "HOST:PORT of an axeq-server; without it the embedded engine runs");
  app.add_flag("--tls", ro.tls, "connect with TLS (system roots unless --tls-ca)");
  app.add_option("--tls-ca", ro.tls_ca_file, "PEM roots to verify the server");
  app.add_option("--tls-cert", ro.tls_cert_file, "client certificate (mTLS)");
  app.add_option("--tls-key", ro.tls_key_file, "client key (mTLS)");
  app.add_option("--tls-server-name", ro.tls_server_name, "name to verify in the server certificate");
  app.add_option("--token", ro.token, "bearer token");
  app.add_option("--token-file", token_file, "file holding the bearer token");
  app.add_option("--deadline-seconds", ro.deadline_seconds, "per-layer deadline")->capture_default_str();
  app.add_option("--retries", ro.max_attempts, "attempts on UNAVAILABLE / RESOURCE_EXHAUSTED")->capture_default_str();
  app.add_option("--concurrency", concurrency, "layers in flight at once (remote)")->capture_default_str();
  auto connect = [&]() -> absl::StatusOr<std::unique_ptr<RemoteClient>> {
    if (ro.address.empty()) return absl::InvalidArgumentError("this command needs --server HOST:PORT");
    if (!token_file.empty()) {
      std::ifstream in(token_file);
      if (!in || !(in >> ro.token)) return absl::NotFoundError(absl::StrCat("cannot read a token from ", token_file));
    }
    return RemoteClient::Connect(ro);
  };

  // quantize
  auto* q = app.add_subcommand("quantize", "Quantize the linear layers of a safetensors file (embedded engine)");
  std::string model_path, cal_path, out_path, algorithm = "optq", variant = "axe", alphabet = "narrow",
              precision = "float32", optq_error = "original", act_range = "minmax", layers_csv;
  int weight_bits = 4, act_bits = 8, acc_bits = 32, tile = 0, group = 0, block = 128, threads = 0;
  bool no_axe = false, signed_inputs = false, json = false, quiet = false, no_act_order = false,
       no_bias_correction = false, twos = false;
  double damping = 0.01, pct_low = 0.001, pct_high = 99.999;
  q->add_option("--model", model_path, "LAYERS.safetensors: <layer>.weight [C, K] (+ <layer>.bias)")->required();
  q->add_option("--calibration", cal_path, "CAL.safetensors: <layer>.inputs [D, K] (+ <layer>.quant_inputs)")->required();
  q->add_option("--out", out_path, "RESULT.safetensors to write")->required();
  q->add_option("--weight-bits", weight_bits, "M, 2..8")->capture_default_str();
  q->add_option("--act-bits", act_bits, "N, 2..16")->capture_default_str();
  q->add_option("--acc-bits", acc_bits, "P (P_I of each tile when --tile is set), 2..64")->capture_default_str();
  q->add_option("--tile", tile, "T inputs per inner accumulator (original input order); 0 = monolithic")->capture_default_str();
  q->add_option("--algorithm", algorithm, "optq|gpfq")->capture_default_str();
  q->add_flag("--no-axe", no_axe, "run the base algorithm without accumulator constraints");
  q->add_option("--variant", variant, "axe|rtn|rtz|hco|ep-init|naive (rtn = axe)")->capture_default_str();
  q->add_option("--group-size", group, "per-group weight scales of G inputs; 0 = per channel")->capture_default_str();
  q->add_option("--alphabet", alphabet, "narrow [-(2^(M-1)-1), 2^(M-1)-1] | full (adds -2^(M-1))")->capture_default_str();
  q->add_flag("--signed-inputs", signed_inputs, "signed symmetric activations instead of unsigned with zero-point");
  q->add_option("--act-range", act_range, "minmax|percentile: how the per-tensor activation range is calibrated")->capture_default_str();
  q->add_option("--act-percentile-low", pct_low, "low percentile for --act-range percentile")->capture_default_str();
  q->add_option("--act-percentile-high", pct_high, "high percentile for --act-range percentile")->capture_default_str();
  q->add_flag("--twos-complement-acc", twos, "the accumulator may hold -2^(P-1) (default: symmetric range)");
  q->add_option("--damping", damping, "OPTQ dampening as a fraction of mean diag(H)")->capture_default_str();
  q->add_option("--block-size", block, "lazy-batch block width")->capture_default_str();
  q->add_option("--precision", precision, "float32|float64")->capture_default_str();
  q->add_option("--optq-error", optq_error, "original (Algorithm 2) | constrained (Brevitas)")->capture_default_str();
  q->add_flag("--no-act-order", no_act_order, "quantize inputs in their original order");
  q->add_flag("--no-bias-correction", no_bias_correction, "keep biases as they are");
  bool no_report = false;
  q->add_flag("--no-quality-report", no_report, "skip the relative errors (saves 2-4 GEMMs per layer)");
  q->add_option("--layers", layers_csv, "comma-separated layer names (default: all)");
  q->add_option("--threads", threads, "worker threads (0 = hardware threads)")->capture_default_str();
  q->add_flag("--json", json, "print a machine-readable JSON report on stdout");
  q->add_flag("--quiet", quiet, "no progress bar");

  // verify
  auto* v = app.add_subcommand("verify", "Re-check every certificate in a RESULT.safetensors from the codes alone");
  std::string verify_path;
  bool verify_json = false;
  v->add_option("result", verify_path, "RESULT.safetensors")->required();
  v->add_flag("--json", verify_json, "JSON output");

  // llama2c-capture
  auto* cap = app.add_subcommand("llama2c-capture", "Run a llama2.c checkpoint on sampled text and write its linear layers and their calibration inputs");
  std::string ckpt, cap_model, cap_cal, vocab_path;
  int sequences = 16, length = 128;
  uint64_t seed = 0;
  cap->add_option("--checkpoint", ckpt, "model .bin (llama2.c v0)")->required();
  cap->add_option("--out-model", cap_model, "LAYERS.safetensors to write")->required();
  cap->add_option("--out-calibration", cap_cal, "CAL.safetensors to write")->required();
  cap->add_option("--sequences", sequences, "calibration sequences sampled from the model")->capture_default_str();
  cap->add_option("--length", length, "tokens per sequence")->capture_default_str();
  cap->add_option("--seed", seed, "sampling seed")->capture_default_str();
  cap->add_option("--tokenizer", vocab_path, "tok512.bin: print the greedy story as a loader check");

  // llama2c-eval
  auto* ev = app.add_subcommand("llama2c-eval", "Perplexity of a llama2.c model, float and with a RESULT's quantized layers");
  std::string ev_result;
  int ev_sequences = 8;
  uint64_t ev_seed = 1000;
  ev->add_option("--checkpoint", ckpt, "model .bin")->required();
  ev->add_option("--result", ev_result, "RESULT.safetensors from axeq quantize");
  ev->add_option("--sequences", ev_sequences, "held-out sequences sampled with a seed disjoint from calibration")->capture_default_str();
  ev->add_option("--length", length, "tokens per sequence")->capture_default_str();
  ev->add_option("--seed", ev_seed, "sampling seed (must differ from the capture seed)")->capture_default_str();

  auto* sim = app.add_subcommand("simulate", "Run quantized layers in integer arithmetic with a P-bit accumulator and count overflows");
  std::string sim_result, sim_cal;
  int sim_bits = 0, sim_outer = -1;
  int64_t sim_tile = -1;
  bool sim_saturate = false, sim_symmetric = false, sim_fail = false, sim_json = false;
  sim->add_option("result", sim_result, "RESULT.safetensors")->required();
  sim->add_option("--calibration", sim_cal, "CAL.safetensors with <layer>.inputs (float X)")->required();
  sim->add_option("--acc-bits", sim_bits, "P (P_I per tile); default: each certificate's");
  sim->add_option("--tile", sim_tile, "T; default: each certificate's (0 = monolithic)");
  sim->add_option("--outer-bits", sim_outer, "P_O of the tile-sum register; default: the certificate's Eq. 21 value (0 = wide)");
  sim->add_flag("--saturate", sim_saturate, "saturating registers (default: two's-complement wrap)");
  sim->add_flag("--symmetric", sim_symmetric, "registers hold [-(2^(P-1)-1), 2^(P-1)-1] (sign-magnitude, as the paper)");
  sim->add_flag("--fail-on-overflow", sim_fail, "exit 1 if any overflow happens");
  sim->add_flag("--json", sim_json, "JSON output");

  auto* sw = app.add_subcommand("sweep", "Sweep accumulator widths and bit widths; report the Pareto frontier and plots");
  std::string sw_model, sw_cal, sw_p = "16,18,20,24,32", sw_m = "3-8", sw_n = "3-8", sw_methods = "axe,naive,ep-init",
              sw_alg = "optq", sw_cache = ".axeq-sweep-cache", sw_out = "sweep", sw_eval, sw_layers;
  int sw_tile = 0;
  bool sw_any_n = false, sw_signed = false;
  sw->add_option("--model", sw_model, "LAYERS.safetensors")->required();
  sw->add_option("--calibration", sw_cal, "CAL.safetensors")->required();
  sw->add_option("--acc-bits", sw_p, "target P values: list or range, e.g. 16-24,32")->capture_default_str();
  sw->add_option("--weight-bits", sw_m, "M values")->capture_default_str();
  sw->add_option("--act-bits", sw_n, "N values")->capture_default_str();
  sw->add_flag("--allow-act-below-weight", sw_any_n, "also try N < M (the paper uses N >= M)");
  sw->add_option("--methods", sw_methods, "axe,naive,ep-init,rtz,hco")->capture_default_str();
  sw->add_option("--algorithm", sw_alg, "optq|gpfq")->capture_default_str();
  sw->add_option("--tile", sw_tile, "T (0 = monolithic)")->capture_default_str();
  sw->add_flag("--signed-inputs", sw_signed, "signed activations");
  sw->add_option("--cache", sw_cache, "cache of finished points (resume)")->capture_default_str();
  sw->add_option("--out-dir", sw_out, "sweep.json, sweep.csv, pareto.svg, accumulator_bits.svg")->capture_default_str();
  sw->add_option("--eval-command", sw_eval, "model metric per point, e.g. \"axeq llama2c-eval --checkpoint m.bin --result {result}\"");
  sw->add_option("--layers", sw_layers, "comma-separated layer names (default: all)");

  auto* jobs_cmd = app.add_subcommand("jobs", "List your jobs on the server");
  auto* watch_cmd = app.add_subcommand("watch", "Follow a job by id until it ends");
  auto* fetch_cmd = app.add_subcommand("fetch", "Fetch a finished job's result into a RESULT.safetensors");
  auto* cancel_cmd = app.add_subcommand("cancel", "Cancel a job by id");
  std::string job_id, fetch_out;
  watch_cmd->add_option("id", job_id, "job id")->required();
  fetch_cmd->add_option("id", job_id, "job id")->required();
  fetch_cmd->add_option("--out", fetch_out, "RESULT.safetensors to write")->required();
  cancel_cmd->add_option("id", job_id, "job id")->required();

  CLI11_PARSE(app, argc, argv);

  if (jobs_cmd->parsed() || watch_cmd->parsed() || fetch_cmd->parsed() || cancel_cmd->parsed()) {
    auto client = connect();
    if (!client.ok()) return Fail(client.status());
    if (jobs_cmd->parsed()) {
      auto list = (*client)->List();
      if (!list.ok()) return Fail(list.status());
      std::printf("%-34s %-24s %-32s %s\n", "job", "state", "layer", "created (unix ms)");
      for (const auto& j : *list)
        std::printf("%-34s %-24s %-32s %lld\n", j.job_id().c_str(), v1::JobState_Name(j.state()).c_str(),
                    j.layer_name().c_str(), static_cast<long long>(j.created_unix_ms()));
      return 0;
    }
    if (cancel_cmd->parsed()) {
      auto st = (*client)->Cancel(job_id);
      if (!st.ok()) return Fail(st.status());
      std::printf("%s: %s\n", job_id.c_str(), v1::JobState_Name(*st).c_str());
      return 0;
    }
    ProgressBar bar(true);
    auto r = (*client)->Fetch(job_id, [&](double f, const std::string&) { bar.Update(0, 1, job_id, std::min(f, 0.999)); });
    if (!r.ok()) return Fail(r.status());
    bar.Update(0, 1, job_id, 1.0);
    LayerOutcome o;
    o.name = r->layer_name.empty() ? job_id : r->layer_name;
    o.job_id = r->job_id;
    o.result = std::move(r->result);
    o.activations = r->activations;
    o.samples = r->samples;
    o.seconds = r->seconds;
    PrintTable({o});
    if (fetch_cmd->parsed()) {
      JobOptions jo;
      if (auto s = WriteSafetensors(fetch_out, ResultsToFile({o}, jo)); !s.ok()) return Fail(s);
      std::printf("wrote %s\n", fetch_out.c_str());
    }
    return 0;
  }

  if (q->parsed()) {
    JobOptions jo;
    LayerOptions& lo = jo.layer;
    int alg, var, alpha, prec, form, range;
    for (auto s : {ParseEnum(algorithm, {{"optq", 0}, {"gpfq", 1}}, "--algorithm", &alg),
                   ParseEnum(variant, {{"axe", 0}, {"rtn", 0}, {"rtz", 1}, {"hco", 2}, {"ep-init", 3}, {"naive", 4}}, "--variant", &var),
                   ParseEnum(alphabet, {{"narrow", 0}, {"full", 1}}, "--alphabet", &alpha),
                   ParseEnum(precision, {{"float32", 0}, {"float64", 1}}, "--precision", &prec),
                   ParseEnum(optq_error, {{"original", 0}, {"constrained", 1}}, "--optq-error", &form),
                   ParseEnum(act_range, {{"minmax", 0}, {"percentile", 1}}, "--act-range", &range)})
      if (!s.ok()) return Fail(s);
    lo.algorithm = alg ? Algorithm::kGpfq : Algorithm::kOptq;
    lo.method = var == 3 ? Method::kEpInit : var == 4 ? Method::kNaive : Method::kAxe;
    if (var == 1) lo.rounding = Rounding::kToZero;
    if (var == 2) lo.soft_threshold = false;
    if (no_axe) lo.method = Method::kBase;
    lo.weights.bits = weight_bits;
    lo.weights.alphabet = alpha ? WeightAlphabet::kFull : WeightAlphabet::kNarrow;
    lo.weights.group_size = group;
    lo.inputs.bits = act_bits;
    lo.inputs.is_signed = signed_inputs;
    lo.accumulator.bits = acc_bits;
    lo.accumulator.tile_size = tile;
    lo.accumulator.twos_complement = twos;
    lo.damping = damping;
    lo.block_size = block;
    lo.precision = prec ? Precision::kFloat64 : Precision::kFloat32;
    lo.optq_error = form ? OptqErrorForm::kConstrained : OptqErrorForm::kOriginal;
    lo.act_order = !no_act_order;
    lo.bias_correction = !no_bias_correction;
    lo.quality_report = !no_report;
    if (range == 1) jo.activation_calibration = {pct_low, pct_high};
    if (!layers_csv.empty()) jo.layers = absl::StrSplit(layers_csv, ',', absl::SkipEmpty());
    jo.threads = threads;
    auto model = ReadSafetensors(model_path);
    if (!model.ok()) return Fail(model.status());
    auto cal = ReadSafetensors(cal_path);
    if (!cal.ok()) return Fail(cal.status());
    ProgressBar bar(!quiet);
    std::unique_ptr<Engine> engine;
    if (!ro.address.empty()) {
      auto client = connect();
      if (!client.ok()) return Fail(client.status());
      engine = MakeRemoteEngine(std::move(client).value(), concurrency);
    }
    auto outs = RunQuantizeJob(*model, *cal, jo, [&](int l, int n, const std::string& name, double f) { bar.Update(l, n, name, f); },
                               engine.get());
    if (!outs.ok()) return Fail(outs.status());
    if (auto s = WriteSafetensors(out_path, ResultsToFile(*outs, jo)); !s.ok()) return Fail(s);
    bool all_safe = true;
    for (const auto& o : *outs) all_safe = all_safe && o.result.certificate.safe;
    if (json) {
      nlohmann::json j = {{"result", out_path}, {"all_certified", all_safe}, {"layers", nlohmann::json::array()}};
      for (const auto& o : *outs) {
        nlohmann::json r = ReportToJson(o);
        r["certificate"] = CertificateToJson(o.result.certificate);
        r["certificate"].erase("channels");
        j["layers"].push_back(r);
      }
      std::cout << j.dump(2) << std::endl;
    } else {
      PrintTable(*outs);
      std::printf("wrote %s: %zu layers, certificates: %s\n", out_path.c_str(), outs->size(),
                  all_safe ? "all SAFE" : "some UNSAFE (the codes exceed the target accumulator; expected for --no-axe)");
    }
    return 0;
  }

  if (sw->parsed()) {
    auto parse_list = [](const std::string& text, std::vector<int>* out) -> absl::Status {
      out->clear();
      for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
        std::vector<std::string> r = absl::StrSplit(part, '-');
        int a, b;
        if (r.size() == 1 && absl::SimpleAtoi(r[0], &a)) out->push_back(a);
        else if (r.size() == 2 && absl::SimpleAtoi(r[0], &a) && absl::SimpleAtoi(r[1], &b) && a <= b)
          for (int v = a; v <= b; ++v) out->push_back(v);
        else return absl::InvalidArgumentError(absl::StrCat("cannot parse '", std::string(part), "' as a number or range"));
      }
      if (out->empty()) return absl::InvalidArgumentError(absl::StrCat("empty list '", text, "'"));
      return absl::OkStatus();
    };
    SweepOptions so;
    for (auto st : {parse_list(sw_p, &so.accumulator_bits), parse_list(sw_m, &so.weight_bits), parse_list(sw_n, &so.input_bits)})
      if (!st.ok()) return Fail(st);
    so.methods = absl::StrSplit(sw_methods, ',', absl::SkipEmpty());
    so.allow_inputs_below_weights = sw_any_n;
    so.job.layer.algorithm = sw_alg == "gpfq" ? Algorithm::kGpfq : Algorithm::kOptq;
    so.job.layer.accumulator.tile_size = sw_tile;
    so.job.layer.inputs.is_signed = sw_signed;
    if (!sw_layers.empty()) so.job.layers = absl::StrSplit(sw_layers, ',', absl::SkipEmpty());
    so.cache_dir = sw_cache;
    so.eval_command = sw_eval;
    std::unique_ptr<Engine> engine = MakeEmbeddedEngine(0);
    if (!ro.address.empty()) {
      auto client = connect();
      if (!client.ok()) return Fail(client.status());
      engine = MakeRemoteEngine(std::move(client).value(), concurrency);
    }
    const bool tty = isatty(2);
    auto r = RunSweep(sw_model, sw_cal, so, engine.get(), [&](int done, int total, const std::string& what) {
      if (tty) std::fprintf(stderr, "\r[%d/%d] %-40s", done, total, what.c_str());
      if (tty && done == total) std::fprintf(stderr, "\n");
    });
    if (!r.ok()) return Fail(r.status());
    int cached = 0;
    for (const auto& pt : r->points) cached += pt.cached;
    std::printf("%s", FrontierTable(*r, so).c_str());
    if (auto st = WriteSweepOutputs(*r, so, sw_out); !st.ok()) return Fail(st);
    std::printf("%zu points (%d from the cache %s); wrote %s/{sweep.json,sweep.csv,pareto.svg,accumulator_bits.svg} (+ .png with rsvg-convert)\n",
                r->points.size(), cached, sw_cache.c_str(), sw_out.c_str());
    return 0;
  }

  if (sim->parsed()) {
    auto f = ReadSafetensors(sim_result);
    if (!f.ok()) return Fail(f.status());
    auto cal = ReadSafetensors(sim_cal);
    if (!cal.ok()) return Fail(cal.status());
    nlohmann::json out = nlohmann::json::array();
    bool any = false;
    if (!sim_json)
      std::printf("%-30s %4s %5s %4s %12s %12s %10s %12s %12s\n", "layer", "P", "T", "P_O", "dots", "overflowing",
                  "wrong", "rel.error", "worst-case");
    for (const auto& [key, text] : f->metadata) {
      if (key.size() < 12 || key.compare(key.size() - 12, 12, ".certificate") != 0) continue;
      const std::string name = key.substr(0, key.size() - 12);
      auto cert = ParseCertificate(text);
      if (!cert.ok()) return Fail(cert.status());
      auto codes = TensorToCodes(f->tensors[name + ".qweight"], name + ".qweight");
      if (!codes.ok()) return Fail(codes.status());
      auto it = cal->tensors.find(name + ".inputs");
      if (it == cal->tensors.end()) return Fail(absl::NotFoundError(absl::StrCat(sim_cal, " has no ", name, ".inputs")));
      auto x = TensorToMatrix(it->second, name + ".inputs");
      if (!x.ok()) return Fail(x.status());
      ActivationQuantizer act;
      act.spec.bits = cert->input_bits;
      act.spec.is_signed = cert->inputs_signed;
      std::memcpy(&act.scale, f->tensors[name + ".input_scale"].data.data(), 4);
      std::memcpy(&act.zero_point, f->tensors[name + ".input_zero_point"].data.data(), 4);
      DatapathSpec spec;
      spec.accumulator_bits = sim_bits > 0 ? sim_bits : cert->accumulator_bits;
      spec.tile_size = sim_tile >= 0 ? sim_tile : cert->tile_size;
      spec.outer_bits = sim_outer >= 0 ? sim_outer
                                       : OuterAccumulatorBits(spec.accumulator_bits, codes->cols(), spec.tile_size);
      spec.mode = sim_saturate ? OverflowMode::kSaturate : OverflowMode::kWrap;
      spec.twos_complement = !sim_symmetric;
      auto s = SimulateDatapath(*codes, InputCodes(*x, act), spec);
      if (!s.ok()) return Fail(s.status());
      InputSpec in = act.spec;
      auto w = SimulateWorstCase(*codes, in, spec);
      if (!w.ok()) return Fail(w.status());
      any = any || s->overflow_events > 0 || w->overflow_events > 0;
      if (sim_json) {
        out.push_back({{"layer", name}, {"accumulator_bits", spec.accumulator_bits}, {"tile_size", spec.tile_size},
                       {"outer_bits", spec.outer_bits}, {"dot_products", s->dot_products},
                       {"overflowing_dot_products", s->overflowing_dot_products}, {"overflow_events", s->overflow_events},
                       {"wrong_outputs", s->wrong_outputs}, {"relative_error", s->relative_error},
                       {"worst_case_overflowing", w->overflowing_dot_products}, {"worst_case_wrong", w->wrong_outputs}});
      } else {
        std::printf("%-30s %4d %5lld %4d %12lld %12lld %10lld %12.3g %6lld/%-5lld\n", name.c_str(), spec.accumulator_bits,
                    static_cast<long long>(spec.tile_size), spec.outer_bits, static_cast<long long>(s->dot_products),
                    static_cast<long long>(s->overflowing_dot_products), static_cast<long long>(s->wrong_outputs),
                    s->relative_error, static_cast<long long>(w->overflowing_dot_products),
                    static_cast<long long>(w->dot_products));
      }
    }
    if (sim_json) std::cout << out.dump(2) << std::endl;
    else std::printf("%s\n", any ? "OVERFLOWS found (the datapath is too narrow for these codes)" : "no overflow on calibration or worst-case inputs");
    return sim_fail && any ? 1 : 0;
  }

  if (v->parsed()) {
    auto f = ReadSafetensors(verify_path);
    if (!f.ok()) return Fail(f.status());
    auto res = VerifyResultFile(*f);
    if (!res.ok()) return Fail(res.status());
    bool ok = true;
    nlohmann::json j = nlohmann::json::array();
    for (const auto& r : *res) {
      ok = ok && r.consistent && r.safe;
      if (verify_json) {
        j.push_back({{"layer", r.name}, {"consistent", r.consistent}, {"safe", r.safe}, {"problems", r.problems}});
      } else {
        std::printf("%-32s %-12s %-7s P=%d T=%lld minP=%d minPO=%d\n", r.name.c_str(),
                    r.consistent ? "CONSISTENT" : "TAMPERED", r.safe ? "SAFE" : "UNSAFE", r.accumulator_bits,
                    static_cast<long long>(r.tile_size), r.min_accumulator_bits, r.min_outer_accumulator_bits);
        for (const auto& p : r.problems) std::printf("    %s\n", p.c_str());
      }
    }
    if (verify_json) std::cout << j.dump(2) << std::endl;
    else std::printf("%s: %zu certificates, %s\n", verify_path.c_str(), res->size(), ok ? "all verified SAFE" : "NOT all verified safe");
    return ok ? 0 : 1;
  }

  if (cap->parsed()) {
    auto m = LoadLlama2c(ckpt);
    if (!m.ok()) return Fail(m.status());
    if (!vocab_path.empty()) {
      auto vocab = LoadLlama2cVocab(vocab_path, m->config.vocab_size);
      if (!vocab.ok()) return Fail(vocab.status());
      std::mt19937_64 g(0);
      std::printf("greedy sample: %s\n", DecodeTokens(*vocab, Llama2cGenerate(*m, 40, 0.0f, g)).c_str());
    }
    std::mt19937_64 rng(seed);
    std::map<std::string, std::vector<MatrixXf>> captured;
    int64_t tokens = 0;
    for (int s = 0; s < sequences; ++s) {
      const std::vector<int> seq = Llama2cGenerate(*m, length, 1.0f, rng);
      tokens += static_cast<int64_t>(seq.size());
      Llama2cForward(*m, seq, nullptr, [&](const std::string& n, const MatrixXf& x) { captured[n].push_back(x); });
    }
    SafetensorsFile layers, cal;
    for (const auto& [name, w] : m->linears) layers.tensors[name + ".weight"] = MatrixToTensor(w);
    for (const auto& [name, xs] : captured) {
      int64_t rows = 0;
      for (const auto& x : xs) rows += x.rows();
      MatrixXf all(rows, xs[0].cols());
      int64_t r = 0;
      for (const auto& x : xs) all.middleRows(r, x.rows()) = x, r += x.rows();
      cal.tensors[name + ".inputs"] = MatrixToTensor(all);
    }
    layers.metadata["source"] = ckpt;
    cal.metadata["source"] = absl::StrCat(sequences, " sequences sampled from the model at temperature 1, seed ", seed);
    if (auto s = WriteSafetensors(cap_model, layers); !s.ok()) return Fail(s);
    if (auto s = WriteSafetensors(cap_cal, cal); !s.ok()) return Fail(s);
    std::printf("captured %zu linear layers over %lld calibration tokens -> %s, %s\n", m->linears.size(),
                static_cast<long long>(tokens), cap_model.c_str(), cap_cal.c_str());
    return 0;
  }

  if (ev->parsed()) {
    auto m = LoadLlama2c(ckpt);
    if (!m.ok()) return Fail(m.status());
    std::mt19937_64 rng(ev_seed);
    std::vector<std::vector<int>> seqs;
    for (int s = 0; s < ev_sequences; ++s) seqs.push_back(Llama2cGenerate(*m, length, 1.0f, rng));
    const double float_nll = MeanNll(*m, seqs);
    std::printf("float model:      perplexity %.3f on %d held-out sampled sequences\n", std::exp(float_nll), ev_sequences);
    if (!ev_result.empty()) {
      auto f = ReadSafetensors(ev_result);
      if (!f.ok()) return Fail(f.status());
      int group = 0;
      if (f->metadata.count("axeq.group_size") && !absl::SimpleAtoi(f->metadata["axeq.group_size"], &group)) group = 0;
      std::map<std::string, QuantizedLinear> ql;
      for (const auto& name : m->LinearNames()) {
        if (!f->tensors.count(name + ".qweight")) continue;
        for (const char* suffix : {".scales", ".input_scale", ".input_zero_point"}) {
          auto it = f->tensors.find(name + suffix);
          const size_t need = std::string(suffix) == ".scales" ? 1 : 4;
          if (it == f->tensors.end() || it->second.data.size() < need)
            return Fail(absl::InvalidArgumentError(absl::StrCat(ev_result, ": layer ", name, " lacks a valid ", name, suffix)));
        }
        auto codes = TensorToCodes(f->tensors.at(name + ".qweight"), name);
        auto scales = TensorToMatrix(f->tensors.at(name + ".scales"), name + ".scales");
        if (!codes.ok() || !scales.ok()) return Fail(codes.ok() ? scales.status() : codes.status());
        if (scales->rows() != codes->rows())
          return Fail(absl::InvalidArgumentError(absl::StrCat(name, ".scales has ", scales->rows(), " rows, codes have ", codes->rows())));
        auto rep = nlohmann::json::parse(f->metadata[name + ".report"], nullptr, false);
        if (rep.is_discarded() || !rep.is_object()) rep = nlohmann::json::object();
        QuantizedLinear qlin;
        qlin.weight = Dequantize(*codes, *scales, group);
        ActivationQuantizer act;
        act.spec.bits = rep.value("input_bits", 8);
        float scale;
        int32_t zp;
        std::memcpy(&scale, f->tensors.at(name + ".input_scale").data.data(), 4);
        std::memcpy(&zp, f->tensors.at(name + ".input_zero_point").data.data(), 4);
        act.scale = scale;
        act.zero_point = zp;
        act.spec.is_signed = rep.value("input_signed", false);
        qlin.input = act;
        ql[name] = std::move(qlin);
      }
      const double qnll = MeanNll(*m, seqs, &ql);
      std::printf("quantized model:  perplexity %.3f (%zu linear layers replaced; %+.2f%%)\n", std::exp(qnll), ql.size(),
                  100 * (std::exp(qnll) / std::exp(float_nll) - 1));
    }
    return 0;
  }
  return 0;
}
