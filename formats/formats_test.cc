// Round trips and malformed-input handling of safetensors and certificate JSON.
#include <cstdio>
#include <cstring>
#include <fstream>

#include "core/verify.h"
#include "formats/certificate_json.h"
#include "formats/result_file.h"
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
  EXPECT_EQ(ReadSafetensors(TempPath("missing.safetensors")).status().code(),
            absl::StatusCode::kNotFound);
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

// Issue 10, point 4: a shape whose element count overflows int64 is an error, never an allocation.
TEST(Safetensors, OverflowingShapesAreInvalidArgument) {
  for (const char* shape : {"[4294967296, 4294967296, 4]", "[9223372036854775807, 2]",
                            "[18446744073709551615]", "[-1, 2]", "[1.5]"}) {
    std::string header =
        std::string(R"({"t":{"dtype":"F32","shape":)") + shape + R"(,"data_offsets":[0,0]}})";
    std::string bytes(8, '\0');
    const uint64_t n = header.size();
    std::memcpy(bytes.data(), &n, 8);
    bytes += header;
    auto r = ParseSafetensors(bytes, "mem");
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << shape;
  }
}

QuantizedLayer SampleLayer(const std::string& name, int group_size) {
  QuantizedLayer l;
  l.name = name;
  l.codes.resize(3, 10);
  for (int64_t i = 0; i < l.codes.size(); ++i) l.codes.data()[i] = static_cast<int8_t>(i % 15 - 7);
  l.group_size = group_size;
  l.scales = MatrixXf::Constant(3, NumGroups(10, group_size), 0.25f);
  l.bias = Eigen::VectorXf::Constant(3, 0.5f);
  l.activations.spec = InputSpec{8, false};
  l.activations.scale = 0.1f;
  l.activations.zero_point = 3;
  l.certificate = MakeCertificate(l.codes, 4, l.activations.spec, AccumulatorSpec{16, 4});
  l.run.description = "test";
  return l;
}

TEST(ResultFile, RoundTripKeepsEveryField) {
  const std::vector<QuantizedLayer> layers = {SampleLayer("b.fc", 0), SampleLayer("a.fc", 4)};
  const std::string p = TempPath("result.safetensors");
  ASSERT_TRUE(WriteResultFile(p, layers).ok());
  auto back = ReadResultFile(p);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    const QuantizedLayer &a = layers[i], &b = (*back)[i];
    EXPECT_EQ(a.name, b.name);  // in the listed order, not alphabetical
    EXPECT_EQ(a.codes, b.codes);
    EXPECT_EQ(a.scales, b.scales);
    EXPECT_EQ(a.group_size, b.group_size);
    EXPECT_EQ(*a.bias, *b.bias);
    EXPECT_EQ(a.activations.scale, b.activations.scale);
    EXPECT_EQ(a.activations.zero_point, b.activations.zero_point);
    EXPECT_EQ(CertificateToJson(a.certificate), CertificateToJson(b.certificate));
    EXPECT_TRUE(VerifyCertificate(b.codes, b.certificate).ok());
    EXPECT_EQ(a.DequantizedWeights(), b.DequantizedWeights());
  }
}

// Issue 9: version-1 files whose writers put axeq.group_size = "0" beside group scales decode with
// the right group size (they crashed llama2c-eval with SIGFPE).
TEST(ResultFile, ReadsVersion1AndInfersTheGroupSize) {
  SafetensorsFile f = ResultToSafetensors({SampleLayer("fc", 4)});
  f.metadata.erase("axeq.schema_version");
  f.metadata.erase("axeq.layers");
  f.metadata["axeq.group_size"] = "0";
  auto back = DecodeResult(f);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ((*back)[0].group_size, 4);
  f.metadata["axeq.schema_version"] = "3";
  EXPECT_EQ(DecodeResult(f).status().code(), absl::StatusCode::kInvalidArgument);
}

// Issue 9 and 10: a layer whose tensors or certificate are missing or mis-shaped is an error
// naming the layer and the field, in v2 and in v1 files (a removed certificate is not skipped).
TEST(ResultFile, MissingOrMisshapedFieldsNameTheLayer) {
  auto expect_error = [](SafetensorsFile f, const std::string& field) {
    auto r = DecodeResult(f);
    ASSERT_FALSE(r.ok()) << field;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << r.status();
    EXPECT_NE(r.status().message().find("layer fc"), std::string::npos) << r.status();
    EXPECT_NE(r.status().message().find(field), std::string::npos) << r.status();
  };
  const SafetensorsFile good = ResultToSafetensors({SampleLayer("fc", 0)});
  for (const char* t : {".qweight", ".scales", ".input_scale", ".input_zero_point"}) {
    SafetensorsFile f = good;
    f.tensors.erase(std::string("fc") + t);
    expect_error(f, t);
  }
  SafetensorsFile f = good;
  f.metadata.erase("fc.certificate");
  expect_error(f, ".certificate");
  f.metadata.erase("axeq.schema_version");  // v1: found through its .qweight
  f.metadata.erase("axeq.layers");
  expect_error(f, ".certificate");
  f = good;
  f.tensors["fc.scales"] = MatrixToTensor(MatrixXf::Ones(2, 1));
  expect_error(f, ".scales");
  f = good;
  f.tensors["fc.bias"] = VectorToTensor(Eigen::VectorXf::Ones(7));
  expect_error(f, ".bias");
  f = good;
  f.tensors["fc.qweight"] = CodesToTensor(MatrixXi8::Zero(3, 11));
  expect_error(f, ".certificate");
  f = good;
  f.tensors["fc.qweight"].shape = {3, 11};  // the shape claims more than the bytes hold
  expect_error(f, ".qweight");
}

// Found by fuzz/result_fuzz (fuzz/crashes/result-report-max_l1-string): report and channel fields
// of the wrong JSON type are ignored or refused, never an uncaught exception.
TEST(ResultFile, WrongTypedJsonFieldsNeverThrow) {
  SafetensorsFile f = ResultToSafetensors({SampleLayer("fc", 0)});
  nlohmann::json rep = nlohmann::json::parse(f.metadata["fc.report"]);
  for (const char* key :
       {"max_l1", "sparsity", "method", "damping_retries", "seconds", "bias_corrected"})
    rep[key] = nlohmann::json::array({"x"});
  f.metadata["fc.report"] = rep.dump();
  nlohmann::json cert = nlohmann::json::parse(f.metadata["fc.certificate"]);
  cert["channels"][0]["tile"] = "zero";
  f.metadata["fc.certificate"] = cert.dump();
  absl::StatusOr<std::vector<QuantizedLayer>> r = absl::UnknownError("not run");
  EXPECT_NO_THROW(r = DecodeResult(f));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)[0].report.max_l1, 0);
}

TEST(CertificateJson, StatedRangesMustMatchTheSpecs) {
  MatrixXi8 q = MatrixXi8::Ones(2, 8);
  nlohmann::json j = CertificateToJson(MakeCertificate(q, 4, InputSpec{}, AccumulatorSpec{16, 4}));
  j["input_max"] = 7;  // a narrower range than 8-bit unsigned codes
  EXPECT_EQ(CertificateFromJson(j).status().code(), absl::StatusCode::kInvalidArgument);
  j = CertificateToJson(MakeCertificate(q, 4, InputSpec{}, AccumulatorSpec{16, 4}));
  j["tile_size"] = 9;
  EXPECT_EQ(CertificateFromJson(j).status().code(), absl::StatusCode::kInvalidArgument);
  j["tile_size"] = 4;
  j["input_bits"] = 62;
  EXPECT_EQ(CertificateFromJson(j).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace axeq
