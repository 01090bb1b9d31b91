// Round trips and malformed-input handling of safetensors and certificate JSON.
#include <cstdio>
#include <fstream>

#include "formats/certificate_json.h"
#include "formats/safetensors.h"
#include "gtest/gtest.h"

namespace axeq {
namespace {

std::string TempPath(const char* name) { return ::testing::TempDir() + name; }

TEST(Safetensors, RoundTripAndDtypes) {
  SafetensorsFile f;
  MatrixXf m(2, 3);
  m << 1, -2, 3.5f, 0, 1e-3f, -7;
  MatrixXi8 q(1, 2);
  q << -8, 7;
  f.tensors["a.weight"] = MatrixToTensor(m);
  f.tensors["a.qweight"] = CodesToTensor(q);
  f.tensors["a.zp"] = ScalarI32Tensor(128);
  f.metadata["a.certificate"] = "{}";
  const std::string p = TempPath("rt.safetensors");
  ASSERT_TRUE(WriteSafetensors(p, f).ok());
  auto r = ReadSafetensors(p);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*TensorToMatrix(r->tensors["a.weight"], "a.weight"), m);
  EXPECT_EQ(*TensorToCodes(r->tensors["a.qweight"], "a.qweight"), q);
  EXPECT_EQ(r->metadata["a.certificate"], "{}");
  // F16 and BF16 decode: 1.0 = 0x3c00 (F16), 0x3f80 (BF16); -2.0 = 0xc000 / 0xc000.
  Tensor h{"F16", {2}, {0x00, 0x3c, 0x00, 0xc0}};
  EXPECT_EQ((*TensorToMatrix(h, "h"))(0, 0), 1.0f);
  EXPECT_EQ((*TensorToMatrix(h, "h"))(0, 1), -2.0f);
  Tensor b{"BF16", {2}, {0x80, 0x3f, 0x00, 0xc0}};
  EXPECT_EQ((*TensorToMatrix(b, "b"))(0, 0), 1.0f);
  EXPECT_EQ((*TensorToMatrix(b, "b"))(0, 1), -2.0f);
}

TEST(Safetensors, MalformedFilesAreInvalidArgument) {
  const std::string p = TempPath("bad.safetensors");
  auto write = [&](const std::string& header, size_t data_bytes) {
    std::ofstream o(p, std::ios::binary);
    const uint64_t n = header.size();
    o.write(reinterpret_cast<const char*>(&n), 8);
    o << header << std::string(data_bytes, '\0');
  };
  write(R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})", 8);  // truncated data
  EXPECT_EQ(ReadSafetensors(p).status().code(), absl::StatusCode::kInvalidArgument);
  write(R"({"w":{"dtype":"Q4","shape":[2],"data_offsets":[0,2]}})", 2);
  EXPECT_EQ(ReadSafetensors(p).status().code(), absl::StatusCode::kInvalidArgument);
  write("not json", 0);
  EXPECT_EQ(ReadSafetensors(p).status().code(), absl::StatusCode::kInvalidArgument);
  {
    std::ofstream o(p, std::ios::binary);
    const uint64_t n = 1ull << 40;
    o.write(reinterpret_cast<const char*>(&n), 8);
  }
  EXPECT_EQ(ReadSafetensors(p).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadSafetensors(TempPath("missing.safetensors")).status().code(), absl::StatusCode::kNotFound);
}

TEST(CertificateJson, RoundTripAndMissingFields) {
  MatrixXi8 q(2, 3);
  q << 1, -2, 3, 0, 0, -1;
  AccumulatorSpec acc;
  acc.bits = 12;
  acc.tile_size = 2;
  Certificate c = MakeCertificate(q, 4, InputSpec{}, acc);
  auto back = CertificateFromJson(CertificateToJson(c));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(VerifyCertificate(q, *back).consistent);
  nlohmann::json j = CertificateToJson(c);
  j.erase("input_max");
  auto bad = CertificateFromJson(j);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("input_max"), std::string::npos);
}

}  // namespace
}  // namespace axeq
