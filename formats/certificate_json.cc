// Certificate <-> JSON with field-by-field validation.
#include "formats/certificate_json.h"

#include "absl/strings/str_cat.h"

namespace axeq {

nlohmann::json CertificateToJson(const Certificate& c) {
  nlohmann::json ch = nlohmann::json::array();
  for (const auto& b : c.channels)
    ch.push_back({{"lo", b.lo},
                  {"hi", b.hi},
                  {"tile", b.worst_tile},
                  {"row_lo", b.row_lo},
                  {"row_hi", b.row_hi}});
  return {{"schema_version", kCertificateSchemaVersion},
          {"weights_sha256", c.weights_sha256},
          {"weights_layout", "int8 row-major [output_channels, inputs]"},
          {"output_channels", c.output_channels},
          {"inputs", c.inputs},
          {"weight_bits", c.weight_bits},
          {"input_bits", c.input.bits},
          {"inputs_signed", c.input.is_signed},
          {"input_min", c.input_min()},
          {"input_max", c.input_max()},
          {"accumulator_bits", c.accumulator.bits},
          {"tile_size", c.tile_size()},
          {"twos_complement", c.accumulator.twos_complement},
          {"outer_accumulator_bits", c.outer_accumulator_bits},
          {"min_accumulator_bits", c.min_accumulator_bits},
          {"min_outer_accumulator_bits", c.min_outer_accumulator_bits},
          {"unsafe_channels", c.unsafe_channels},
          {"safe", c.safe},
          {"assumptions", CertificateAssumptions(c)},
          {"channels", ch}};
}

absl::StatusOr<Certificate> CertificateFromJson(const nlohmann::json& j) {
  if (!j.is_object()) return absl::InvalidArgumentError("certificate is not a JSON object");
  Certificate c;
  absl::Status st;
  auto get = [&](const char* key, auto* out) {
    using T = std::decay_t<decltype(*out)>;
    if (!st.ok()) return;
    if (!j.contains(key)) {
      st = absl::InvalidArgumentError(absl::StrCat("certificate lacks field ", key));
      return;
    }
    const auto& v = j[key];
    bool ok;
    if constexpr (std::is_same_v<T, bool>)
      ok = v.is_boolean();
    else if constexpr (std::is_same_v<T, std::string>)
      ok = v.is_string();
    else
      ok = v.is_number_integer();
    if (!ok) {
      st = absl::InvalidArgumentError(
          absl::StrCat("certificate field ", key, " has the wrong type"));
      return;
    }
    *out = v.get<T>();
  };
  get("weights_sha256", &c.weights_sha256);
  get("output_channels", &c.output_channels);
  get("inputs", &c.inputs);
  get("weight_bits", &c.weight_bits);
  int64_t input_min = 0, input_max = 0, tile_size = 0;
  get("input_bits", &c.input.bits);
  get("inputs_signed", &c.input.is_signed);
  get("input_min", &input_min);
  get("input_max", &input_max);
  get("accumulator_bits", &c.accumulator.bits);
  get("tile_size", &tile_size);
  get("twos_complement", &c.accumulator.twos_complement);
  get("outer_accumulator_bits", &c.outer_accumulator_bits);
  get("min_accumulator_bits", &c.min_accumulator_bits);
  get("min_outer_accumulator_bits", &c.min_outer_accumulator_bits);
  get("unsafe_channels", &c.unsafe_channels);
  get("safe", &c.safe);
  if (!st.ok()) return st;
  // The input range and tile are stated redundantly; they must be those of the stated specs.
  if (c.input.bits < 2 || c.input.bits > 16)
    return absl::InvalidArgumentError(
        absl::StrCat("certificate input_bits ", c.input.bits, " is outside [2, 16]"));
  if (input_min != c.input_min() || input_max != c.input_max())
    return absl::InvalidArgumentError(
        absl::StrCat("certificate input range [", input_min, ", ", input_max, "] is not that of ",
                     c.input.bits, "-bit ", c.input.is_signed ? "signed" : "unsigned", " codes [",
                     c.input_min(), ", ", c.input_max(), "]"));
  if (tile_size < 1 || tile_size > c.inputs || tile_size > INT32_MAX)
    return absl::InvalidArgumentError(absl::StrCat("certificate tile_size ", tile_size,
                                                   " is outside [1, inputs = ", c.inputs, "]"));
  c.accumulator.tile_size = static_cast<int>(tile_size);
  if (!j.contains("channels") || !j["channels"].is_array())
    return absl::InvalidArgumentError("certificate lacks the channels array");
  for (const auto& e : j["channels"]) {
    if (!e.is_object() || !e.contains("lo") || !e.contains("hi") || !e["lo"].is_number_integer() ||
        !e["hi"].is_number_integer())
      return absl::InvalidArgumentError("certificate channel entry lacks integer lo/hi");
    ChannelBound b;
    b.lo = e["lo"].get<int64_t>();
    b.hi = e["hi"].get<int64_t>();
    auto int_or = [&](const char* key, int64_t fallback) {
      return e.contains(key) && e[key].is_number_integer() ? e[key].get<int64_t>() : fallback;
    };
    b.worst_tile = int_or("tile", 0);
    b.row_lo = int_or("row_lo", b.lo);
    b.row_hi = int_or("row_hi", b.hi);
    c.channels.push_back(b);
  }
  return c;
}

absl::StatusOr<Certificate> ParseCertificate(const std::string& text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded()) return absl::InvalidArgumentError("certificate is not valid JSON");
  return CertificateFromJson(j);
}

}  // namespace axeq
