// Integer datapath simulation with wrapping or saturating P-bit registers.
#include "core/simulate.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace axeq {
namespace {

// A signed register of `bits` bits: returns the register's value after adding `term` to `acc`,
// counting an event when the exact sum leaves the range.
struct Register {
  int64_t lo, hi, span;
  OverflowMode mode;
  bool wide;
  Register(int bits, bool twos, OverflowMode m) : mode(m), wide(bits <= 0) {
    const int b = std::clamp(bits, 2, 62);
    hi = (int64_t{1} << (b - 1)) - 1;
    lo = twos ? -hi - 1 : -hi;
    span = int64_t{1} << b;
  }
  int64_t Add(int64_t acc, int64_t term, int64_t* events) const {
    const int64_t s = acc + term;
    if (wide || (s >= lo && s <= hi)) return s;
    ++*events;
    if (mode == OverflowMode::kSaturate) return s > hi ? hi : lo;
    // two's complement wrap modulo 2^P into [-2^(P-1), 2^(P-1) - 1]
    const int64_t half = span / 2;
    int64_t r = (s + half) % span;
    if (r < 0) r += span;
    return r - half;
  }
};

absl::Status Check(const Eigen::Ref<const MatrixXi8>& codes, int64_t k, const DatapathSpec& s) {
  if (codes.cols() != k)
    return absl::InvalidArgumentError(
        absl::StrCat("inputs have ", k, " columns, codes have ", codes.cols()));
  if (s.accumulator.bits < 2 || s.accumulator.bits > 62)
    return absl::InvalidArgumentError(
        absl::StrCat("accumulator bits must be in [2, 62], got ", s.accumulator.bits));
  if (s.outer_bits != 0 && (s.outer_bits < 2 || s.outer_bits > 62))
    return absl::InvalidArgumentError(
        absl::StrCat("outer bits must be 0 (wide) or in [2, 62], got ", s.outer_bits));
  if (s.accumulator.tile_size < 0) return absl::InvalidArgumentError("tile size must be >= 0");
  return absl::OkStatus();
}

// Accumulates one dot product; returns the register result and adds to the stats.
int64_t Dot(const int8_t* q, const int32_t* x, int64_t k, int64_t t, const Register& inner,
            const Register& outer, int64_t* events, int64_t* wide) {
  int64_t out = 0, exact = 0;
  for (int64_t b = 0; b < k; b += t) {
    int64_t acc = 0;
    for (int64_t i = b; i < std::min(k, b + t); ++i) {
      const int64_t term = static_cast<int64_t>(q[i]) * x[i];
      exact += term;
      acc = inner.Add(acc, term, events);
    }
    out = outer.Add(out, acc, events);
  }
  *wide = exact;
  return out;
}

void Account(int64_t got, int64_t want, int64_t events_before, int64_t events_after,
             SimulationStats* s, double* err2, double* ref2) {
  ++s->dot_products;
  if (events_after > events_before) ++s->overflowing_dot_products;
  if (got != want) {
    ++s->wrong_outputs;
    s->max_abs_error = std::max<int64_t>(s->max_abs_error, std::llabs(got - want));
  }
  *err2 += static_cast<double>(got - want) * static_cast<double>(got - want);
  *ref2 += static_cast<double>(want) * static_cast<double>(want);
}

// Runs channel r against every input row (own_rows = false), or only against rows 2r and 2r + 1
// (own_rows = true: the per-channel worst cases of WorstCaseInputs).
absl::StatusOr<SimulationStats> Run(const Eigen::Ref<const MatrixXi8>& codes, const MatrixXi32& x,
                                    const DatapathSpec& spec, bool own_rows,
                                    MatrixXi64* outputs = nullptr) {
  if (auto st = Check(codes, x.cols(), spec); !st.ok()) return st;
  const int64_t c = codes.rows(), k = codes.cols();
  const int64_t t = spec.accumulator.EffectiveTile(k);
  const Register inner(spec.accumulator.bits, spec.accumulator.twos_complement, spec.mode);
  const Register outer(t == k ? 0 : spec.outer_bits, spec.accumulator.twos_complement, spec.mode);
  const MatrixXi8 q = codes;
  SimulationStats s;
  double err2 = 0, ref2 = 0;
  auto one = [&](int64_t r, int64_t d) {
    int64_t wide;
    const int64_t before = s.overflow_events;
    const int64_t got =
        Dot(q.row(r).data(), x.row(d).data(), k, t, inner, outer, &s.overflow_events, &wide);
    Account(got, wide, before, s.overflow_events, &s, &err2, &ref2);
    if (outputs) (*outputs)(d, r) = got;
  };
  if (outputs) outputs->resize(x.rows(), c);
  if (own_rows) {
    for (int64_t r = 0; r < c; ++r) one(r, 2 * r), one(r, 2 * r + 1);
  } else {
    for (int64_t d = 0; d < x.rows(); ++d)
      for (int64_t r = 0; r < c; ++r) one(r, d);
  }
  s.relative_error = ref2 > 0 ? std::sqrt(err2 / ref2) : (err2 > 0 ? INFINITY : 0.0);
  return s;
}

}  // namespace

absl::StatusOr<SimulationStats> SimulateDatapath(const Eigen::Ref<const MatrixXi8>& codes,
                                                 const Eigen::Ref<const MatrixXi32>& inputs,
                                                 const DatapathSpec& spec) {
  return Run(codes, inputs, spec, /*own_rows=*/false);
}

absl::StatusOr<DatapathOutputs> RunDatapath(const Eigen::Ref<const MatrixXi8>& codes,
                                            const Eigen::Ref<const MatrixXi32>& inputs,
                                            const DatapathSpec& spec) {
  DatapathOutputs out;
  auto s = Run(codes, inputs, spec, /*own_rows=*/false, &out.outputs);
  if (!s.ok()) return s.status();
  out.stats = *s;
  return out;
}

MatrixXi32 WorstCaseInputs(const Eigen::Ref<const MatrixXi8>& codes, const InputSpec& inputs) {
  const int64_t mu = inputs.min_code(), nu = inputs.max_code();
  MatrixXi32 x(2 * codes.rows(), codes.cols());
  for (int64_t r = 0; r < codes.rows(); ++r)
    for (int64_t i = 0; i < codes.cols(); ++i) {
      const bool nonneg = codes(r, i) >= 0;
      x(2 * r, i) = static_cast<int32_t>(nonneg ? nu : mu);      // u of Eq. 6 (maximising)
      x(2 * r + 1, i) = static_cast<int32_t>(nonneg ? mu : nu);  // v of Eq. 6 (minimising)
    }
  return x;
}

absl::StatusOr<SimulationStats> SimulateWorstCase(const Eigen::Ref<const MatrixXi8>& codes,
                                                  const InputSpec& inputs,
                                                  const DatapathSpec& spec) {
  return Run(codes, WorstCaseInputs(codes, inputs), spec, /*own_rows=*/true);
}

MatrixXi32 InputCodes(const Eigen::Ref<const MatrixXf>& x, const ActivationQuantizer& q) {
  const float lo = static_cast<float>(q.spec.min_code()),
              hi = static_cast<float>(q.spec.max_code());
  const float inv = 1.0f / q.scale, zp = static_cast<float>(q.zero_point);
  MatrixXi32 out(x.rows(), x.cols());
  for (int64_t r = 0; r < x.rows(); ++r)
    for (int64_t c = 0; c < x.cols(); ++c)
      out(r, c) = static_cast<int32_t>(std::clamp(std::nearbyint(x(r, c) * inv) + zp, lo, hi));
  return out;
}

}  // namespace axeq
