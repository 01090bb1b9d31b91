// Tests of the llama2.c runner (the known greedy output of stories260K, malformed checkpoints) and
// of the job runner on layers it captures: quantize, verify, round-trip through the RESULT codec.
// Real data comes from ../shared/data; missing data fails the test.
#include <cstdlib>
#include <fstream>
#include <random>

#include "gtest/gtest.h"
#include "client/job.h"
#include "core/verify.h"
#include "formats/result_file.h"
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

}  // namespace
}  // namespace axeq
