// The certificate as JSON (docs/certificate.md): what the CLI writes into safetensors metadata
// (`<layer>.certificate`) and what `axeq verify` and the Python client read back.
#ifndef AXEQ_FORMATS_CERTIFICATE_JSON_H_
#define AXEQ_FORMATS_CERTIFICATE_JSON_H_

#include <string>

#include "absl/status/statusor.h"
#include "core/certificate.h"
#include "nlohmann/json.hpp"

namespace axeq {

inline constexpr int kCertificateSchemaVersion = 1;

nlohmann::json CertificateToJson(const Certificate& cert);
// INVALID_ARGUMENT naming the missing or mistyped field.
absl::StatusOr<Certificate> CertificateFromJson(const nlohmann::json& j);
absl::StatusOr<Certificate> ParseCertificate(const std::string& text);

}  // namespace axeq

#endif  // AXEQ_FORMATS_CERTIFICATE_JSON_H_
