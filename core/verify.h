// The certificate verifier: a second, deliberately simple implementation of the overflow bound
// (Eq. 6-8, 21) that shares no code with core/certificate.cc (no bounds.h helpers, no
// MakeCertificate). It recomputes every claim from the codes in 128-bit arithmetic after checking
// that the stated bit widths are in the supported ranges, and checks the claims against what the
// caller pins (the hardware's P, T, N, signedness, M): a certificate honest for another datapath
// does not pass for this one.
#ifndef AXEQ_CORE_VERIFY_H_
#define AXEQ_CORE_VERIFY_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/certificate.h"

namespace axeq {

// What the target datapath is; each set field must equal the certificate's claim.
struct VerifyExpectations {
  std::optional<int> accumulator_bits;  // P (P_I when tiled)
  std::optional<int64_t> tile_size;     // T; 0 = monolithic (the certificate then states T = K)
  std::optional<int> input_bits;        // N
  std::optional<bool> inputs_signed;
  std::optional<int> weight_bits;  // M (codes must lie in the M-bit full alphabet)
};

struct Verification {
  bool consistent = false;            // every claim matches the recomputation from the codes
  bool safe = false;                  // the recomputed verdict (independent of the claims)
  bool as_expected = true;            // the pinned expectations match the certificate
  std::vector<std::string> problems;  // human-readable, empty when consistent and as expected
  bool ok() const { return consistent && safe && as_expected; }
};

// Supported ranges: M in [2, 8], N in [2, 16], P and P_O in [2, 64], 1 <= T <= K (T = 0 is read
// as monolithic), C, K >= 1. Anything outside is reported as a problem, never computed.
Verification VerifyCertificate(const Eigen::Ref<const MatrixXi8>& codes, const Certificate& claimed,
                               const VerifyExpectations& expect = {});

}  // namespace axeq

#endif  // AXEQ_CORE_VERIFY_H_
