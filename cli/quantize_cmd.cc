// `axeq quantize`: every linear layer of a LAYERS file with its calibration inputs, through the
// embedded engine or a server, into a RESULT file; each certificate is re-checked here by the
// independent verifier against the datapath that was asked for (never trusting the engine).
#include <iostream>
#include <memory>

#include "absl/strings/str_split.h"
#include "cli/commands.h"
#include "client/job.h"
#include "core/verify.h"
#include "formats/certificate_json.h"
#include "formats/result_file.h"

namespace axeq::cli {
namespace {

struct QuantizeFlags {
  std::string model, calibration, out, algorithm = "optq", variant = "axe", alphabet = "narrow",
                                       precision = "float32", optq_error = "original",
                                       act_range = "auto", layers;
  int weight_bits = 4, act_bits = 8, acc_bits = 32, tile = 0, group = 0, block = 128, threads = 0;
  bool no_axe = false, signed_inputs = false, json = false, quiet = false, no_act_order = false,
       no_bias_correction = false, twos = false, no_report = false;
  double damping = 0.01, pct_low = 0.001, pct_high = 99.999;
};

void AddFlags(CLI::App* q, QuantizeFlags* f) {
  q->add_option("--model", f->model, "LAYERS.safetensors: <layer>.weight [C, K] (+ <layer>.bias)")
      ->required();
  q->add_option("--calibration", f->calibration,
                "CAL.safetensors: <layer>.inputs [D, K] (+ <layer>.quant_inputs)")
      ->required();
  q->add_option("--out", f->out, "RESULT.safetensors to write")->required();
  q->add_option("--weight-bits", f->weight_bits, "M, 2..8")->capture_default_str();
  q->add_option("--act-bits", f->act_bits, "N, 2..16")->capture_default_str();
  q->add_option("--acc-bits", f->acc_bits, "P (P_I of each tile when --tile is set), 2..64")
      ->capture_default_str();
  q->add_option("--tile", f->tile,
                "T inputs per inner accumulator (original input order); 0 = monolithic")
      ->capture_default_str();
  q->add_option("--algorithm", f->algorithm, "optq|gpfq")->capture_default_str();
  q->add_flag("--no-axe", f->no_axe, "run the base algorithm without accumulator constraints");
  q->add_option("--variant", f->variant, "axe|rtn|rtz|hco|ep-init|naive (rtn = axe)")
      ->capture_default_str();
  q->add_option("--group-size", f->group, "per-group weight scales of G inputs; 0 = per channel")
      ->capture_default_str();
  q->add_option("--alphabet", f->alphabet,
                "narrow [-(2^(M-1)-1), 2^(M-1)-1] | full (adds -2^(M-1))")
      ->capture_default_str();
  q->add_flag("--signed-inputs", f->signed_inputs,
              "signed symmetric activations instead of unsigned with zero-point");
  q->add_option(
       "--act-range", f->act_range,
       "auto|output|mse|minmax|percentile: per-tensor activation range. auto: quantizes the layer "
       "with the output, minmax and percentile ranges and keeps the least output error (up to 3x "
       "the work); output: the clipping range with the least output error of the float layer; "
       "mse: the least quantization error of the inputs themselves")
      ->capture_default_str();
  q->add_option("--act-percentile-low", f->pct_low,
                "low percentile (percentile, and mse's candidate)")
      ->capture_default_str();
  q->add_option("--act-percentile-high", f->pct_high, "high percentile")->capture_default_str();
  q->add_flag("--twos-complement-acc", f->twos,
              "the accumulator may hold -2^(P-1) (default: symmetric range)");
  q->add_option("--damping", f->damping, "OPTQ dampening as a fraction of mean diag(H)")
      ->capture_default_str();
  q->add_option("--block-size", f->block, "lazy-batch block width")->capture_default_str();
  q->add_option("--precision", f->precision, "float32|float64")->capture_default_str();
  q->add_option("--optq-error", f->optq_error, "original (Algorithm 2) | constrained (Brevitas)")
      ->capture_default_str();
  q->add_flag("--no-act-order", f->no_act_order, "quantize inputs in their original order");
  q->add_flag("--no-bias-correction", f->no_bias_correction, "keep biases as they are");
  q->add_flag("--no-quality-report", f->no_report,
              "skip the relative errors (saves 2-4 GEMMs per layer)");
  q->add_option("--layers", f->layers, "comma-separated layer names (default: all)");
  q->add_option("--threads", f->threads, "worker threads (0 = hardware threads)")
      ->capture_default_str();
  q->add_flag("--json", f->json, "print a machine-readable JSON report on stdout");
  q->add_flag("--quiet", f->quiet, "no progress bar");
}

absl::StatusOr<JobOptions> ToJobOptions(const QuantizeFlags& f) {
  JobOptions jo;
  LayerOptions& lo = jo.layer;
  int alg, var, alpha, prec, form, range;
  for (auto s :
       {ParseChoice(f.algorithm, {{"optq", 0}, {"gpfq", 1}}, "--algorithm", &alg),
        ParseChoice(f.variant,
                    {{"axe", 0}, {"rtn", 0}, {"rtz", 1}, {"hco", 2}, {"ep-init", 3}, {"naive", 4}},
                    "--variant", &var),
        ParseChoice(f.alphabet, {{"narrow", 0}, {"full", 1}}, "--alphabet", &alpha),
        ParseChoice(f.precision, {{"float32", 0}, {"float64", 1}}, "--precision", &prec),
        ParseChoice(f.optq_error, {{"original", 0}, {"constrained", 1}}, "--optq-error", &form),
        ParseChoice(f.act_range,
                    {{"minmax", 0}, {"percentile", 1}, {"mse", 2}, {"output", 3}, {"auto", 4}},
                    "--act-range", &range)})
    if (!s.ok()) return s;
  lo.algorithm = alg ? Algorithm::kGpfq : Algorithm::kOptq;
  lo.method = var == 3 ? Method::kEpInit : var == 4 ? Method::kNaive : Method::kAxe;
  if (var == 1) lo.rounding = Rounding::kToZero;
  if (var == 2) lo.soft_threshold = false;
  if (f.no_axe) lo.method = Method::kBase;
  lo.weights.bits = f.weight_bits;
  lo.weights.alphabet = alpha ? WeightAlphabet::kFull : WeightAlphabet::kNarrow;
  lo.weights.group_size = f.group;
  lo.inputs.bits = f.act_bits;
  lo.inputs.is_signed = f.signed_inputs;
  lo.accumulator = {f.acc_bits, f.tile, f.twos};
  lo.damping = f.damping;
  lo.block_size = f.block;
  lo.precision = prec ? Precision::kFloat64 : Precision::kFloat32;
  lo.optq_error = form ? OptqErrorForm::kConstrained : OptqErrorForm::kOriginal;
  lo.act_order = !f.no_act_order;
  lo.bias_correction = !f.no_bias_correction;
  lo.quality_report = !f.no_report;
  jo.activation_calibration.method = static_cast<ActivationRange>(range);
  jo.activation_calibration.low_percentile = f.pct_low;
  jo.activation_calibration.high_percentile = f.pct_high;
  if (!f.layers.empty()) jo.layers = absl::StrSplit(f.layers, ',', absl::SkipEmpty());
  jo.threads = f.threads;
  if (auto s = lo.Validate(); !s.ok()) return s;
  return jo;
}

// Re-checks each certificate against what was asked for (P, T, N, signedness; M unless naive).
bool VerifyLocally(const std::vector<QuantizedLayer>& layers, const LayerOptions& asked) {
  VerifyExpectations expect;
  expect.accumulator_bits = asked.accumulator.bits;
  expect.tile_size = asked.accumulator.tile_size;
  expect.inputs_signed = asked.inputs.is_signed;
  if (asked.method != Method::kNaive) {
    expect.input_bits = asked.inputs.bits;
    expect.weight_bits = asked.weights.bits;
  }
  bool all = true;
  for (const auto& l : layers) {
    const Verification v = VerifyCertificate(l.codes, l.certificate, expect);
    if (!v.consistent || !v.as_expected) {
      all = false;
      std::fprintf(stderr, "axeq: layer %s: the certificate does not verify locally:\n",
                   l.name.c_str());
      for (const auto& p : v.problems) std::fprintf(stderr, "    %s\n", p.c_str());
    }
  }
  return all;
}

int Run(const QuantizeFlags& f, const RemoteFlags& remote) {
  auto jo = ToJobOptions(f);
  if (!jo.ok()) return Fail(jo.status());
  auto model = ReadSafetensors(f.model);
  if (!model.ok()) return Fail(model.status());
  auto cal = ReadSafetensors(f.calibration);
  if (!cal.ok()) return Fail(cal.status());
  ProgressBar bar(!f.quiet);
  std::unique_ptr<Engine> engine;
  if (remote.remote()) {
    auto client = remote.Connect();
    if (!client.ok()) return Fail(client.status());
    engine = MakeRemoteEngine(std::move(client).value(), remote.concurrency);
  }
  auto layers = RunQuantizeJob(
      *model, *cal, *jo,
      [&](int l, int n, const std::string& name, double x) { bar.Update(l, n, name, x); },
      engine.get());
  if (!layers.ok()) return Fail(layers.status());
  if (auto s = WriteResultFile(f.out, *layers); !s.ok()) return Fail(s);
  const bool consistent = VerifyLocally(*layers, jo->layer);
  bool all_safe = true;
  for (const auto& l : *layers) all_safe = all_safe && l.certificate.safe;
  if (f.json) {
    nlohmann::json j = {{"result", f.out},
                        {"all_certified", all_safe},
                        {"verified_locally", consistent},
                        {"layers", nlohmann::json::array()}};
    for (const auto& l : *layers) {
      nlohmann::json r = LayerReportToJson(l);
      r["certificate"] = CertificateToJson(l.certificate);
      r["certificate"].erase("channels");
      j["layers"].push_back(r);
    }
    std::cout << j.dump(2) << std::endl;
  } else {
    PrintLayerTable(*layers);
    std::printf(
        "wrote %s: %zu layers; certificates re-checked here: %s; %s\n", f.out.c_str(),
        layers->size(), consistent ? "consistent" : "NOT CONSISTENT",
        all_safe ? "all SAFE"
                 : "some UNSAFE (the codes exceed the target accumulator; expected for --no-axe)");
  }
  return consistent ? kExitOk : kExitFailed;
}

}  // namespace

Command AddQuantize(CLI::App& app, const RemoteFlags& remote) {
  auto flags = std::make_shared<QuantizeFlags>();
  CLI::App* q = app.add_subcommand("quantize", "Quantize the linear layers of a safetensors file");
  AddFlags(q, flags.get());
  return {q, [flags, &remote] { return Run(*flags, remote); }};
}

}  // namespace axeq::cli
