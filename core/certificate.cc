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
      "Inputs are ", c.input_bits, "-bit integer codes in [", c.input_min, ", ", c.input_max,
      "] (", c.inputs_signed ? "signed" : "unsigned; the zero-point correction", " is applied outside "
      "the accumulator", c.inputs_signed ? "" : "", "); weights are the certified ", c.weight_bits,
      "-bit codes; the bias and scales are applied outside the accumulator. Each tile of ",
      c.tile_size, " consecutive inputs (original input order) accumulates into a signed ",
      c.accumulator_bits, "-bit register holding [", -AccumulatorMinMagnitude(c.accumulator_bits, c.twos_complement),
      ", ", AccumulatorMax(c.accumulator_bits), "]; tile sums accumulate into a ",
      c.outer_accumulator_bits, "-bit outer register. Every partial sum in any order lies in the "
      "channel's [lo, hi], so wrapping and saturating registers are both safe.");
}

Certificate MakeCertificate(const Eigen::Ref<const MatrixXi8>& codes, int weight_bits,
                            const InputSpec& inputs, const AccumulatorSpec& acc, const RunContext& ctx) {
  Certificate cert;
  const int64_t c = codes.rows(), k = codes.cols();
  cert.output_channels = c;
  cert.inputs = k;
  cert.weight_bits = weight_bits;
  cert.input_bits = inputs.bits;
  cert.inputs_signed = inputs.is_signed;
  cert.input_min = inputs.min_code();
  cert.input_max = inputs.max_code();
  cert.accumulator_bits = acc.bits;
  cert.tile_size = (acc.tile_size <= 0 || acc.tile_size > k) ? k : acc.tile_size;
  cert.twos_complement = acc.twos_complement;
  cert.outer_accumulator_bits = OuterAccumulatorBits(acc.bits, k, cert.tile_size);
  cert.weights_sha256 = CodesSha256(codes);
  const int64_t mu = cert.input_min, nu = cert.input_max, t = cert.tile_size;
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

Verification VerifyCertificate(const Eigen::Ref<const MatrixXi8>& codes,
                               const Certificate& claimed) {
  Verification v;
  if (claimed.input_min > 0 || claimed.input_max < 0 || claimed.accumulator_bits < 2 ||
      claimed.accumulator_bits > 64 || claimed.tile_size < 1) {
    v.problems.push_back(absl::StrCat("certificate assumptions are malformed: input range [",
                                      claimed.input_min, ", ", claimed.input_max, "], P = ",
                                      claimed.accumulator_bits, ", T = ", claimed.tile_size));
    return v;
  }
  // Recompute with the claimed assumptions; the input range is taken as stated, not re-derived.
  InputSpec inputs;
  inputs.bits = claimed.input_bits;
  inputs.is_signed = claimed.inputs_signed;
  AccumulatorSpec acc;
  acc.bits = claimed.accumulator_bits;
  acc.tile_size = claimed.tile_size;
  acc.twos_complement = claimed.twos_complement;
  Certificate re = MakeCertificate(codes, claimed.weight_bits, inputs, acc);
  if (re.input_min != claimed.input_min || re.input_max != claimed.input_max)
    v.problems.push_back(absl::StrCat("input range [", claimed.input_min, ", ", claimed.input_max,
                                      "] is not that of ", claimed.input_bits, "-bit ",
                                      claimed.inputs_signed ? "signed" : "unsigned", " codes"));
  auto check = [&](const char* field, auto got, auto want) {
    if (got != want) v.problems.push_back(absl::StrCat(field, ": claimed ", want, ", recomputed ", got));
  };
  check("output_channels", re.output_channels, claimed.output_channels);
  check("inputs", re.inputs, claimed.inputs);
  check("weights_sha256", re.weights_sha256, claimed.weights_sha256);
  check("outer_accumulator_bits", re.outer_accumulator_bits, claimed.outer_accumulator_bits);
  check("min_accumulator_bits", re.min_accumulator_bits, claimed.min_accumulator_bits);
  check("min_outer_accumulator_bits", re.min_outer_accumulator_bits,
        claimed.min_outer_accumulator_bits);
  check("unsafe_channels", re.unsafe_channels, claimed.unsafe_channels);
  check("safe", re.safe, claimed.safe);
  const int64_t max_codes = int64_t{1} << (std::clamp(claimed.weight_bits, 1, 8) - 1);
  if (codes.size() > 0 && (codes.cast<int>().maxCoeff() >= max_codes ||
                           codes.cast<int>().minCoeff() < -max_codes))
    v.problems.push_back(absl::StrCat("codes exceed the ", claimed.weight_bits, "-bit alphabet"));
  if (claimed.channels.size() != re.channels.size()) {
    v.problems.push_back(absl::StrCat("channels: claimed ", claimed.channels.size(),
                                      " entries, codes have ", re.channels.size()));
  } else {
    int64_t shown = 0;
    for (size_t r = 0; r < re.channels.size(); ++r) {
      const ChannelBound &a = claimed.channels[r], &b = re.channels[r];
      if (a.lo != b.lo || a.hi != b.hi || a.row_lo != b.row_lo || a.row_hi != b.row_hi) {
        if (shown++ < 5)
          v.problems.push_back(absl::StrCat("channel ", r, ": claimed [", a.lo, ", ", a.hi,
                                            "], recomputed [", b.lo, ", ", b.hi, "]"));
      }
    }
    if (shown > 5) v.problems.push_back(absl::StrCat("... ", shown - 5, " more channels differ"));
  }
  v.safe = re.safe;
  v.consistent = v.problems.empty();
  return v;
}

}  // namespace axeq
