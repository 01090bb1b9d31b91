#include "proto/wire.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "grpcpp/support/proto_buffer_reader.h"

namespace axeq {
namespace {

// Protobuf wire constants of UploadRequest.tensor (field 2) and TensorChunk's fields.
constexpr uint64_t kUploadTensorTag = (2 << 3) | 2;
constexpr uint64_t kKindTag = (1 << 3) | 0;
constexpr uint64_t kOffsetTag = (2 << 3) | 0;
constexpr uint64_t kDataTag = (3 << 3) | 2;

void PutVarint(uint64_t v, std::string* out) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

// Reads bytes across the received slices.
class Cursor {
 public:
  Cursor(const std::vector<grpc::Slice>& slices, size_t total) : slices_(slices), left_(total) {}
  size_t left() const { return left_; }
  bool Byte(uint8_t* b) {
    while (i_ < slices_.size() && pos_ == slices_[i_].size()) {
      ++i_;
      pos_ = 0;
    }
    if (i_ == slices_.size() || left_ == 0) return false;
    *b = slices_[i_].begin()[pos_++];
    --left_;
    return true;
  }
  bool Varint(uint64_t* v) {
    *v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      uint8_t b;
      if (!Byte(&b)) return false;
      if (shift == 63 && b > 1) return false;
      *v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return true;
    }
    return false;
  }
  // The next n bytes as views (no copy).
  bool Take(size_t n, std::vector<absl::Span<const char>>* out) {
    if (n > left_) return false;
    left_ -= n;
    while (n > 0) {
      if (i_ == slices_.size()) return false;
      const size_t avail = slices_[i_].size() - pos_;
      const size_t take = std::min(avail, n);
      if (take > 0) out->emplace_back(reinterpret_cast<const char*>(slices_[i_].begin()) + pos_, take);
      pos_ += take;
      n -= take;
      if (pos_ == slices_[i_].size()) {
        ++i_;
        pos_ = 0;
      }
    }
    return true;
  }

 private:
  const std::vector<grpc::Slice>& slices_;
  size_t i_ = 0, pos_ = 0, left_;
};

// The fast path: exactly one UploadRequest.tensor field whose TensorChunk holds only known
// fields. Returns false (nothing decided) for anything else; protobuf then has the last word.
bool DecodeTensorFast(DecodedUpload* d) {
  Cursor c(d->slices, d->wire_bytes);
  uint64_t tag = 0, len = 0;
  if (!c.Varint(&tag) || tag != kUploadTensorTag || !c.Varint(&len) || len != c.left()) return false;
  int kind = 0;
  int64_t offset = 0;
  std::vector<absl::Span<const char>> payload;
  size_t bytes = 0;
  while (c.left() > 0) {
    uint64_t v = 0;
    if (!c.Varint(&tag)) return false;
    if (tag == kKindTag) {
      if (!c.Varint(&v)) return false;
      kind = static_cast<int>(static_cast<int32_t>(v));  // proto3 enum: int32 semantics
    } else if (tag == kOffsetTag) {
      if (!c.Varint(&v)) return false;
      offset = static_cast<int64_t>(v);
    } else if (tag == kDataTag) {
      if (!c.Varint(&v) || v > c.left()) return false;
      payload.clear();  // the last occurrence wins, as in protobuf
      if (!c.Take(v, &payload)) return false;
      bytes = v;
    } else {
      return false;
    }
  }
  d->is_tensor = true;
  d->kind = kind;
  d->offset = offset;
  d->payload = std::move(payload);
  d->payload_bytes = bytes;
  return true;
}

}  // namespace

grpc::Slice SliceLease::Borrow(const void* data, size_t bytes) {
  {
    std::lock_guard<std::mutex> l(mu_);
    ++outstanding_;
  }
  return grpc::Slice(const_cast<void*>(data), bytes, &SliceLease::Release, this);
}

void SliceLease::Release(void* self) {
  auto* lease = static_cast<SliceLease*>(self);
  std::lock_guard<std::mutex> l(lease->mu_);
  if (--lease->outstanding_ == 0) lease->cv_.notify_all();
}

void SliceLease::Wait() {
  std::unique_lock<std::mutex> l(mu_);
  cv_.wait(l, [&] { return outstanding_ == 0; });
}

int64_t SliceLease::outstanding() {
  std::lock_guard<std::mutex> l(mu_);
  return outstanding_;
}

grpc::ByteBuffer EncodeTensorChunk(int kind, int64_t offset, const void* data, size_t bytes, SliceLease* lease) {
  std::string inner;
  inner.push_back(static_cast<char>(kKindTag));
  PutVarint(static_cast<uint64_t>(static_cast<int64_t>(kind)), &inner);
  inner.push_back(static_cast<char>(kOffsetTag));
  PutVarint(static_cast<uint64_t>(offset), &inner);
  inner.push_back(static_cast<char>(kDataTag));
  PutVarint(bytes, &inner);
  std::string prefix;
  prefix.push_back(static_cast<char>(kUploadTensorTag));
  PutVarint(inner.size() + bytes, &prefix);
  prefix += inner;
  if (bytes == 0) {
    grpc::Slice s(prefix);
    return grpc::ByteBuffer(&s, 1);
  }
  grpc::Slice s[2] = {grpc::Slice(prefix), lease->Borrow(data, bytes)};
  return grpc::ByteBuffer(s, 2);
}

grpc::ByteBuffer EncodeMessage(const google::protobuf::MessageLite& m) {
  grpc::Slice s(m.SerializeAsString());
  return grpc::ByteBuffer(&s, 1);
}

absl::Status DecodeUpload(const grpc::ByteBuffer& buffer, DecodedUpload* out) {
  *out = DecodedUpload{};
  out->wire_bytes = buffer.Length();
  if (!buffer.Dump(&out->slices).ok()) return absl::InvalidArgumentError("upload message could not be read");
  if (DecodeTensorFast(out)) return absl::OkStatus();
  grpc::ByteBuffer copy(buffer);  // shares the slices
  grpc::ProtoBufferReader reader(&copy);
  if (!out->message.ParseFromZeroCopyStream(&reader))
    return absl::InvalidArgumentError(absl::StrCat("upload message of ", out->wire_bytes, " bytes is not a valid axeq.v1.UploadRequest"));
  if (out->message.kind_case() == v1::UploadRequest::kTensor) {
    const v1::TensorChunk& t = out->message.tensor();
    out->is_tensor = true;
    out->kind = t.tensor();
    out->offset = t.offset();
    out->payload.emplace_back(t.data().data(), t.data().size());
    out->payload_bytes = t.data().size();
  }
  return absl::OkStatus();
}

void CopyPayload(const DecodedUpload& d, void* dst) {
  char* p = static_cast<char*>(dst);
  for (const auto& s : d.payload) {
    std::memcpy(p, s.data(), s.size());
    p += s.size();
  }
}

}  // namespace axeq
