// The copy-free upload codec against protobuf: what EncodeTensorChunk writes parses with protobuf,
// what protobuf writes decodes (fast path or not) to the same chunk, however the bytes are split
// into slices, and malformed bytes are refused.
#include "proto/wire.h"

#include <cmath>
#include <limits>
#include <random>

#include "grpcpp/support/proto_buffer_reader.h"
#include "gtest/gtest.h"

namespace axeq {
namespace {

std::string Flatten(const grpc::ByteBuffer& b) {
  std::vector<grpc::Slice> s;
  EXPECT_TRUE(b.Dump(&s).ok());
  std::string out;
  for (const auto& x : s) out.append(reinterpret_cast<const char*>(x.begin()), x.size());
  return out;
}

// The same bytes, cut into slices of `piece` bytes (as a transport might deliver them).
grpc::ByteBuffer Split(const std::string& bytes, size_t piece) {
  std::vector<grpc::Slice> s;
  for (size_t i = 0; i < bytes.size(); i += piece) s.emplace_back(bytes.data() + i, std::min(piece, bytes.size() - i));
  return grpc::ByteBuffer(s.data(), s.size());
}

std::string Payload(const DecodedUpload& d) {
  std::string out(d.payload_bytes, '\0');
  CopyPayload(d, out.data());
  return out;
}

TEST(Wire, EncodedChunkIsAnUploadRequestForProtobuf) {
  std::vector<float> x(1000);
  for (size_t i = 0; i < x.size(); ++i) x[i] = 0.5f * static_cast<float>(i);
  SliceLease lease;
  for (int64_t offset : {int64_t{0}, int64_t{7}, int64_t{1} << 40}) {
    grpc::ByteBuffer b = EncodeTensorChunk(v1::TENSOR_KIND_CROSS, offset, x.data(), x.size() * 4, &lease);
    EXPECT_GT(lease.outstanding(), 0);  // lent, not copied
    v1::UploadRequest m;
    ASSERT_TRUE(m.ParseFromString(Flatten(b)));
    ASSERT_TRUE(m.has_tensor());
    EXPECT_EQ(m.tensor().tensor(), v1::TENSOR_KIND_CROSS);
    EXPECT_EQ(m.tensor().offset(), offset);
    EXPECT_EQ(m.tensor().data(), std::string(reinterpret_cast<const char*>(x.data()), x.size() * 4));
  }
  lease.Wait();  // every buffer above is gone: all slices returned
  EXPECT_EQ(lease.outstanding(), 0);
}

TEST(Wire, DecodesProtobufOutputAcrossAnySlicing) {
  std::mt19937 rng(3);
  for (int trial = 0; trial < 60; ++trial) {
    v1::UploadRequest m;
    auto* t = m.mutable_tensor();
    t->set_tensor(static_cast<v1::TensorKind>(1 + trial % 7));
    t->set_offset(trial % 3 == 0 ? 0 : static_cast<int64_t>(rng() % 100000));  // 0 is omitted on the wire
    std::string data(4 * (rng() % 300), '\0');
    for (auto& ch : data) ch = static_cast<char>(rng());
    t->set_data(data);
    const std::string bytes = m.SerializeAsString();
    for (size_t piece : {size_t{1}, size_t{3}, size_t{17}, bytes.size()}) {
      DecodedUpload d;
      ASSERT_TRUE(DecodeUpload(Split(bytes, piece), &d).ok());
      ASSERT_TRUE(d.is_tensor);
      EXPECT_EQ(d.kind, t->tensor());
      EXPECT_EQ(d.offset, t->offset());
      EXPECT_EQ(d.wire_bytes, bytes.size());
      EXPECT_EQ(Payload(d), data);
      EXPECT_FALSE(d.message.has_tensor()) << "fast path expected";
    }
  }
}

TEST(Wire, UnknownFieldsAndOtherKindsGoThroughProtobuf) {
  // A TensorChunk with an extra (unknown) field: the fast path steps aside, protobuf decodes it.
  v1::UploadRequest m;
  m.mutable_tensor()->set_tensor(v1::TENSOR_KIND_WEIGHT);
  m.mutable_tensor()->set_offset(12);
  m.mutable_tensor()->set_data(std::string(8, 'a'));
  std::string bytes = m.SerializeAsString();
  std::string inner = m.tensor().SerializeAsString() + std::string("\x28\x05", 2);  // field 5, varint 5
  std::string framed = std::string("\x12", 1) + static_cast<char>(inner.size()) + inner;
  DecodedUpload d;
  ASSERT_TRUE(DecodeUpload(Split(framed, 5), &d).ok());
  EXPECT_TRUE(d.is_tensor);
  EXPECT_TRUE(d.message.has_tensor());  // protobuf path
  EXPECT_EQ(d.kind, v1::TENSOR_KIND_WEIGHT);
  EXPECT_EQ(d.offset, 12);
  EXPECT_EQ(Payload(d), std::string(8, 'a'));

  v1::UploadRequest commit;
  commit.mutable_commit()->set_chunks(9);
  ASSERT_TRUE(DecodeUpload(EncodeMessage(commit), &d).ok());
  EXPECT_FALSE(d.is_tensor);
  EXPECT_EQ(d.message.commit().chunks(), 9);
}

TEST(Wire, MalformedBytesAreRefused) {
  v1::UploadRequest m;
  m.mutable_tensor()->set_offset(4);
  m.mutable_tensor()->set_data(std::string(64, 'x'));
  const std::string bytes = m.SerializeAsString();
  DecodedUpload d;
  // Truncated inside the payload, a length pointing past the end, and noise.
  EXPECT_EQ(DecodeUpload(Split(bytes.substr(0, bytes.size() - 3), 7), &d).code(), absl::StatusCode::kInvalidArgument);
  std::string longer = bytes;
  longer[1] = static_cast<char>(bytes[1] + 10);
  EXPECT_EQ(DecodeUpload(Split(longer, 7), &d).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DecodeUpload(Split(std::string("\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", 11), 2), &d).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Wire, MutatedBytesDecodeExactlyAsProtobufDoes) {
  // Byte flips, truncations and insertions of valid chunks: the decoder never accepts what protobuf
  // rejects, and whatever protobuf accepts as a tensor chunk decodes to the same chunk.
  std::mt19937 rng(9);
  int fast = 0, rejected = 0;
  for (int trial = 0; trial < 20000; ++trial) {
    v1::UploadRequest m;
    m.mutable_tensor()->set_tensor(static_cast<v1::TensorKind>(rng() % 8));
    m.mutable_tensor()->set_offset(rng() % 3 ? static_cast<int64_t>(rng() % 5000) : 0);
    m.mutable_tensor()->set_data(std::string(4 * (rng() % 40), static_cast<char>(rng())));
    std::string bytes = m.SerializeAsString();
    for (int e = 0, edits = 1 + static_cast<int>(rng() % 3); e < edits && !bytes.empty(); ++e) {
      const size_t at = rng() % bytes.size();
      switch (rng() % 3) {
        case 0: bytes[at] = static_cast<char>(rng()); break;
        case 1: bytes.resize(at); break;
        default: bytes.insert(at, 1, static_cast<char>(rng())); break;
      }
    }
    v1::UploadRequest want;
    const bool proto_ok = want.ParseFromString(bytes);
    DecodedUpload d;
    const absl::Status s = DecodeUpload(Split(bytes, 1 + rng() % 9), &d);
    if (!proto_ok) {
      EXPECT_FALSE(s.ok()) << "accepted bytes protobuf rejects, trial " << trial;
      ++rejected;
      continue;
    }
    ASSERT_TRUE(s.ok()) << s;
    ASSERT_EQ(d.is_tensor, want.has_tensor()) << trial;
    if (!want.has_tensor()) continue;
    fast += !d.message.has_tensor();
    EXPECT_EQ(d.kind, want.tensor().tensor()) << trial;
    EXPECT_EQ(d.offset, want.tensor().offset()) << trial;
    EXPECT_EQ(Payload(d), want.tensor().data()) << trial;
  }
  EXPECT_GT(fast, 1000);  // both paths were exercised
  EXPECT_GT(rejected, 1000);
}

}  // namespace
}  // namespace axeq
