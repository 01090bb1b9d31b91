// Overflow certificates: exact int64 worst-case ranges per (channel, tile), minimal accumulator
// widths, SHA-256 binding, and an independent verifier.
#include "core/certificate.h"

#include <openssl/evp.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/bounds.h"
#include "core/greedy_kernel.h"

namespace axeq {

std::string CodesSha256(const Eigen::Ref<const MatrixXi8>& codes) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  for (int64_t r = 0; r < codes.rows(); ++r) {
    const Eigen::Matrix<int8_t, 1, Eigen::Dynamic> row = codes.row(r);
    EVP_DigestUpdate(ctx, row.data(), static_cast<size_t>(row.size()));
  }
  EVP_DigestFinal_ex(ctx, md, &len);
  EVP_MD_CTX_free(ctx);
  std::string hex;
  for (unsigned int i = 0; i < len; ++i) absl::StrAppendFormat(&hex, "%02x", md[i]);
  return hex;
}

std::string CertificateAssumptions(const Certificate& c) {
  return absl::StrCat(
      "Inputs are ", c.input.bits, "-bit integer codes in [", c.input_min(), ", ", c.input_max(),
      "] (", c.input.is_signed ? "signed" : "unsigned; the zero-point correction",
      " is applied outside "
      "the accumulator",
      c.input.is_signed ? "" : "", "); weights are the certified ", c.weight_bits,
      "-bit codes; the bias and scales are applied outside the accumulator. Each tile of ",
      c.tile_size(), " consecutive inputs (original input order) accumulates into a signed ",
      c.accumulator.bits, "-bit register holding [",
      -AccumulatorMinMagnitude(c.accumulator.bits, c.accumulator.twos_complement), ", ",
      AccumulatorMax(c.accumulator.bits), "]; tile sums accumulate into a ",
      c.outer_accumulator_bits,
      "-bit outer register. Every partial sum in any order lies in the "
      "channel's [lo, hi], so wrapping and saturating registers are both safe.");
}

Certificate MakeCertificate(const Eigen::Ref<const MatrixXi8>& codes, int weight_bits,
                            const InputSpec& inputs, const AccumulatorSpec& acc,
                            const RunContext& ctx) {
  Certificate cert;
  const int64_t c = codes.rows(), k = codes.cols();
  cert.output_channels = c;
  cert.inputs = k;
  cert.weight_bits = weight_bits;
  cert.input = inputs;
  cert.accumulator = acc;
  cert.outer_accumulator_bits = OuterAccumulatorBits(acc, k);
  cert.weights_sha256 = CodesSha256(codes);
  const int64_t mu = cert.input_min(), nu = cert.input_max(), t = cert.tile_size();
  cert.channels.resize(c);
  std::vector<int> worst_bits(c, -1);
  (void)internal::RunChunked(c, ctx, [&](int64_t row0, int64_t rows) -> absl::Status {
    for (int64_t r = row0; r < row0 + rows; ++r) {
      ChannelBound& ch = cert.channels[r];
      int64_t worst_mag = -1;
      for (int64_t j = 0, begin = 0; begin < k; ++j, begin += t) {
        int64_t lo = 0, hi = 0;
        for (int64_t i = begin; i < std::min(k, begin + t); ++i) {
          const int64_t q = codes(r, i);
          hi += std::max(q * mu, q * nu);
          lo += std::min(q * mu, q * nu);
        }
        ch.row_lo += lo;
        ch.row_hi += hi;
        const int bits = MinAccumulatorBits(lo, hi, acc.twos_complement);
        const int64_t mag = std::max(hi, -lo);
        if (bits > worst_bits[r] || (bits == worst_bits[r] && mag > worst_mag)) {
          worst_bits[r] = bits;
          worst_mag = mag;
          ch.lo = lo;
          ch.hi = hi;
          ch.worst_tile = j;
        }
      }
    }
    return absl::OkStatus();
  });
  const int64_t pos = AccumulatorMax(acc.bits);
  const int64_t neg = AccumulatorMinMagnitude(acc.bits, acc.twos_complement);
  const int64_t pos_o = AccumulatorMax(cert.outer_accumulator_bits);
  const int64_t neg_o = AccumulatorMinMagnitude(cert.outer_accumulator_bits, acc.twos_complement);
  int min_bits = 1, min_outer = 1;
  bool rows_fit = true;
  for (int64_t r = 0; r < c; ++r) {
    const ChannelBound& ch = cert.channels[r];
    min_bits = std::max(min_bits, worst_bits[r]);
    min_outer = std::max(min_outer, MinAccumulatorBits(ch.row_lo, ch.row_hi, acc.twos_complement));
    if (ch.hi > pos || -ch.lo > neg) ++cert.unsafe_channels;
    if (ch.row_hi > pos_o || -ch.row_lo > neg_o) rows_fit = false;
  }
  cert.min_accumulator_bits = min_bits;
  cert.min_outer_accumulator_bits = std::max(min_outer, min_bits);
  cert.safe = cert.unsafe_channels == 0 && rows_fit;
  return cert;
}

}  // namespace axeq
