// One upload in progress on the server: the header's plan (proto/upload.h) and what has arrived
// so far. Checks every tensor or rows chunk against the plan (kind, offset, size, finite values),
// copies tensor bytes once into the layer's buffers (rows are folded into statistics as they
// arrive), starts OPTQ's factorization as soon as the Gram matrix is complete, computes the
// content digest for idempotency, and at the commit builds the job's input.
#ifndef AXEQ_SERVER_UPLOAD_H_
#define AXEQ_SERVER_UPLOAD_H_

#define XXH_INLINE_ALL
#include <xxhash.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <future>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "axeq/v1/axeq.pb.h"
#include "proto/upload.h"
#include "server/job_manager.h"

namespace axeq::server {

// XXH3-128, streaming. Content digests only tell a principal's resubmissions apart (idempotency
// keys are per principal), so a fast non-cryptographic hash suffices: at tens of GB/s it runs
// inline on the receiving thread, on bytes that were just copied and are still in cache.
class ContentDigest {
 public:
  ContentDigest() : state_(XXH3_createState()) { XXH3_128bits_reset(state_); }
  ~ContentDigest() { XXH3_freeState(state_); }
  ContentDigest(const ContentDigest&) = delete;
  ContentDigest& operator=(const ContentDigest&) = delete;
  void Update(const void* data, size_t size) { XXH3_128bits_update(state_, data, size); }
  XXH128_hash_t Final() const { return XXH3_128bits_digest(state_); }

 private:
  XXH3_state_t* state_;
};

class Upload {
 public:
  // `jobs` lends its engine threads (rows accumulation, OPTQ's early factorization).
  Upload(UploadPlan plan, JobManager* jobs);
  ~Upload();  // an upload that fails or is abandoned stops its factorization
  Upload(const Upload&) = delete;
  Upload& operator=(const Upload&) = delete;

  const UploadPlan& plan() const { return plan_; }
  // Bytes this job will hold at its peak (upload buffers, statistics, engine work, result).
  int64_t EstimateBytes() const;
  // A tensor chunk: one copy into the layer buffer, allocated at full shape on its first chunk.
  // INVALID_ARGUMENT naming the tensor for an unexpected kind, a bad offset or size, NaN/Inf.
  absl::Status AddTensor(const v1::TensorChunk& t);
  // Calibration rows (ROWS uploads), folded into the statistics; INVALID_ARGUMENT as above.
  absl::Status AddRows(const v1::RowsChunk& r);
  // Checks the commit and builds the job's input; INVALID_ARGUMENT / FAILED_PRECONDITION.
  absl::StatusOr<std::unique_ptr<JobInput>> Finish(const v1::Commit& commit);
  // The content digest for idempotency: "xxh3-128:" and 32 hex digits over the header and every
  // tensor and row byte in arrival order.
  std::string DigestHex();
  // The header's bytes (minus detach, which does not change the content) open the digest.
  void HashHeader(v1::LayerHeader h);

 private:
  static constexpr int kKinds = 8;
  void Hash(int64_t tag, const void* data, size_t size);
  void StartFactor();

  UploadPlan plan_;
  JobManager* jobs_;
  RunContext compute_;
  int64_t rows_ = 0, chunks_ = 0;
  std::array<MatrixXf, kKinds> data_;
  std::array<int64_t, kKinds> filled_{};
  std::unique_ptr<StatsAccumulator> acc_;
  ContentDigest digest_, rows_digest_;
  std::shared_ptr<std::atomic<bool>> factor_stop_ = std::make_shared<std::atomic<bool>>(false);
  // Last member: destroyed (joined) first, while the buffers it reads still exist.
  std::future<absl::StatusOr<std::shared_ptr<const OptqFactor>>> factor_;
};

}  // namespace axeq::server

#endif  // AXEQ_SERVER_UPLOAD_H_
