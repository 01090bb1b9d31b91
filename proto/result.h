// The result side of the wire, decided once for both ends: the JobEvents a job streams (progress,
// ResultChunks, Finished), one encoder of a QuantizedLayer (the server) and one decoder back into
// a QuantizedLayer (the C++ client), the status a Finished or a job state stands for, and the
// JobInfo of ListJobs.
#ifndef AXEQ_PROTO_RESULT_H_
#define AXEQ_PROTO_RESULT_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "axeq/v1/axeq.pb.h"
#include "core/job_state.h"
#include "core/quantized_layer.h"

namespace axeq {

// Job states and progress (core/job_state.h) <-> the wire. UNSPECIFIED and unknown values decode
// to kUnknown.
v1::JobState EncodeState(JobState state);
JobState DecodeState(v1::JobState state);
v1::Progress EncodeProgress(const JobSnapshot& progress);
JobSnapshot DecodeProgress(const v1::Progress& progress);
// "JOB_STATE_RUNNING" for kRunning: the wire's name (metrics labels, the client's progress).
std::string WireStateName(JobState state);

// The summary of a finished layer (state SUCCEEDED): everything but codes, scales and bias,
// which travel as ResultChunks.
v1::Finished EncodeFinished(const QuantizedLayer& layer);
// The summary of a job that ended without a result: TerminalState(status), code and message.
v1::Finished EncodeFailure(const absl::Status& status);
// The summary of a job that ended with `status`: EncodeFinished(*result) when OK, else
// EncodeFailure(status).
v1::Finished EncodeOutcome(const absl::Status& status, const QuantizedLayer* result);
// The status a summary stands for: OK for SUCCEEDED, else its code and message (UNKNOWN if a
// failed summary carries code 0).
absl::Status FinishedStatus(const v1::Finished& finished);

v1::JobEvent ProgressEvent(const std::string& job_id, const JobSnapshot& progress);
v1::JobEvent FinishedEvent(const std::string& job_id, const v1::Finished& finished);
// Calls emit with each ResultChunk event of codes (int8 [C,K] row-major), scales (float32
// [C,groups]) and bias (float32 [C], if any), in that order, in chunks of at most kChunkBytes.
// Stops and returns false as soon as emit does.
bool EmitResultChunks(const std::string& job_id, const MatrixXi8& codes, const MatrixXf& scales,
                      const Eigen::VectorXf* bias,
                      const std::function<bool(const v1::JobEvent&)>& emit);

// Rebuilds a QuantizedLayer from the events of Quantize or Watch{include_result}.
class ResultDecoder {
 public:
  // Takes one event: remembers the job id, reports progress through `progress` if set, appends
  // result chunks (DATA_LOSS when out of order or of unknown part).
  absl::Status Add(const v1::JobEvent& event,
                   const std::function<void(const JobSnapshot&)>& progress = {});
  bool finished() const { return has_finished_; }
  // A summary arrived and says SUCCEEDED (the result may still be incomplete).
  bool succeeded() const { return has_finished_ && finished_.state() == v1::JOB_STATE_SUCCEEDED; }
  const std::string& job_id() const { return job_id_; }
  // The layer: the job's error for a failed summary; DATA_LOSS without a summary, with result
  // sizes that do not match it, or with an inconsistent certificate.
  absl::StatusOr<QuantizedLayer> Finish() const;

 private:
  std::string job_id_, codes_, scales_, bias_;
  v1::Finished finished_;
  bool has_finished_ = false;
};

v1::JobInfo EncodeJobInfo(const std::string& job_id, const std::string& layer_name, JobState state,
                          int64_t created_unix_ms);

}  // namespace axeq

#endif  // AXEQ_PROTO_RESULT_H_
