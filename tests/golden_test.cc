// Golden tests on real GPT-2 attention projections (../shared/data/gpt2-attn) with documented
// synthetic calibration inputs (heavy-tailed per-channel scales, a few outlier channels, the
// LayerNorm-output shape GPT-2's q/k/v see), and the paper's Table 3 ablation at W4A8, P = 20:
// EP-init vs AXE-RTZ vs AXE-RTN vs AXE-HCO, for OPTQ and GPFQ. Prints the table that
// docs/table3.md records; asserts the certificates and the orderings the paper reports.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>

#include "core/layer.h"
#include "core/test_util.h"
#include "formats/safetensors.h"
#include "gtest/gtest.h"

namespace axeq {
namespace {

std::string DataPath(const std::string& rel) {
  const char* d = std::getenv("AXEQ_SHARED_DATA");
  return std::string(d ? d : "../shared/data") + "/" + rel;
}

// Calibration inputs: D rows, channel i scaled by exp(0.8 z_i) with 8 outlier channels x 12,
// Gaussian values (core/test_util.h).
MatrixXf Calibration(int64_t k, int64_t d, uint64_t seed) {
  return testing::HeavyTailed(k, d, seed, /*tail=*/false);
}

struct Row {
  double ep, rtz, rtn, hco;
};

// P = 20 (the paper's Table 3) does not bind on 768-deep layers: unconstrained W4A8 codes of these
// layers need at most 19 bits. P = 16 binds as hard as P = 20 does on the paper's 3072-deep layers.
constexpr int kP = 16;

TEST(GoldenGpt2, Table3OrderingAtW4A8) {
  const std::string path = DataPath("gpt2-attn/gpt2_block5_attn.safetensors");
  auto file = ReadSafetensors(path);
  ASSERT_TRUE(file.ok()) << "required real data is missing or unreadable: " << file.status();
  std::map<std::string, Row> rows;
  for (const char* proj : {"q", "o"}) {
    const std::string name = std::string("h.5.attn.") + proj;
    auto w = TensorToMatrix(file->tensors.at(name + ".weight"), name);
    ASSERT_TRUE(w.ok());
    const MatrixXf x = Calibration(w->cols(), 1024, 42);
    LayerOptions base;
    base.inputs.bits = 8;
    auto act = CalibrateActivations(x, base.inputs, {0.001, 99.999});
    ASSERT_TRUE(act.ok());
    StatsAccumulator acc(w->cols(), true, true);
    ASSERT_TRUE(acc.Add(x, act->Apply(x)).ok());
    const LayerStats stats = *acc.Finish();
    for (auto alg : {Algorithm::kOptq, Algorithm::kGpfq}) {
      LayerOptions o = base;
      o.algorithm = alg;
      o.accumulator.bits = kP;
      auto run = [&](Method m, Rounding r, bool soft) {
        LayerOptions v = o;
        v.method = m;
        v.rounding = r;
        v.soft_threshold = soft;
        auto res = QuantizeLayer(*w, nullptr, stats, v);
        EXPECT_TRUE(res.ok()) << res.status();
        EXPECT_TRUE(res->certificate.safe) << name << " " << MethodName(m);
        EXPECT_LE(res->certificate.min_accumulator_bits, kP);
        return res->report.relative_error;
      };
      Row row{run(Method::kEpInit, Rounding::kNearest, true),
              run(Method::kAxe, Rounding::kToZero, true),
              run(Method::kAxe, Rounding::kNearest, true),
              run(Method::kAxe, Rounding::kNearest, false)};
      const std::string key = std::string(AlgorithmName(alg)) + " " + name;
      rows[key] = row;
      std::printf("| %-18s | %.4f | %.4f | %.4f | %.4f |\n", key.c_str(), row.ep, row.rtz, row.rtn,
                  row.hco);
      // The paper's ordering (Table 3): error correction beats EP-init, RTN beats RTZ.
      EXPECT_GT(row.ep, row.rtz) << key;
      EXPECT_GT(row.rtz, row.rtn) << key;
      // HCO vs RTN is reported, not asserted: on these 768-deep layers with synthetic inputs the
      // soft threshold (lambda ~ 1 code unit) hurts; on stories260K it helps (docs/table3.md).
      EXPECT_GT(row.hco, 0.0);
    }
  }
  EXPECT_EQ(rows.size(), 4u);
  // Golden values (docs/table3.md), pinned with a tolerance that absorbs float-summation order on
  // other CPUs but not a change of algorithm: EP-init, AXE-RTZ, AXE-RTN, AXE-HCO.
  // Updated 2026-11-27 (issue 16): percentiles now interpolate linearly between order statistics
  // (numpy's definition, shared with the Python client) instead of taking the nearest one, and the
  // activation scale is computed in double; X~ moved slightly (changes <= 0.0018).
  const std::map<std::string, Row> golden = {{"optq h.5.attn.q", {0.9208, 0.7389, 0.6603, 0.2966}},
                                             {"gpfq h.5.attn.q", {0.9344, 0.7296, 0.6484, 0.2915}},
                                             {"optq h.5.attn.o", {0.9177, 0.7319, 0.6559, 0.2931}},
                                             {"gpfq h.5.attn.o", {0.9309, 0.7220, 0.6431, 0.2873}}};
  for (const auto& [key, want] : golden) {
    const Row& got = rows[key];
    EXPECT_NEAR(got.ep, want.ep, 2e-3) << key;
    EXPECT_NEAR(got.rtz, want.rtz, 2e-3) << key;
    EXPECT_NEAR(got.rtn, want.rtn, 2e-3) << key;
    EXPECT_NEAR(got.hco, want.hco, 2e-3) << key;
  }
}

TEST(GoldenGpt2, UnconstrainedW4A8NeedsMoreThan16Bits) {
  auto file = ReadSafetensors(DataPath("gpt2-attn/gpt2_block0_attn.safetensors"));
  ASSERT_TRUE(file.ok()) << "required real data is missing: " << file.status();
  auto w = TensorToMatrix(file->tensors.at("h.0.attn.k.weight"), "k");
  ASSERT_TRUE(w.ok());
  const MatrixXf x = Calibration(768, 512, 7);
  InputSpec in;
  auto act = CalibrateActivations(x, in, {});
  StatsAccumulator acc(768, true, false);
  ASSERT_TRUE(acc.Add(x, act->Apply(x)).ok());
  LayerOptions o;
  o.method = Method::kBase;
  o.accumulator.bits = kP;
  auto r = QuantizeLayer(*w, nullptr, *acc.Finish(), o);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->certificate.safe);
  EXPECT_GT(r->certificate.min_accumulator_bits, kP);
  o.method = Method::kAxe;
  r = QuantizeLayer(*w, nullptr, *acc.Finish(), o);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->certificate.safe);
}

}  // namespace
}  // namespace axeq
