// The upload path without copies. A tensor chunk is sent as a few bytes of protobuf framing plus a
// slice that points at the caller's floats, and received as views into the slices the transport
// filled. Both ends speak ordinary axeq.v1.UploadRequest wire bytes: any protobuf encoder's output
// is accepted (what the fast decoder does not recognise goes through protobuf), and what
// EncodeTensorChunk produces parses with any protobuf decoder.
#ifndef AXEQ_PROTO_WIRE_H_
#define AXEQ_PROTO_WIRE_H_

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "axeq/v1/axeq.pb.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/slice.h"

namespace axeq {

// Lends caller memory to the transport: each Borrow()ed slice is released by gRPC when it has
// been written; Wait() (and the destructor) block until all are, so the memory may then go.
class SliceLease {
 public:
  SliceLease() = default;
  SliceLease(const SliceLease&) = delete;
  SliceLease& operator=(const SliceLease&) = delete;
  ~SliceLease() { Wait(); }
  grpc::Slice Borrow(const void* data, size_t bytes);
  void Wait();
  int64_t outstanding();

 private:
  static void Release(void* self);
  std::mutex mu_;
  std::condition_variable cv_;
  int64_t outstanding_ = 0;
};

// UploadRequest{tensor: TensorChunk{tensor: kind, offset, data: [data, data + bytes)}}, with the
// payload lent (not copied) through `lease`.
grpc::ByteBuffer EncodeTensorChunk(int kind, int64_t offset, const void* data, size_t bytes, SliceLease* lease);
// Any message, serialized into the buffer (a copy: for headers, commits and the like).
grpc::ByteBuffer EncodeMessage(const google::protobuf::MessageLite& m);

// One received UploadRequest. A tensor chunk (is_tensor) comes as kind, offset and its payload as
// views into `slices`, which keeps the received memory alive; anything else is parsed into
// `message`.
struct DecodedUpload {
  v1::UploadRequest message;
  bool is_tensor = false;
  int kind = 0;
  int64_t offset = 0;
  std::vector<absl::Span<const char>> payload;
  size_t payload_bytes = 0;
  size_t wire_bytes = 0;
  std::vector<grpc::Slice> slices;
};

// INVALID_ARGUMENT if the bytes are not an UploadRequest.
absl::Status DecodeUpload(const grpc::ByteBuffer& buffer, DecodedUpload* out);

// Copies the payload into dst (payload_bytes bytes).
void CopyPayload(const DecodedUpload& d, void* dst);

}  // namespace axeq

#endif  // AXEQ_PROTO_WIRE_H_
