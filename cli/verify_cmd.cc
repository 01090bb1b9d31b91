// `axeq verify RESULT [--acc-bits P] [--tile T] [--act-bits N] [--signed-inputs|--unsigned-inputs]
// [--weight-bits M]`: every layer the file lists must have a certificate that the independent
// verifier (core/verify.h) recomputes from the codes, that is SAFE, and that matches the pinned
// datapath. Exit 0 all verified, 1 some layer fails, 2 usage or an unreadable file.
#include <iostream>
#include <memory>

#include "cli/commands.h"
#include "core/verify.h"
#include "formats/result_file.h"

namespace axeq::cli {
namespace {

struct VerifyFlags {
  std::string path;
  int acc_bits = 0, act_bits = 0, weight_bits = 0;
  int64_t tile = -1;
  bool signed_inputs = false, unsigned_inputs = false, json = false;
};

VerifyExpectations Expectations(const VerifyFlags& f) {
  VerifyExpectations e;
  if (f.acc_bits > 0) e.accumulator_bits = f.acc_bits;
  if (f.tile >= 0) e.tile_size = f.tile;
  if (f.act_bits > 0) e.input_bits = f.act_bits;
  if (f.weight_bits > 0) e.weight_bits = f.weight_bits;
  if (f.signed_inputs) e.inputs_signed = true;
  if (f.unsigned_inputs) e.inputs_signed = false;
  return e;
}

int Run(const VerifyFlags& f) {
  auto file = ReadSafetensors(f.path);
  if (!file.ok()) return Fail(file.status());
  auto entries = DecodeResultEntries(*file);
  if (!entries.ok())
    return Fail(absl::InvalidArgumentError(absl::StrCat(f.path, ": ", entries.status().message())));
  const VerifyExpectations expect = Expectations(f);
  bool all = true;
  nlohmann::json j = nlohmann::json::array();
  for (const auto& e : *entries) {
    Verification v;
    if (!e.layer.ok()) {
      v.problems.push_back(std::string(e.layer.status().message()));
    } else {
      v = VerifyCertificate(e.layer->codes, e.layer->certificate, expect);
    }
    all = all && v.ok();
    const Certificate* c = e.layer.ok() ? &e.layer->certificate : nullptr;
    if (f.json) {
      j.push_back({{"layer", e.name},
                   {"consistent", v.consistent},
                   {"safe", v.safe},
                   {"as_expected", v.as_expected},
                   {"verified", v.ok()},
                   {"problems", v.problems}});
      continue;
    }
    std::printf("%-32s %-12s %-7s %s", e.name.c_str(),
                !e.layer.ok()  ? "MALFORMED"
                : v.consistent ? "CONSISTENT"
                               : "TAMPERED",
                v.safe ? "SAFE" : "UNSAFE", !v.as_expected ? "NOT-AS-PINNED " : "");
    if (c)
      std::printf("P=%d T=%lld N=%d%s M=%d minP=%d minPO=%d", c->accumulator.bits,
                  static_cast<long long>(c->tile_size()), c->input.bits,
                  c->input.is_signed ? "s" : "u", c->weight_bits, c->min_accumulator_bits,
                  c->min_outer_accumulator_bits);
    std::printf("\n");
    for (const auto& p : v.problems) std::printf("    %s\n", p.c_str());
  }
  if (f.json)
    std::cout << j.dump(2) << std::endl;
  else
    std::printf("%s: %zu layers, %s\n", f.path.c_str(), entries->size(),
                all ? "all verified SAFE" : "NOT all verified safe");
  return all ? kExitOk : kExitFailed;
}

}  // namespace

Command AddVerify(CLI::App& app) {
  auto f = std::make_shared<VerifyFlags>();
  CLI::App* v = app.add_subcommand("verify",
                                   "Re-check every layer's certificate from the codes alone (exit "
                                   "0 verified, 1 fails, 2 unreadable)");
  v->add_option("result", f->path, "RESULT.safetensors")->required();
  v->add_option("--acc-bits", f->acc_bits,
                "the hardware's P (P_I per tile): certificates must be for it");
  v->add_option("--tile", f->tile, "the hardware's T (0 = monolithic)");
  v->add_option("--act-bits", f->act_bits, "the hardware's input bits N");
  v->add_option("--weight-bits", f->weight_bits, "the weight bits M");
  auto* s = v->add_flag("--signed-inputs", f->signed_inputs, "the hardware's inputs are signed");
  v->add_flag("--unsigned-inputs", f->unsigned_inputs, "the hardware's inputs are unsigned")
      ->excludes(s);
  v->add_flag("--json", f->json, "JSON output");
  return {v, [f] { return Run(*f); }};
}

}  // namespace axeq::cli
