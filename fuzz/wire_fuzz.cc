// libFuzzer target: the wire codec (proto/upload.h, proto/result.h) on arbitrary bytes, read
// first as an UploadRequest (a header goes through DecodeHeader, as the server does) and then as
// a JobEvent fed to a ResultDecoder (as the C++ client does), whose Finish must not crash.
#include <cstdint>
#include <string>

#include "proto/convert.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  axeq::v1::UploadRequest req;
  if (req.ParseFromString(bytes) && req.has_header()) (void)axeq::DecodeHeader(req.header());
  axeq::v1::JobEvent event;
  if (event.ParseFromString(bytes)) {
    axeq::ResultDecoder decoder;
    if (decoder.Add(event).ok()) (void)decoder.Finish();
  }
  return 0;
}
