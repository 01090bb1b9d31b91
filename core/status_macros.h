// Small Status helpers missing from abseil 20220623: early-return macros for absl::Status and
// absl::StatusOr. Used across core/, server/ and client/.
#ifndef AXEQ_CORE_STATUS_MACROS_H_
#define AXEQ_CORE_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define AXEQ_STATUS_CONCAT_INNER_(a, b) a##b
#define AXEQ_STATUS_CONCAT_(a, b) AXEQ_STATUS_CONCAT_INNER_(a, b)

// Returns the status from the enclosing function if `expr` is not OK.
#define AXEQ_RETURN_IF_ERROR(expr)               \
  do {                                           \
    const ::absl::Status axeq_status_ = (expr);  \
    if (!axeq_status_.ok()) return axeq_status_; \
  } while (0)

#define AXEQ_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                \
  if (!tmp.ok()) return tmp.status();               \
  lhs = std::move(tmp).value()

// Evaluates `expr` (an absl::StatusOr<T>), returns its status on error, else assigns the value.
#define AXEQ_ASSIGN_OR_RETURN(lhs, expr) \
  AXEQ_ASSIGN_OR_RETURN_IMPL_(AXEQ_STATUS_CONCAT_(axeq_statusor_, __LINE__), lhs, expr)

#endif  // AXEQ_CORE_STATUS_MACROS_H_
