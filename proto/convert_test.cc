// Round trips of the wire conversions and the chunker.
#include "proto/convert.h"

#include "gtest/gtest.h"

namespace axeq {
namespace {

TEST(Convert, OptionsRoundTripAndDefaults) {
  auto d = OptionsFromProto(v1::QuantizationConfig{});
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->weights.bits, 4);
  EXPECT_EQ(d->inputs.bits, 8);
  EXPECT_EQ(d->method, Method::kAxe);
  LayerOptions o;
  o.algorithm = Algorithm::kGpfq;
  o.method = Method::kEpInit;
  o.weights.bits = 3;
  o.accumulator.bits = 17;
  o.accumulator.tile_size = 64;
  o.rounding = Rounding::kToZero;
  o.soft_threshold = false;
  o.precision = Precision::kFloat64;
  auto back = OptionsFromProto(OptionsToProto(o));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(OptionsToProto(*back).SerializeAsString(), OptionsToProto(o).SerializeAsString());
  v1::QuantizationConfig bad;
  bad.set_weight_bits(12);
  auto e = OptionsFromProto(bad);
  EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(e.status().message().find("weight_bits"), std::string::npos);
  bad = {};
  bad.set_algorithm(static_cast<v1::Algorithm>(9));
  EXPECT_EQ(OptionsFromProto(bad).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Convert, CertificateRoundTrip) {
  MatrixXi8 q(2, 3);
  q << 1, -2, 3, 0, 0, -1;
  AccumulatorSpec acc;
  acc.bits = 11;
  acc.tile_size = 2;
  const Certificate c = MakeCertificate(q, 4, InputSpec{}, acc);
  EXPECT_TRUE(VerifyCertificate(q, CertificateFromProto(CertificateToProto(c))).consistent);
}

TEST(Convert, ChunkRangesCoverAndAlign) {
  auto r = ChunkRanges(1000, 300, 12);
  int64_t next = 0;
  for (auto [b, e] : r) {
    EXPECT_EQ(b, next);
    EXPECT_LE(e - b, 300);
    EXPECT_EQ(b % 12, 0);
    next = e;
  }
  EXPECT_EQ(next, 1000);
  EXPECT_TRUE(ChunkRanges(0, 300, 4).empty());
}

TEST(Convert, StatusCodesMap) {
  EXPECT_EQ(ToGrpc(absl::ResourceExhaustedError("x")).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(FromGrpc(grpc::Status(grpc::StatusCode::PERMISSION_DENIED, "y")).code(), absl::StatusCode::kPermissionDenied);
}

}  // namespace
}  // namespace axeq
