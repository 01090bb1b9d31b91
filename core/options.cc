// Validation and names of the engine options.
#include "core/options.h"

#include "absl/strings/str_cat.h"

namespace axeq {

const char* AlgorithmName(Algorithm a) { return a == Algorithm::kOptq ? "optq" : "gpfq"; }

const char* MethodName(Method m) {
  switch (m) {
    case Method::kBase:
      return "base";
    case Method::kAxe:
      return "axe";
    case Method::kEpInit:
      return "ep-init";
    case Method::kNaive:
      return "naive";
  }
  return "?";
}

const char* RoundingName(Rounding r) { return r == Rounding::kNearest ? "rtn" : "rtz"; }

absl::Status LayerOptions::Validate() const {
  auto bad = [](auto&&... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
  if (weights.bits < 2 || weights.bits > 8)
    return bad("weight_bits must be in [2, 8], got ", weights.bits);
  if (weights.group_size < 0)
    return bad("group_size must be >= 0 (0 = per channel), got ", weights.group_size);
  if (inputs.bits < 2 || inputs.bits > 16)
    return bad("act_bits must be in [2, 16], got ", inputs.bits);
  if (accumulator.bits < 2 || accumulator.bits > 64)
    return bad("acc_bits must be in [2, 64], got ", accumulator.bits);
  if (accumulator.tile_size < 0)
    return bad("tile_size must be >= 0 (0 = monolithic), got ", accumulator.tile_size);
  if (!(damping > 0.0 && damping < 1e6)) return bad("damping must be in (0, 1e6), got ", damping);
  if (max_damping_retries < 0 || max_damping_retries > 20)
    return bad("max_damping_retries must be in [0, 20], got ", max_damping_retries);
  if (block_size < 1 || block_size > 4096)
    return bad("block_size must be in [1, 4096], got ", block_size);
  return absl::OkStatus();
}

}  // namespace axeq
