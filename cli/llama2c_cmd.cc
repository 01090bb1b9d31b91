// `axeq llama2c-capture` and `axeq llama2c-eval`: a real llama2.c model (stories260K) end to end:
// capture its linear layers and calibration inputs, and measure perplexity with a RESULT's
// quantized layers in place (dequantized weights and the activation quantizer).
#include <cmath>
#include <memory>
#include <random>

#include "cli/commands.h"
#include "core/bounds.h"
#include "formats/result_file.h"
#include "tools/llama2c.h"

namespace axeq::cli {
namespace {

struct CaptureFlags {
  std::string checkpoint, out_model, out_cal, tokenizer;
  int sequences = 16, length = 128;
  uint64_t seed = 0;
};

struct EvalFlags {
  std::string checkpoint, result;
  int sequences = 8, length = 128;
  uint64_t seed = 1000;
  // Integer datapath (--integer): P, T and P_O default to each certificate's.
  bool integer = false, saturate = false, symmetric = false;
  int acc_bits = 0, outer_bits = -1;
  int64_t tile = -1;
};

// The integer datapath of one layer as the flags (or its certificate) say.
absl::StatusOr<IntegerLinear> IntegerFor(const QuantizedLayer& l, const EvalFlags& f) {
  if (l.scales.cols() != 1)
    return absl::FailedPreconditionError(
        absl::StrCat("layer ", l.name, ": --integer needs per-channel scales, it has ",
                     l.scales.cols(), " groups"));
  IntegerLinear il;
  il.codes = l.codes;
  il.scales = l.scales.col(0);
  AccumulatorSpec& acc = il.datapath.accumulator;
  acc.bits = f.acc_bits > 0 ? f.acc_bits : l.certificate.accumulator.bits;
  acc.tile_size = static_cast<int>(f.tile >= 0 ? f.tile : l.certificate.tile_size());
  acc.twos_complement = !f.symmetric;
  il.datapath.outer_bits = f.outer_bits >= 0 ? f.outer_bits : OuterAccumulatorBits(acc, l.inputs());
  il.datapath.mode = f.saturate ? OverflowMode::kSaturate : OverflowMode::kWrap;
  if (acc.bits < 2 || acc.bits > 62 || il.datapath.outer_bits > 62)
    return absl::InvalidArgumentError(
        absl::StrCat("--acc-bits must be in [2, 62], got ", acc.bits));
  return il;
}

int RunCapture(const CaptureFlags& f) {
  auto m = LoadLlama2c(f.checkpoint);
  if (!m.ok()) return Fail(m.status());
  if (!f.tokenizer.empty()) {
    auto vocab = LoadLlama2cVocab(f.tokenizer, m->config.vocab_size);
    if (!vocab.ok()) return Fail(vocab.status());
    std::mt19937_64 g(0);
    std::printf("greedy sample: %s\n",
                DecodeTokens(*vocab, Llama2cGenerate(*m, 40, 0.0f, g)).c_str());
  }
  std::mt19937_64 rng(f.seed);
  std::map<std::string, std::vector<MatrixXf>> captured;
  int64_t tokens = 0;
  for (int s = 0; s < f.sequences; ++s) {
    const std::vector<int> seq = Llama2cGenerate(*m, f.length, 1.0f, rng);
    tokens += static_cast<int64_t>(seq.size());
    Llama2cForward(*m, seq, nullptr,
                   [&](const std::string& n, const MatrixXf& x) { captured[n].push_back(x); });
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
  layers.metadata["source"] = f.checkpoint;
  cal.metadata["source"] = absl::StrCat(
      f.sequences, " sequences sampled from the model at temperature 1, seed ", f.seed);
  if (auto s = WriteSafetensors(f.out_model, layers); !s.ok()) return Fail(s);
  if (auto s = WriteSafetensors(f.out_cal, cal); !s.ok()) return Fail(s);
  std::printf("captured %zu linear layers over %lld calibration tokens -> %s, %s\n",
              m->linears.size(), static_cast<long long>(tokens), f.out_model.c_str(),
              f.out_cal.c_str());
  return kExitOk;
}

// The model's quantized linears from a RESULT file; every layer must match the model's shape.
absl::StatusOr<std::map<std::string, QuantizedLinear>> LoadQuantized(const Llama2cModel& m,
                                                                     const std::string& path,
                                                                     const EvalFlags& f) {
  auto layers = ReadResultFile(path);
  if (!layers.ok()) return layers.status();
  std::map<std::string, QuantizedLinear> out;
  for (const auto& l : *layers) {
    auto it = m.linears.find(l.name);
    if (it == m.linears.end())
      return absl::DataLossError(absl::StrCat(path, ": layer ", l.name, " is not in the model"));
    if (it->second.rows() != l.output_channels() || it->second.cols() != l.inputs())
      return absl::DataLossError(absl::StrCat(
          path, ": layer ", l.name, ": .qweight is [", l.output_channels(), ", ", l.inputs(),
          "], the model's weight [", it->second.rows(), ", ", it->second.cols(), "]"));
    QuantizedLinear q;
    q.weight = l.DequantizedWeights();
    q.input = l.activations;
    q.bias = l.bias;
    if (f.integer) {
      auto il = IntegerFor(l, f);
      if (!il.ok()) return il.status();
      q.integer = std::move(il).value();
    }
    out[l.name] = std::move(q);
  }
  return out;
}

int RunEval(const EvalFlags& f) {
  auto m = LoadLlama2c(f.checkpoint);
  if (!m.ok()) return Fail(m.status());
  std::map<std::string, QuantizedLinear> ql;
  if (!f.result.empty()) {
    auto q = LoadQuantized(*m, f.result, f);
    if (!q.ok()) return Fail(q.status());
    ql = std::move(q).value();
  }
  std::mt19937_64 rng(f.seed);
  std::vector<std::vector<int>> seqs;
  for (int s = 0; s < f.sequences; ++s) seqs.push_back(Llama2cGenerate(*m, f.length, 1.0f, rng));
  const double float_nll = MeanNll(*m, seqs);
  std::printf("float model:      perplexity %.3f on %d held-out sampled sequences\n",
              std::exp(float_nll), f.sequences);
  if (!f.result.empty()) {
    const double qnll = MeanNll(*m, seqs, &ql);
    std::printf("quantized model:  perplexity %.3f (%zu linear layers replaced%s; %+.2f%%)\n",
                std::exp(qnll), ql.size(), f.integer ? ", integer datapath" : "",
                100 * (std::exp(qnll) / std::exp(float_nll) - 1));
    if (f.integer) {
      int64_t dots = 0, over = 0;
      for (const auto& [name, q] : ql)
        dots += q.integer->dot_products, over += q.integer->overflowing;
      std::printf("integer datapath: %lld of %lld dot products overflowed the %s register\n",
                  static_cast<long long>(over), static_cast<long long>(dots),
                  f.saturate ? "saturating" : "wrapping");
    }
  }
  return kExitOk;
}

}  // namespace

Command AddLlama2cCapture(CLI::App& app) {
  auto f = std::make_shared<CaptureFlags>();
  CLI::App* cap = app.add_subcommand("llama2c-capture",
                                     "Run a llama2.c checkpoint on sampled text and write its "
                                     "linear layers and their calibration inputs");
  cap->add_option("--checkpoint", f->checkpoint, "model .bin (llama2.c v0)")->required();
  cap->add_option("--out-model", f->out_model, "LAYERS.safetensors to write")->required();
  cap->add_option("--out-calibration", f->out_cal, "CAL.safetensors to write")->required();
  cap->add_option("--sequences", f->sequences, "calibration sequences sampled from the model")
      ->capture_default_str();
  cap->add_option("--length", f->length, "tokens per sequence")->capture_default_str();
  cap->add_option("--seed", f->seed, "sampling seed")->capture_default_str();
  cap->add_option("--tokenizer", f->tokenizer,
                  "tok512.bin: print the greedy story as a loader check");
  return {cap, [f] { return RunCapture(*f); }};
}

Command AddLlama2cEval(CLI::App& app) {
  auto f = std::make_shared<EvalFlags>();
  CLI::App* ev = app.add_subcommand(
      "llama2c-eval", "Perplexity of a llama2.c model, float and with a RESULT's quantized layers");
  ev->add_option("--checkpoint", f->checkpoint, "model .bin")->required();
  ev->add_option("--result", f->result, "RESULT.safetensors from axeq quantize");
  ev->add_option("--sequences", f->sequences,
                 "held-out sequences sampled with a seed disjoint from calibration")
      ->capture_default_str();
  ev->add_option("--length", f->length, "tokens per sequence")->capture_default_str();
  ev->add_option("--seed", f->seed, "sampling seed (must differ from the capture seed)")
      ->capture_default_str();
  ev->add_flag(
      "--integer", f->integer,
      "run the quantized layers in integer arithmetic with P-bit registers (the hardware)");
  ev->add_option("--acc-bits", f->acc_bits,
                 "--integer: P (P_I per tile); default: the certificate's");
  ev->add_option("--tile", f->tile, "--integer: T (0 = monolithic); default: the certificate's");
  ev->add_option("--outer-bits", f->outer_bits, "--integer: P_O; default: Eq. 21 (0 = wide)");
  ev->add_flag("--saturate", f->saturate, "--integer: saturating registers (default: wrap)");
  ev->add_flag("--symmetric", f->symmetric, "--integer: registers hold [-(2^(P-1)-1), 2^(P-1)-1]");
  return {ev, [f] { return RunEval(*f); }};
}

}  // namespace axeq::cli
