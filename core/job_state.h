// The life of a quantization job, as the server keeps it and clients see it (the wire's
// v1::JobState is converted once, in proto/result.h). Receiving: the upload is arriving; Queued:
// waiting for a worker; Running; Cancelling: cancel was asked while it ran, it ends Cancelled
// within one block of the sweep; then one of the terminal states Succeeded, Failed, Cancelled.
#ifndef AXEQ_CORE_JOB_STATE_H_
#define AXEQ_CORE_JOB_STATE_H_

#include <cstdint>

#include "absl/status/status.h"

namespace axeq {

enum class JobState {
  kUnknown,
  kReceiving,
  kQueued,
  kRunning,
  kCancelling,
  kSucceeded,
  kFailed,
  kCancelled
};

// True for Succeeded, Failed and Cancelled: nothing follows.
inline bool IsTerminal(JobState s) {
  return s == JobState::kSucceeded || s == JobState::kFailed || s == JobState::kCancelled;
}

// The terminal state a job ends in with `status`: OK -> Succeeded; CANCELLED, DEADLINE_EXCEEDED
// and UNAVAILABLE (stopped by a draining server) -> Cancelled; anything else -> Failed.
inline JobState TerminalState(const absl::Status& status) {
  if (status.ok()) return JobState::kSucceeded;
  const absl::StatusCode c = status.code();
  if (c == absl::StatusCode::kCancelled || c == absl::StatusCode::kDeadlineExceeded ||
      c == absl::StatusCode::kUnavailable)
    return JobState::kCancelled;
  return JobState::kFailed;
}

// "RUNNING" for kRunning.
inline const char* JobStateName(JobState s) {
  switch (s) {
    case JobState::kReceiving:
      return "RECEIVING";
    case JobState::kQueued:
      return "QUEUED";
    case JobState::kRunning:
      return "RUNNING";
    case JobState::kCancelling:
      return "CANCELLING";
    case JobState::kSucceeded:
      return "SUCCEEDED";
    case JobState::kFailed:
      return "FAILED";
    case JobState::kCancelled:
      return "CANCELLED";
    case JobState::kUnknown:
      break;
  }
  return "UNKNOWN";
}

// Where a job stands: its state, the upload's bytes so far, the fraction of the sweep done and its
// place in the queue (1 = next; 0 when not queued).
struct JobSnapshot {
  JobState state = JobState::kUnknown;
  int64_t bytes_received = 0;
  double fraction = 0;
  int queue_position = 0;
};

}  // namespace axeq

#endif  // AXEQ_CORE_JOB_STATE_H_
