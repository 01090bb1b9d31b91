// Tests of the llama2.c runner (the known greedy output of stories260K, malformed checkpoints) and
// of the job runner on layers it captures: quantize, verify, round-trip through the RESULT codec;
// the default activation range (auto) against min/max and percentile on a real GPT-2 layer.
// Real data comes from ../shared/data; missing data fails the test.
#include <cstdlib>
#include <fstream>
#include <random>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "client/job.h"
#include "core/test_util.h"
#include "core/verify.h"
#include "formats/result_file.h"
#include "gtest/gtest.h"
#include "tools/llama2c.h"

namespace axeq {
namespace {

std::string SharedData() {
  const char* d = std::getenv("AXEQ_SHARED_DATA");
  return d ? d : "../shared/data";
}

std::string RequireFile(const std::string& rel) {
  const std::string p = SharedData() + "/" + rel;
  std::ifstream f(p);
  if (!f) ADD_FAILURE() << "required real data is missing: " << p << " (set AXEQ_SHARED_DATA)";
  return p;
}

TEST(Llama2c, GreedyStoryMatchesKnownAnswer) {
  auto m = LoadLlama2c(RequireFile("stories260K/stories260K.bin"));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->config.dim, 64);
  EXPECT_EQ(m->config.hidden_dim, 172);
  EXPECT_EQ(m->linears.size(), 35u);
  auto vocab = LoadLlama2cVocab(RequireFile("stories260K/tok512.bin"), m->config.vocab_size);
  ASSERT_TRUE(vocab.ok()) << vocab.status();
  std::mt19937_64 rng(0);
  const std::string text = DecodeTokens(*vocab, Llama2cGenerate(*m, 20, 0.0f, rng));
  EXPECT_EQ(text.rfind("Once upon a time, there was a little girl named Lily.", 0), 0u) << text;
}

TEST(Llama2c, TruncatedCheckpointIsAnError) {
  const std::string p = ::testing::TempDir() + "trunc.bin";
  std::ofstream(p, std::ios::binary) << std::string(40, '\x01');
  EXPECT_FALSE(LoadLlama2c(p).ok());
}

TEST(Job, QuantizesCapturedLayersAndVerifies) {
  auto m = LoadLlama2c(RequireFile("stories260K/stories260K.bin"));
  ASSERT_TRUE(m.ok());
  std::mt19937_64 rng(3);
  SafetensorsFile model, cal;
  std::map<std::string, MatrixXf> xs;
  const auto seq = Llama2cGenerate(*m, 64, 1.0f, rng);
  Llama2cForward(*m, seq, nullptr, [&](const std::string& n, const MatrixXf& x) { xs[n] = x; });
  for (const char* n : {"layers.0.attention.wq", "layers.0.feed_forward.w2"}) {
    model.tensors[std::string(n) + ".weight"] = MatrixToTensor(m->linears.at(n));
    cal.tensors[std::string(n) + ".inputs"] = MatrixToTensor(xs.at(n));
  }
  JobOptions jo;
  jo.layer.accumulator.bits = 16;
  jo.threads = 2;
  int calls = 0;
  auto outs =
      RunQuantizeJob(model, cal, jo, [&](int, int, const std::string&, double) { ++calls; });
  ASSERT_TRUE(outs.ok()) << outs.status();
  ASSERT_EQ(outs->size(), 2u);
  EXPECT_GT(calls, 2);
  for (const auto& o : *outs) {
    EXPECT_TRUE(o.certificate.safe) << o.name;
    EXPECT_TRUE(VerifyCertificate(o.codes, o.certificate).ok()) << o.name;
  }
  // Through the RESULT codec and back: the same layers, and a flipped code is noticed.
  SafetensorsFile f = ResultToSafetensors(*outs);
  auto back = DecodeResult(f);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ((*back)[0].codes, (*outs)[0].codes);
  f.tensors["layers.0.attention.wq.qweight"].data[5] ^= 1;
  back = DecodeResult(f);
  ASSERT_TRUE(back.ok());
  EXPECT_FALSE(VerifyCertificate((*back)[0].codes, (*back)[0].certificate).consistent);
  // A calibration tensor of the wrong width is an INVALID_ARGUMENT naming the layer.
  cal.tensors["layers.0.attention.wq.inputs"] = MatrixToTensor(MatrixXf::Ones(4, 3));
  auto bad = RunQuantizeJob(model, cal, jo);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("layers.0.attention.wq"), std::string::npos);
}

// Issue 16: the default range is never worse in the layer's output error than min/max or the
// percentiles, on the golden tests' GPT-2 layer and calibration recipe, in the two configurations
// where each of those beats the float output-error search (docs/fidelity.md).
TEST(Job, AutoActivationRangeNeverWorseThanMinMaxOrPercentileOnGpt2) {
  int auto_differs_from_output = 0;
  for (const auto& [file_name, layer, seed] :
       {std::tuple<const char*, const char*, uint64_t>{"gpt2_block11_attn", "h.11.attn.o", 1111},
        {"gpt2_block5_attn", "h.5.attn.q", 55}}) {
    auto file = ReadSafetensors(RequireFile(absl::StrCat("gpt2-attn/", file_name, ".safetensors")));
    ASSERT_TRUE(file.ok()) << file.status();
    SafetensorsFile model, cal;
    model.tensors["l.weight"] = file->tensors.at(absl::StrCat(layer, ".weight"));
    auto w = TensorToMatrix(model.tensors["l.weight"], layer);
    ASSERT_TRUE(w.ok());
    cal.tensors["l.inputs"] = MatrixToTensor(testing::HeavyTailed(w->cols(), 512, seed, true));
    for (bool gpfq : {false, true}) {
      JobOptions jo;
      jo.threads = 2;
      jo.layer.algorithm = gpfq ? Algorithm::kGpfq : Algorithm::kOptq;
      jo.layer.accumulator.bits = gpfq ? 16 : 14;
      jo.layer.accumulator.tile_size = gpfq ? 0 : 32;
      auto error = [&](ActivationRange r) {
        jo.activation_calibration.method = r;
        auto out = RunQuantizeJob(model, cal, jo);
        EXPECT_TRUE(out.ok() && out->size() == 1 && (*out)[0].certificate.safe) << out.status();
        return out.ok() ? (*out)[0].report.relative_error : 1e9;
      };
      const std::string what = absl::StrCat(layer, gpfq ? " GPFQ mono P=16" : " OPTQ T=32 P_I=14");
      const double automatic = error(ActivationRange::kAuto);
      const double minmax = error(ActivationRange::kMinMax),
                   pct = error(ActivationRange::kPercentile);
      const double output = error(ActivationRange::kOutput);
      EXPECT_LE(automatic, std::min(minmax, pct)) << what;
      EXPECT_LE(automatic, output) << what;
      auto_differs_from_output += automatic < output;
    }
  }
  EXPECT_GT(auto_differs_from_output, 0) << "the end-to-end trial should matter on this layer";
}

}  // namespace
}  // namespace axeq
