// What an upload carries, decided once for both ends: a LayerHeader <-> UploadPlan codec (the
// header's promises, validated, and the list of tensors that follow it, with shapes and byte sizes
// in the order the client libraries send them), and the messages of the upload sequence. The
// server checks arriving chunks against the plan; the C++ client sends exactly the plan.
#ifndef AXEQ_PROTO_UPLOAD_H_
#define AXEQ_PROTO_UPLOAD_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "axeq/v1/axeq.pb.h"
#include "core/options.h"
#include "core/quantizer.h"

namespace axeq {

// Payload bytes per chunk message (well under gRPC's 4 MiB default message limit with headers).
inline constexpr int64_t kChunkBytes = 3 << 20;
// The most payload one chunk may carry (the server refuses more).
inline constexpr int64_t kMaxChunkPayloadBytes = 4 << 20;
// The server's receive limit (a chunk plus its envelope) and both ends' send/receive limit for
// results (one whole certificate travels in Finished).
inline constexpr int kMaxUploadMessageBytes = 8 << 20;
inline constexpr int kMaxMessageBytes = 64 << 20;
// Shape limits of one layer.
inline constexpr int64_t kMaxOutputChannels = int64_t{1} << 20;
inline constexpr int64_t kMaxInputs = int64_t{1} << 17;
inline constexpr size_t kMaxLayerName = 512;

// Returns [begin, end) byte ranges of at most `chunk` bytes covering [0, total), aligned to
// `align`.
std::vector<std::pair<int64_t, int64_t>> ChunkRanges(int64_t total, int64_t chunk, int64_t align);

// One float32 tensor of an upload, row-major [rows, cols].
struct UploadTensor {
  v1::TensorKind kind = v1::TENSOR_KIND_UNSPECIFIED;
  int64_t rows = 0, cols = 0;
  // May be left out entirely (CROSS with OPTQ: read only for the report's error against float
  // inputs, which needs XX too; the client libraries send it iff XX is sent).
  bool optional = false;
  int64_t elements() const { return rows * cols; }
  int64_t bytes() const { return 4 * rows * cols; }
  std::string name() const;  // "WEIGHT", "GRAM", ...
};

// A layer upload as both ends see it. ROWS: WEIGHT [C,K], BIAS [C] if has_bias, then RowsChunks
// of X (and X~) [D,K]; the server folds them into X~^T X~, X~^T X and, unless
// options.quality_report is false, X^T X (has_xx and has_means are ignored). STATISTICS, in
// sending order: GRAM [K,K] first (the server starts OPTQ's factorization on it), WEIGHT, BIAS,
// CROSS [K,K] (required for GPFQ), XX [K,K] if has_xx, MEAN_X and MEAN_XQ [K] if has_means.
struct UploadPlan {
  std::string layer_name;
  int64_t output_channels = 0, inputs = 0;  // C, K
  LayerOptions options;
  ActivationQuantizer activations;
  bool rows = false;    // ROWS calibration, else STATISTICS
  int64_t samples = 0;  // STATISTICS: the D the statistics were normalised by
  bool has_bias = false, has_xx = false, has_means = false;
  std::string idempotency_key;
  bool detach = false;
  std::vector<UploadTensor> tensors;  // filled by PlanTensors / DecodeHeader

  // Rows mode: whether the server accumulates X^T X (the relative error against float inputs).
  bool rows_keep_xx() const { return rows && options.quality_report; }
  const UploadTensor* Find(v1::TensorKind kind) const;
  // Bytes of every tensor (optional ones included; rows not counted).
  int64_t TensorBytes() const;
};

// Fills plan->tensors from the other fields (the one rule both ends use).
void PlanTensors(UploadPlan* plan);

// The header of `plan`.
v1::LayerHeader EncodeHeader(const UploadPlan& plan);
// Validates a header and returns its plan: INVALID_ARGUMENT naming the field (empty or long name,
// shape out of range, option out of range, activations that disagree with the config,
// calibration kind, samples < 1 with STATISTICS).
absl::StatusOr<UploadPlan> DecodeHeader(const v1::LayerHeader& header);

// The messages of the upload sequence: header, chunks, commit.
v1::UploadRequest HeaderMessage(const UploadPlan& plan);
// A tensor chunk: elements [offset, offset + bytes / 4) of `kind` (copies the bytes).
void SetTensorChunk(v1::TensorKind kind, int64_t offset, const void* data, int64_t bytes,
                    v1::UploadRequest* out);
// Whole rows [row_offset, row_offset + n) of X and, if xq is not null, X~ (row-major, K wide).
void SetRowsChunk(int64_t row_offset, int64_t n, int64_t k, const float* x, const float* xq,
                  v1::UploadRequest* out);
v1::UploadRequest CommitMessage(int64_t chunks);
// Rows per RowsChunk so that X and X~ together stay within kChunkBytes.
int64_t RowsPerChunk(int64_t k, bool with_xq);

}  // namespace axeq

#endif  // AXEQ_PROTO_UPLOAD_H_
