// The wire codec (proto/ owns every axeq.v1 <-> core conversion; server/ and client/ call it and
// build no message field by field): options, activation quantizer, certificate, quality report and
// status <-> gRPC status here; the upload (header <-> plan, chunks) in upload.h; the result
// (Finished <-> QuantizedLayer, result chunks, events, job states) in result.h.
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
#include "proto/result.h"
#include "proto/upload.h"

namespace axeq {

// Applies the paper's defaults to zero fields and validates (INVALID_ARGUMENT naming the field).
absl::StatusOr<LayerOptions> OptionsFromProto(const v1::QuantizationConfig& c);
v1::QuantizationConfig OptionsToProto(const LayerOptions& o);

absl::StatusOr<ActivationQuantizer> ActivationsFromProto(const v1::ActivationQuantizer& a);
v1::ActivationQuantizer ActivationsToProto(const ActivationQuantizer& a);

v1::Certificate CertificateToProto(const Certificate& c);
// DATA_LOSS when the stated input range or tile is not that of the stated specs.
absl::StatusOr<Certificate> CertificateFromProto(const v1::Certificate& c);

// The report and the run info of a layer (QualityReport carries both, and the bit widths).
v1::QualityReport ReportToProto(const QuantizedLayer& r);
// Fills r->report, r->run (but job_id) and r->bias_corrected.
void ReportFromProto(const v1::QualityReport& p, QuantizedLayer* r);

// absl and gRPC share google.rpc.Code numbering; these keep code and message.
grpc::Status ToGrpc(const absl::Status& s);
absl::Status FromGrpc(const grpc::Status& s);

}  // namespace axeq

#endif  // AXEQ_PROTO_CONVERT_H_
