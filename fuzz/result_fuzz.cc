// libFuzzer target: the RESULT reader (ParseSafetensors + DecodeResultEntries) on arbitrary bytes;
// every layer it decodes is dequantized (the shapes it vouched for must hold).
#include <cstdint>
#include <string>

#include "formats/result_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto f =
      axeq::ParseSafetensors(absl::string_view(reinterpret_cast<const char*>(data), size), "fuzz");
  if (!f.ok()) return 0;
  auto entries = axeq::DecodeResultEntries(*f);
  if (!entries.ok()) return 0;
  for (const auto& e : *entries)
    if (e.layer.ok()) (void)e.layer->DequantizedWeights();
  return 0;
}
