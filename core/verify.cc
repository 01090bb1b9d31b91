// Independent certificate verifier (see verify.h). Written from docs/certificate.md alone: plain
// loops, __int128 sums, and registers described by their two limits.
#include "core/verify.h"

#include <openssl/evp.h>

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace axeq {
namespace {

using i128 = __int128;

std::string ToString(i128 v) {
  if (v == 0) return "0";
  const bool neg = v < 0;
  std::string s;
  for (i128 x = neg ? -v : v; x > 0; x /= 10)
    s.push_back(static_cast<char>('0' + static_cast<int>(x % 10)));
  if (neg) s.push_back('-');
  std::reverse(s.begin(), s.end());
  return s;
}

// The register of P bits: it holds [-neg, pos].
struct Register {
  i128 pos, neg;
  Register(int bits, bool twos) : pos((i128{1} << (bits - 1)) - 1), neg(pos + (twos ? 1 : 0)) {}
  bool Holds(i128 lo, i128 hi) const { return hi <= pos && -lo <= neg; }
};

// Smallest P in [1, 127] whose register holds [lo, hi], found by trying each.
int SmallestRegister(i128 lo, i128 hi, bool twos) {
  for (int p = 1; p < 127; ++p)
    if (Register(p, twos).Holds(lo, hi)) return p;
  return 127;
}

std::string Sha256Hex(const Eigen::Ref<const MatrixXi8>& codes) {
  std::vector<unsigned char> bytes;
  bytes.reserve(static_cast<size_t>(codes.size()));
  for (int64_t r = 0; r < codes.rows(); ++r)
    for (int64_t i = 0; i < codes.cols(); ++i)
      bytes.push_back(static_cast<unsigned char>(codes(r, i)));
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(bytes.data(), bytes.size(), md, &len, EVP_sha256(), nullptr);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  for (unsigned int i = 0; i < len; ++i) {
    hex += kHex[md[i] >> 4];
    hex += kHex[md[i] & 15];
  }
  return hex;
}

// Checks the stated assumptions before any arithmetic; returns false with problems on failure.
bool AssumptionsInRange(const Eigen::Ref<const MatrixXi8>& codes, const Certificate& c,
                        std::vector<std::string>* problems) {
  const size_t before = problems->size();
  auto bad = [&](const std::string& what) { problems->push_back(what); };
  const int n = c.input.bits, p = c.accumulator.bits, m = c.weight_bits;
  if (m < 2 || m > 8) bad(absl::StrCat("weight_bits ", m, " is outside [2, 8]"));
  if (n < 2 || n > 16) bad(absl::StrCat("input_bits ", n, " is outside [2, 16]"));
  if (p < 2 || p > 64) bad(absl::StrCat("accumulator_bits ", p, " is outside [2, 64]"));
  if (c.outer_accumulator_bits < 2 || c.outer_accumulator_bits > 64)
    bad(absl::StrCat("outer_accumulator_bits ", c.outer_accumulator_bits, " is outside [2, 64]"));
  if (codes.rows() < 1 || codes.cols() < 1) bad("the codes are empty");
  if (c.accumulator.tile_size < 0 || c.accumulator.tile_size > codes.cols())
    bad(absl::StrCat("tile_size ", c.accumulator.tile_size, " is outside [1, K = ", codes.cols(),
                     "]"));
  return problems->size() == before;
}

}  // namespace

Verification VerifyCertificate(const Eigen::Ref<const MatrixXi8>& codes, const Certificate& claimed,
                               const VerifyExpectations& expect) {
  Verification v;
  const int64_t c = codes.rows(), k = codes.cols();
  const bool twos = claimed.accumulator.twos_complement;
  auto mismatch = [&](const std::string& field, const std::string& claim,
                      const std::string& truth) {
    v.problems.push_back(absl::StrCat(field, ": claimed ", claim, ", recomputed ", truth));
  };
  // The pinned datapath first: a mismatch there is reported even when the rest is malformed.
  const int64_t stated_t = claimed.accumulator.tile_size == 0 ? k : claimed.accumulator.tile_size;
  auto pin = [&](const char* what, auto want, auto got) {
    if (want && *want != got) {
      v.as_expected = false;
      v.problems.push_back(
          absl::StrCat("expected ", what, " = ", *want, ", the certificate states ", got));
    }
  };
  pin("accumulator_bits", expect.accumulator_bits, claimed.accumulator.bits);
  if (expect.tile_size) {
    const int64_t want_t = *expect.tile_size <= 0 || *expect.tile_size >= k ? k : *expect.tile_size;
    pin("tile_size", std::optional<int64_t>(want_t), stated_t);
  }
  pin("input_bits", expect.input_bits, claimed.input.bits);
  pin("inputs_signed", expect.inputs_signed, claimed.input.is_signed);
  pin("weight_bits", expect.weight_bits, claimed.weight_bits);
  if (!AssumptionsInRange(codes, claimed, &v.problems)) return v;

  // Input code range [mu, nu] of N-bit codes.
  const int n = claimed.input.bits;
  const i128 mu = claimed.input.is_signed ? -(i128{1} << (n - 1)) : 0;
  const i128 nu = claimed.input.is_signed ? (i128{1} << (n - 1)) - 1 : (i128{1} << n) - 1;
  const int64_t t = stated_t;
  const Register inner(claimed.accumulator.bits, twos), outer(claimed.outer_accumulator_bits, twos);
  // P_O by Eq. 21: P_I + the smallest e with T * 2^e >= K.
  int e = 0;
  while (static_cast<i128>(t) * (i128{1} << e) < k) ++e;
  const int outer_bits = claimed.accumulator.bits + e;
  const int m = claimed.weight_bits;
  int64_t out_of_alphabet = 0, unsafe = 0, differ = 0;
  int need_inner = 1, need_outer = 1;
  bool rows_fit = true;
  for (int64_t r = 0; r < c; ++r) {
    i128 row_lo = 0, row_hi = 0, worst_lo = 0, worst_hi = 0;
    int worst_bits = -1;
    int64_t worst_tile = 0;
    i128 worst_mag = -1;
    for (int64_t begin = 0, tile = 0; begin < k; begin += t, ++tile) {
      i128 lo = 0, hi = 0;
      for (int64_t i = begin; i < std::min(k, begin + t); ++i) {
        const i128 q = codes(r, i);
        if (q < -(i128{1} << (m - 1)) || q > (i128{1} << (m - 1)) - 1) ++out_of_alphabet;
        const i128 a = q * mu, b = q * nu;
        hi += a > b ? a : b;
        lo += a < b ? a : b;
      }
      row_lo += lo;
      row_hi += hi;
      const int bits = SmallestRegister(lo, hi, twos);
      const i128 mag = hi > -lo ? hi : -lo;
      if (bits > worst_bits || (bits == worst_bits && mag > worst_mag)) {
        worst_bits = bits, worst_mag = mag, worst_lo = lo, worst_hi = hi, worst_tile = tile;
      }
    }
    need_inner = std::max(need_inner, worst_bits);
    need_outer = std::max(need_outer, SmallestRegister(row_lo, row_hi, twos));
    if (!inner.Holds(worst_lo, worst_hi)) ++unsafe;
    if (!outer.Holds(row_lo, row_hi)) rows_fit = false;
    if (static_cast<int64_t>(claimed.channels.size()) == c) {
      const ChannelBound& b = claimed.channels[r];
      if (b.lo != worst_lo || b.hi != worst_hi || b.row_lo != row_lo || b.row_hi != row_hi ||
          b.worst_tile != worst_tile) {
        if (differ++ < 5)
          v.problems.push_back(absl::StrCat("channel ", r, ": claimed [", b.lo, ", ", b.hi,
                                            "] in tile ", b.worst_tile, ", recomputed [",
                                            ToString(worst_lo), ", ", ToString(worst_hi),
                                            "] in tile ", worst_tile));
      }
    }
  }
  need_outer = std::max(need_outer, need_inner);
  if (differ > 5) v.problems.push_back(absl::StrCat("... ", differ - 5, " more channels differ"));
  if (static_cast<int64_t>(claimed.channels.size()) != c)
    mismatch("channels", absl::StrCat(claimed.channels.size(), " entries"), absl::StrCat(c));
  if (out_of_alphabet > 0)
    v.problems.push_back(
        absl::StrCat(out_of_alphabet, " codes lie outside the ", m, "-bit alphabet"));
  auto check = [&](const char* field, auto claim, auto truth) {
    if (claim != truth) mismatch(field, absl::StrCat(claim), absl::StrCat(truth));
  };
  check("output_channels", claimed.output_channels, c);
  check("inputs", claimed.inputs, k);
  check("weights_sha256", claimed.weights_sha256, Sha256Hex(codes));
  check("outer_accumulator_bits", claimed.outer_accumulator_bits, outer_bits);
  check("min_accumulator_bits", claimed.min_accumulator_bits, need_inner);
  check("min_outer_accumulator_bits", claimed.min_outer_accumulator_bits, need_outer);
  check("unsafe_channels", claimed.unsafe_channels, unsafe);
  v.safe = unsafe == 0 && rows_fit && out_of_alphabet == 0;
  check("safe", claimed.safe, v.safe);
  v.consistent = v.problems.empty() || !v.as_expected;
  if (v.consistent && !v.as_expected) {
    // Only pinned-expectation problems were found: the claims themselves hold.
    for (const auto& p : v.problems)
      if (p.rfind("expected ", 0) != 0) v.consistent = false;
  }
  return v;
}

}  // namespace axeq
