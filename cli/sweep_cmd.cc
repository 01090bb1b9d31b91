// `axeq sweep`: accumulator widths x bit widths x methods, the Pareto frontier and plots
// (tools/sweep.h), with the embedded engine or a server.
#include <unistd.h>

#include <memory>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "cli/commands.h"
#include "tools/sweep.h"

namespace axeq::cli {
namespace {

struct SweepFlags {
  std::string model, cal, p = "16,18,20,24,32", m = "3-8", n = "3-8", methods = "axe,naive,ep-init",
                          algorithm = "optq", cache = ".axeq-sweep-cache", out = "sweep", eval,
                          layers;
  int tile = 0;
  bool any_n = false, signed_inputs = false;
};

// Parses "16-24,32" into {16, ..., 24, 32}.
absl::Status ParseList(const std::string& text, std::vector<int>* out) {
  out->clear();
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    std::vector<std::string> r = absl::StrSplit(part, '-');
    int a, b;
    if (r.size() == 1 && absl::SimpleAtoi(r[0], &a)) {
      out->push_back(a);
    } else if (r.size() == 2 && absl::SimpleAtoi(r[0], &a) && absl::SimpleAtoi(r[1], &b) &&
               a <= b && b - a < 64) {
      for (int v = a; v <= b; ++v) out->push_back(v);
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot parse '", std::string(part), "' as a number or range"));
    }
  }
  if (out->empty()) return absl::InvalidArgumentError(absl::StrCat("empty list '", text, "'"));
  return absl::OkStatus();
}

int Run(const SweepFlags& f, const RemoteFlags& remote) {
  SweepOptions so;
  for (auto st : {ParseList(f.p, &so.accumulator_bits), ParseList(f.m, &so.weight_bits),
                  ParseList(f.n, &so.input_bits)})
    if (!st.ok()) return Fail(st);
  int alg;
  if (auto s = ParseChoice(f.algorithm, {{"optq", 0}, {"gpfq", 1}}, "--algorithm", &alg); !s.ok())
    return Fail(s);
  so.methods = absl::StrSplit(f.methods, ',', absl::SkipEmpty());
  so.allow_inputs_below_weights = f.any_n;
  so.job.layer.algorithm = alg ? Algorithm::kGpfq : Algorithm::kOptq;
  so.job.layer.accumulator.tile_size = f.tile;
  so.job.layer.inputs.is_signed = f.signed_inputs;
  if (!f.layers.empty()) so.job.layers = absl::StrSplit(f.layers, ',', absl::SkipEmpty());
  so.cache_dir = f.cache;
  so.eval_command = f.eval;
  std::unique_ptr<Engine> engine = MakeEmbeddedEngine(0);
  if (remote.remote()) {
    auto client = remote.Connect();
    if (!client.ok()) return Fail(client.status());
    engine = MakeRemoteEngine(std::move(client).value(), remote.concurrency);
  }
  const bool tty = isatty(2);
  auto r =
      RunSweep(f.model, f.cal, so, engine.get(), [&](int done, int total, const std::string& what) {
        if (tty)
          std::fprintf(stderr, "\r[%d/%d] %-40s", done, total, what.c_str());
        else if (done < total)
          std::fprintf(stderr, "[%d/%d] %s\n", done + 1, total, what.c_str());
        if (tty && done == total) std::fprintf(stderr, "\n");
      });
  if (!r.ok()) return Fail(r.status());
  int cached = 0;
  for (const auto& pt : r->points) cached += pt.cached;
  std::printf("%s", FrontierTable(*r, so).c_str());
  if (auto st = WriteSweepOutputs(*r, so, f.out); !st.ok()) return Fail(st);
  std::printf(
      "%zu points (%d from the cache %s); wrote "
      "%s/{sweep.json,sweep.csv,pareto.svg,accumulator_bits.svg} "
      "(+ .png with rsvg-convert)\n",
      r->points.size(), cached, f.cache.c_str(), f.out.c_str());
  return kExitOk;
}

}  // namespace

Command AddSweep(CLI::App& app, const RemoteFlags& remote) {
  auto f = std::make_shared<SweepFlags>();
  CLI::App* sw = app.add_subcommand(
      "sweep", "Sweep accumulator widths and bit widths; report the Pareto frontier and plots");
  sw->add_option("--model", f->model, "LAYERS.safetensors")->required();
  sw->add_option("--calibration", f->cal, "CAL.safetensors")->required();
  sw->add_option("--acc-bits", f->p, "target P values: list or range, e.g. 16-24,32")
      ->capture_default_str();
  sw->add_option("--weight-bits", f->m, "M values")->capture_default_str();
  sw->add_option("--act-bits", f->n, "N values")->capture_default_str();
  sw->add_flag("--allow-act-below-weight", f->any_n, "also try N < M (the paper uses N >= M)");
  sw->add_option("--methods", f->methods, "axe,naive,ep-init,rtz,hco")->capture_default_str();
  sw->add_option("--algorithm", f->algorithm, "optq|gpfq")->capture_default_str();
  sw->add_option("--tile", f->tile, "T (0 = monolithic)")->capture_default_str();
  sw->add_flag("--signed-inputs", f->signed_inputs, "signed activations");
  sw->add_option("--cache", f->cache, "cache of finished points (resume)")->capture_default_str();
  sw->add_option("--out-dir", f->out, "sweep.json, sweep.csv, pareto.svg, accumulator_bits.svg")
      ->capture_default_str();
  sw->add_option(
      "--eval-command", f->eval,
      "model metric per point, e.g. \"axeq llama2c-eval --checkpoint m.bin --result {result}\"");
  sw->add_option("--layers", f->layers, "comma-separated layer names (default: all)");
  return {sw, [f, &remote] { return Run(*f, remote); }};
}

}  // namespace axeq::cli
