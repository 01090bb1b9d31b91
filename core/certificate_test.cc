// The certificate's verdict must equal an exact int64 simulation of the worst-case inputs of Eq. 6
// accumulated term by term in a P-bit register (and tile sums in the P_O-bit outer register),
// over thousands of random layers: monolithic and tiled, signed and unsigned inputs, narrow and
// full alphabets, sign-magnitude and two's-complement registers. AXE results must all be safe.
#include "core/certificate.h"

#include <cstdlib>
#include <random>

#include "core/bounds.h"
#include "core/layer.h"
#include "core/test_util.h"
#include "core/verify.h"
#include "gtest/gtest.h"

namespace axeq {
namespace {

using testing::TestSeed;

// Accumulates the adversarial inputs of Eq. 6 (maximising and minimising) term by term and
// reports whether every partial sum of every tile fits [-neg, pos] at P bits and every partial
// sum of tile results fits the outer register.
bool SimulateWorstCase(const MatrixXi8& q, const InputSpec& in, int p, int64_t tile, bool twos,
                       int p_outer) {
  const int64_t mu = in.min_code(), nu = in.max_code();
  const int64_t pos = (int64_t{1} << (p - 1)) - 1, neg = pos + twos;
  const int64_t pos_o = (int64_t{1} << (p_outer - 1)) - 1, neg_o = pos_o + twos;
  const int64_t k = q.cols();
  const int64_t t = tile <= 0 || tile > k ? k : tile;
  for (int64_t r = 0; r < q.rows(); ++r) {
    for (int sign : {+1, -1}) {
      int64_t outer = 0;
      for (int64_t b = 0; b < k; b += t) {
        int64_t acc = 0;
        for (int64_t i = b; i < std::min(k, b + t); ++i) {
          const int64_t qi = q(r, i);
          // maximising input u_i (sign +1) or minimising v_i (sign -1), Eq. 6
          const int64_t x = (sign > 0) == (qi >= 0) ? nu : mu;
          acc += qi * x;
          if (acc > pos || acc < -neg) return false;
        }
        outer += acc;
        if (outer > pos_o || outer < -neg_o) return false;
      }
    }
  }
  return true;
}

TEST(Certificate, VerdictEqualsExactWorstCaseSimulation) {
  std::mt19937_64 rng(TestSeed(707));
  std::uniform_int_distribution<int> coin(0, 1);
  int safe = 0, unsafe = 0;
  const char* env = std::getenv("AXEQ_PROPERTY_TRIALS");  // the slow suite runs 1,000,000
  const int trials = env ? std::atoi(env) : 4000;
  for (int trial = 0; trial < trials; ++trial) {
    InputSpec in;
    in.bits = 2 + trial % 7;
    in.is_signed = coin(rng);
    const int m = 2 + trial % 5;
    WeightQuantOptions wo;
    wo.bits = m;
    wo.alphabet = coin(rng) ? WeightAlphabet::kFull : WeightAlphabet::kNarrow;
    const int64_t k = 1 + rng() % 40, c = 1 + rng() % 4;
    std::uniform_int_distribution<int> code(WeightCodeMin(wo), WeightCodeMax(wo));
    MatrixXi8 q(c, k);
    const bool sparse = coin(rng);
    for (int64_t r = 0; r < c; ++r)
      for (int64_t i = 0; i < k; ++i)
        q(r, i) = static_cast<int8_t>(sparse && coin(rng) ? 0 : code(rng));
    AccumulatorSpec acc;
    acc.tile_size = coin(rng) ? 0 : static_cast<int>(1 + rng() % k);
    acc.twos_complement = coin(rng);
    Certificate probe = MakeCertificate(q, m, in, acc);
    acc.bits = std::max(2, probe.min_accumulator_bits + static_cast<int>(rng() % 3) - 1);
    Certificate cert = MakeCertificate(q, m, in, acc);
    const bool sim = SimulateWorstCase(q, in, acc.bits, acc.tile_size, acc.twos_complement,
                                       cert.outer_accumulator_bits);
    ASSERT_EQ(cert.safe, sim) << "trial " << trial;
    (sim ? safe : unsafe)++;
    // The certified minimum is exact: it fits, and one bit less does not.
    EXPECT_TRUE(SimulateWorstCase(q, in, cert.min_accumulator_bits, acc.tile_size,
                                  acc.twos_complement, 62));
    if (cert.min_accumulator_bits > 1)
      EXPECT_FALSE(SimulateWorstCase(q, in, cert.min_accumulator_bits - 1, acc.tile_size,
                                     acc.twos_complement, 62));
    EXPECT_TRUE(
        SimulateWorstCase(q, in, 62, 0, acc.twos_complement, cert.min_outer_accumulator_bits));
    Verification v = VerifyCertificate(q, cert);
    EXPECT_TRUE(v.consistent);
    EXPECT_EQ(v.safe, sim);
  }
  EXPECT_GT(safe, 500);  // both verdicts are exercised
  EXPECT_GT(unsafe, 500);
}

TEST(Certificate, EveryAxeResultIsSafeAtItsP) {
  std::mt19937_64 rng(TestSeed(808));
  std::uniform_int_distribution<int> coin(0, 1);
  for (int trial = 0; trial < 160; ++trial) {
    InputSpec in;
    in.bits = 4 + trial % 5;
    in.is_signed = coin(rng);
    const int64_t k = 16 + rng() % 80;
    auto layer = testing::MakeRandomLayer(rng, 6, k, 64, in);
    LayerOptions o;
    o.algorithm = coin(rng) ? Algorithm::kOptq : Algorithm::kGpfq;
    o.inputs = in;
    o.weights.bits = 3 + trial % 4;
    o.weights.alphabet = coin(rng) ? WeightAlphabet::kFull : WeightAlphabet::kNarrow;
    o.rounding = coin(rng) ? Rounding::kNearest : Rounding::kToZero;
    o.soft_threshold = coin(rng);
    o.accumulator.tile_size = coin(rng) ? 0 : static_cast<int>(4 + rng() % 16);
    o.accumulator.twos_complement = coin(rng);
    o.accumulator.bits = in.bits + 2 + static_cast<int>(rng() % 6);
    auto r = QuantizeLayer(layer.weights, nullptr, testing::StatsOf(layer), o);
    if (!r.ok()) {
      ASSERT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
      continue;
    }
    ASSERT_TRUE(r->certificate.safe) << "trial " << trial;
    ASSERT_TRUE(SimulateWorstCase(r->codes, in, o.accumulator.bits, o.accumulator.tile_size,
                                  o.accumulator.twos_complement,
                                  r->certificate.outer_accumulator_bits));
  }
}

TEST(Certificate, VerifierCatchesTampering) {
  MatrixXi8 q(2, 4);
  q << 3, -2, 1, 0, -7, 7, 0, 1;
  InputSpec in;
  in.bits = 4;
  AccumulatorSpec acc;
  acc.bits = 9;
  Certificate cert = MakeCertificate(q, 4, in, acc);
  ASSERT_TRUE(VerifyCertificate(q, cert).consistent);
  EXPECT_EQ(cert.channels[0].hi, 15 * 4);
  EXPECT_EQ(cert.channels[0].lo, -15 * 2);
  MatrixXi8 q2 = q;
  q2(1, 2) = 1;  // a changed code breaks the digest and the bounds
  Verification v = VerifyCertificate(q2, cert);
  EXPECT_FALSE(v.consistent);
  EXPECT_GE(v.problems.size(), 2u);
  Certificate lie = cert;
  lie.channels[1].hi = 1;
  EXPECT_FALSE(VerifyCertificate(q, lie).consistent);
  lie = cert;
  lie.safe = !cert.safe;
  EXPECT_FALSE(VerifyCertificate(q, lie).consistent);
  lie = cert;
  lie.input.bits = 3;  // a narrower input range than the certificate was made for
  EXPECT_FALSE(VerifyCertificate(q, lie).consistent);
  lie = cert;
  lie.channels[0].worst_tile = 1;  // the worst tile's index is a claim too
  EXPECT_FALSE(VerifyCertificate(q, lie).consistent);
  lie = cert;
  lie.channels.pop_back();
  EXPECT_FALSE(VerifyCertificate(q, lie).consistent);
}

// Issue 10, point 2: codes all +7 with input_bits 62 overflow int64 sums; a self-consistent
// certificate claiming them safe must be refused (the width is out of range), never computed.
TEST(Certificate, VerifierRefusesOutOfRangeWidthsInsteadOfOverflowing) {
  MatrixXi8 q = MatrixXi8::Constant(4, 4096, 7);
  Certificate forged;
  forged.output_channels = 4;
  forged.inputs = 4096;
  forged.weight_bits = 4;
  forged.input.bits = 62;
  forged.accumulator.bits = 16;
  forged.outer_accumulator_bits = 16;
  forged.min_accumulator_bits = 2;
  forged.min_outer_accumulator_bits = 2;
  forged.weights_sha256 = CodesSha256(q);
  forged.channels.resize(4);
  forged.safe = true;
  Verification v = VerifyCertificate(q, forged);
  EXPECT_FALSE(v.consistent);
  EXPECT_FALSE(v.ok());
  ASSERT_FALSE(v.problems.empty());
  EXPECT_NE(v.problems[0].find("input_bits 62"), std::string::npos) << v.problems[0];
  for (int bad_p : {0, 1, 65, 1000}) {
    Certificate c = MakeCertificate(q.leftCols(8), 4, InputSpec{}, AccumulatorSpec{32});
    c.accumulator.bits = bad_p;
    EXPECT_FALSE(VerifyCertificate(q.leftCols(8), c).consistent) << bad_p;
  }
}

// Issue 10, point 2: an honest certificate for another datapath (P = 32) does not pass for the
// hardware the caller pins (P = 16, T = 64, N = 8 unsigned).
TEST(Certificate, PinnedExpectationsRejectAnotherDatapath) {
  std::mt19937_64 rng(TestSeed(909));
  MatrixXi8 q(3, 128);
  for (int64_t i = 0; i < q.size(); ++i)
    q.data()[i] = static_cast<int8_t>(static_cast<int>(rng() % 15) - 7);
  AccumulatorSpec acc32{32, 64};
  Certificate honest32 = MakeCertificate(q, 4, InputSpec{}, acc32);
  ASSERT_TRUE(VerifyCertificate(q, honest32).ok());
  VerifyExpectations hw;
  hw.accumulator_bits = 16;
  hw.tile_size = 64;
  hw.input_bits = 8;
  hw.inputs_signed = false;
  Verification v = VerifyCertificate(q, honest32, hw);
  EXPECT_TRUE(v.consistent);    // the claims hold ...
  EXPECT_FALSE(v.as_expected);  // ... for another datapath
  EXPECT_FALSE(v.ok());
  hw.accumulator_bits = 32;
  EXPECT_TRUE(VerifyCertificate(q, honest32, hw).ok());
  hw.tile_size = 0;  // monolithic hardware, tiled certificate
  EXPECT_FALSE(VerifyCertificate(q, honest32, hw).ok());
  hw.tile_size = 64;
  hw.weight_bits = 3;
  EXPECT_FALSE(VerifyCertificate(q, honest32, hw).ok());
}

// The two implementations (MakeCertificate and the independent verifier) agree on random layers,
// and any single-field change of an honest certificate is caught.
TEST(Certificate, IndependentVerifierAgreesAndCatchesEveryFieldChange) {
  std::mt19937_64 rng(TestSeed(1010));
  for (int trial = 0; trial < 300; ++trial) {
    const int64_t c = 1 + rng() % 5, k = 1 + rng() % 200;
    const int m = 2 + trial % 7;
    MatrixXi8 q(c, k);
    const int half = 1 << (m - 1);
    for (int64_t i = 0; i < q.size(); ++i)
      q.data()[i] = static_cast<int8_t>(static_cast<int>(rng() % (2 * half)) - half);
    InputSpec in{2 + static_cast<int>(rng() % 15), static_cast<bool>(rng() % 2)};
    AccumulatorSpec acc{2 + static_cast<int>(rng() % 40), static_cast<int>(rng() % (k + 1)),
                        static_cast<bool>(rng() % 2)};
    const Certificate cert = MakeCertificate(q, m, in, acc);
    ASSERT_TRUE(VerifyCertificate(q, cert).consistent) << "trial " << trial;
    for (int field = 0; field < 9; ++field) {
      Certificate lie = cert;
      switch (field) {
        case 0:
          lie.min_accumulator_bits += 1;
          break;
        case 1:
          lie.min_outer_accumulator_bits -= 1;
          break;
        case 2:
          lie.outer_accumulator_bits += 1;
          break;
        case 3:
          lie.unsafe_channels += 1;
          break;
        case 4:
          lie.safe = !lie.safe;
          break;
        case 5:
          lie.channels[0].row_hi += 1;
          break;
        case 6:
          lie.weights_sha256[0] = lie.weights_sha256[0] == 'a' ? 'b' : 'a';
          break;
        case 7:
          lie.output_channels += 1;
          break;
        case 8:
          lie.channels[0].lo -= 1;
          break;
      }
      EXPECT_FALSE(VerifyCertificate(q, lie).consistent) << "trial " << trial << " field " << field;
    }
  }
}

}  // namespace
}  // namespace axeq
