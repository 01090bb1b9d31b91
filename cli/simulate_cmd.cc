// `axeq simulate RESULT --calibration CAL`: runs each quantized layer in pure integer arithmetic
// with a wrapping or saturating P-bit register (tiled with an outer register) on the calibration
// inputs and on the certificate's worst-case inputs, and counts overflows against a wide register.
#include <iostream>
#include <memory>

#include "cli/commands.h"
#include "core/bounds.h"
#include "core/simulate.h"
#include "formats/result_file.h"

namespace axeq::cli {
namespace {

struct SimulateFlags {
  std::string result, cal;
  int bits = 0, outer = -1;
  int64_t tile = -1;
  bool saturate = false, symmetric = false, fail_on_overflow = false, json = false;
};

// The datapath to simulate: the flags, or else each certificate's own P, T and P_O.
DatapathSpec SpecFor(const SimulateFlags& f, const QuantizedLayer& l) {
  DatapathSpec spec;
  spec.accumulator.bits = f.bits > 0 ? f.bits : l.certificate.accumulator.bits;
  spec.accumulator.tile_size = static_cast<int>(f.tile >= 0 ? f.tile : l.certificate.tile_size());
  spec.accumulator.twos_complement = !f.symmetric;
  spec.outer_bits = f.outer >= 0 ? f.outer : OuterAccumulatorBits(spec.accumulator, l.inputs());
  spec.mode = f.saturate ? OverflowMode::kSaturate : OverflowMode::kWrap;
  return spec;
}

int Run(const SimulateFlags& f) {
  auto layers = ReadResultFile(f.result);
  if (!layers.ok()) return Fail(layers.status());
  auto cal = ReadSafetensors(f.cal);
  if (!cal.ok()) return Fail(cal.status());
  nlohmann::json out = nlohmann::json::array();
  bool any = false;
  if (!f.json)
    std::printf("%-30s %4s %5s %4s %12s %12s %10s %12s %12s\n", "layer", "P", "T", "P_O", "dots",
                "overflowing", "wrong", "rel.error", "worst-case");
  for (const auto& l : *layers) {
    auto it = cal->tensors.find(l.name + ".inputs");
    if (it == cal->tensors.end())
      return Fail(absl::NotFoundError(absl::StrCat(f.cal, " has no ", l.name, ".inputs")));
    auto x = TensorToMatrix(it->second, l.name + ".inputs");
    if (!x.ok()) return Fail(x.status());
    if (x->cols() != l.inputs())
      return Fail(absl::InvalidArgumentError(
          absl::StrCat(l.name, ".inputs has ", x->cols(), " columns, the codes ", l.inputs())));
    const DatapathSpec spec = SpecFor(f, l);
    auto s = SimulateDatapath(l.codes, InputCodes(*x, l.activations), spec);
    if (!s.ok()) return Fail(s.status());
    auto w = SimulateWorstCase(l.codes, l.activations.spec, spec);
    if (!w.ok()) return Fail(w.status());
    any = any || s->overflow_events > 0 || w->overflow_events > 0;
    const int64_t t = spec.accumulator.EffectiveTile(l.inputs());
    if (f.json) {
      out.push_back({{"layer", l.name},
                     {"accumulator_bits", spec.accumulator.bits},
                     {"tile_size", t},
                     {"outer_bits", spec.outer_bits},
                     {"dot_products", s->dot_products},
                     {"overflowing_dot_products", s->overflowing_dot_products},
                     {"overflow_events", s->overflow_events},
                     {"wrong_outputs", s->wrong_outputs},
                     {"relative_error", s->relative_error},
                     {"worst_case_overflowing", w->overflowing_dot_products},
                     {"worst_case_wrong", w->wrong_outputs}});
    } else {
      std::printf("%-30s %4d %5lld %4d %12lld %12lld %10lld %12.3g %6lld/%-5lld\n", l.name.c_str(),
                  spec.accumulator.bits, static_cast<long long>(t), spec.outer_bits,
                  static_cast<long long>(s->dot_products),
                  static_cast<long long>(s->overflowing_dot_products),
                  static_cast<long long>(s->wrong_outputs), s->relative_error,
                  static_cast<long long>(w->overflowing_dot_products),
                  static_cast<long long>(w->dot_products));
    }
  }
  if (f.json)
    std::cout << out.dump(2) << std::endl;
  else
    std::printf("%s\n", any ? "OVERFLOWS found (the datapath is too narrow for these codes)"
                            : "no overflow on calibration or worst-case inputs");
  return f.fail_on_overflow && any ? kExitFailed : kExitOk;
}

}  // namespace

Command AddSimulate(CLI::App& app) {
  auto f = std::make_shared<SimulateFlags>();
  CLI::App* sim = app.add_subcommand(
      "simulate",
      "Run quantized layers in integer arithmetic with a P-bit accumulator and count overflows");
  sim->add_option("result", f->result, "RESULT.safetensors")->required();
  sim->add_option("--calibration", f->cal, "CAL.safetensors with <layer>.inputs (float X)")
      ->required();
  sim->add_option("--acc-bits", f->bits, "P (P_I per tile); default: each certificate's");
  sim->add_option("--tile", f->tile, "T; default: each certificate's (0 = monolithic)");
  sim->add_option("--outer-bits", f->outer,
                  "P_O of the tile-sum register; default: Eq. 21 (0 = wide)");
  sim->add_flag("--saturate", f->saturate, "saturating registers (default: two's-complement wrap)");
  sim->add_flag("--symmetric", f->symmetric,
                "registers hold [-(2^(P-1)-1), 2^(P-1)-1] (sign-magnitude, as the paper)");
  sim->add_flag("--fail-on-overflow", f->fail_on_overflow, "exit 1 if any overflow happens");
  sim->add_flag("--json", f->json, "JSON output");
  return {sim, [f] { return Run(*f); }};
}

}  // namespace axeq::cli
