// libFuzzer target: the safetensors reader (formats/safetensors.h ParseSafetensors) on arbitrary
// bytes; every tensor it accepts is converted as the CLI would (floats or codes).
#include <cstdint>
#include <string>

#include "formats/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto f =
      axeq::ParseSafetensors(absl::string_view(reinterpret_cast<const char*>(data), size), "fuzz");
  if (!f.ok()) return 0;
  for (const auto& [name, t] : f->tensors) {
    if (t.dtype == "I8")
      (void)axeq::TensorToCodes(t, name);
    else
      (void)axeq::TensorToMatrix(t, name);
  }
  return 0;
}
