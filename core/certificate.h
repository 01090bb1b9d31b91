// The overflow certificate (DESIGN.md): for integer codes q and input codes in [mu, nu] with
// mu <= 0 <= nu, each (channel, tile) has the exact worst-case range
//   hi = sum_i max(q_i mu, q_i nu),  lo = sum_i min(q_i mu, q_i nu)   (Eq. 6-8, int64),
// and every partial sum, in any order, lies in [lo, hi] because each term straddles 0; so the
// guarantee holds for wrapping and saturating accumulators alike. The certificate is bound to the
// codes by a SHA-256 digest; core/verify.h re-checks it from the codes alone, sharing no code.
#ifndef AXEQ_CORE_CERTIFICATE_H_
#define AXEQ_CORE_CERTIFICATE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/types/span.h"
#include "core/context.h"
#include "core/options.h"
#include "core/quantizer.h"

namespace axeq {

struct ChannelBound {
  int64_t lo = 0;          // worst tile's minimum partial sum
  int64_t hi = 0;          // worst tile's maximum partial sum
  int64_t worst_tile = 0;  // index of that tile (original input order)
  int64_t row_lo = 0;      // whole-row range: what the outer accumulator must hold
  int64_t row_hi = 0;
};

struct Certificate {
  int64_t output_channels = 0;  // C
  int64_t inputs = 0;           // K
  int weight_bits = 0;          // M
  InputSpec input;              // N and signedness: input codes in [mu, nu] = [min_code, max_code]
  AccumulatorSpec accumulator;  // P (P_I of each tile when tiled), T, two's complement
  int outer_accumulator_bits = 0;      // P_O of Eq. 21 (= P when monolithic)
  int min_accumulator_bits = 0;        // smallest P_I all tiles fit (exact)
  int min_outer_accumulator_bits = 0;  // smallest P_O all rows fit (exact)
  std::string weights_sha256;          // of the codes as int8, row-major [C, K]
  std::vector<ChannelBound> channels;
  int64_t unsafe_channels = 0;  // channels with a tile outside [-(2^(P-1)-1), 2^(P-1)-1]
  bool safe = false;            // no unsafe channel and every row fits P_O

  int64_t input_min() const { return input.min_code(); }                   // mu
  int64_t input_max() const { return input.max_code(); }                   // nu
  int64_t tile_size() const { return accumulator.EffectiveTile(inputs); }  // T (K when monolithic)
};

// What the certificate assumes, stated in words for humans (zero-point and bias are added outside
// the accumulator; inputs are integer codes in [mu, nu]; tiles in original input order).
std::string CertificateAssumptions(const Certificate& cert);

// Returns the lowercase hex SHA-256 of the codes as int8, row-major (OpenSSL libcrypto).
std::string CodesSha256(const Eigen::Ref<const MatrixXi8>& codes);

// Computes the certificate of codes [C, K] for the given input code range and accumulator.
// Channels are processed in fixed chunks through ctx.parallel_for when given.
Certificate MakeCertificate(const Eigen::Ref<const MatrixXi8>& codes, int weight_bits,
                            const InputSpec& inputs, const AccumulatorSpec& acc,
                            const RunContext& ctx = {});

}  // namespace axeq

#endif  // AXEQ_CORE_CERTIFICATE_H_
