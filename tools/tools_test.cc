// Tests of the llama2.c runner: the known greedy output of stories260K, and malformed checkpoints.
// Real data comes from ../shared/data; missing data fails the test.
#include <cstdlib>
#include <fstream>
#include <random>

#include "tools/llama2c.h"
#include "gtest/gtest.h"

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

}  // namespace
}  // namespace axeq
