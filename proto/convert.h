// What client and server share about the wire: conversion between axeq.v1 messages and core types,
// status conversion (the one place it happens), and the chunk size and chunker both sides use.
#ifndef AXEQ_PROTO_CONVERT_H_
#define AXEQ_PROTO_CONVERT_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "axeq/v1/axeq.pb.h"
#include "core/certificate.h"
#include "core/layer.h"
#include "grpcpp/support/status.h"

namespace axeq {

// Payload bytes per chunk message (well under gRPC's 4 MiB default message limit with headers).
inline constexpr int64_t kChunkBytes = 3 << 20;
// The server's message limit: a chunk plus its envelope, or one whole certificate.
inline constexpr int kMaxMessageBytes = 64 << 20;

// Returns [begin, end) byte ranges of at most `chunk` bytes covering [0, total), aligned to `align`.
std::vector<std::pair<int64_t, int64_t>> ChunkRanges(int64_t total, int64_t chunk, int64_t align);

// Applies the paper's defaults to zero fields and validates (INVALID_ARGUMENT naming the field).
absl::StatusOr<LayerOptions> OptionsFromProto(const v1::QuantizationConfig& c);
v1::QuantizationConfig OptionsToProto(const LayerOptions& o);

absl::StatusOr<ActivationQuantizer> ActivationsFromProto(const v1::ActivationQuantizer& a);
v1::ActivationQuantizer ActivationsToProto(const ActivationQuantizer& a);

v1::Certificate CertificateToProto(const Certificate& c);
Certificate CertificateFromProto(const v1::Certificate& c);

v1::QualityReport ReportToProto(const LayerResult& r, int64_t samples, double seconds);

grpc::Status ToGrpc(const absl::Status& s);
absl::Status FromGrpc(const grpc::Status& s);

}  // namespace axeq

#endif  // AXEQ_PROTO_CONVERT_H_
