// Reading and writing safetensors files (the format the CLI and the Python client share): an
// 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}, and
// "__metadata__": {string: string}}, then the raw little-endian tensor bytes. Writes are atomic
// (temporary file + rename). Every malformed file gives INVALID_ARGUMENT naming the problem.
#ifndef AXEQ_FORMATS_SAFETENSORS_H_
#define AXEQ_FORMATS_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/quantizer.h"

namespace axeq {

struct Tensor {
  std::string dtype;  // F32, F16, BF16, I8, I32, I64
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;
  int64_t numel() const;           // -1 when the shape is negative or its product overflows
  int64_t expected_bytes() const;  // numel x dtype size, -1 on overflow or an unknown dtype
};

struct SafetensorsFile {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, std::string> metadata;
};

// The largest header accepted (a header is JSON describing the tensors, not their data).
inline constexpr uint64_t kMaxHeaderBytes = 100u << 20;

// Parses a whole file held in memory; `what` names it in errors. Every size and offset is checked
// (no allocation beyond the bytes given): INVALID_ARGUMENT naming the tensor and the problem.
absl::StatusOr<SafetensorsFile> ParseSafetensors(absl::string_view bytes, const std::string& what);
absl::StatusOr<SafetensorsFile> ReadSafetensors(const std::string& path);
// Writes atomically and durably: temporary file, fsync, rename, fsync of the directory.
absl::Status WriteSafetensors(const std::string& path, const SafetensorsFile& file);
// Reads only the header's __metadata__ (cheap for large files).
absl::StatusOr<std::map<std::string, std::string>> ReadSafetensorsMetadata(const std::string& path);

// Converts a 2-D (or 1-D, as one row) F32/F16/BF16 tensor to float.
absl::StatusOr<MatrixXf> TensorToMatrix(const Tensor& t, const std::string& name);
absl::StatusOr<MatrixXi8> TensorToCodes(const Tensor& t, const std::string& name);
Tensor MatrixToTensor(const Eigen::Ref<const MatrixXf>& m);
Tensor VectorToTensor(const Eigen::Ref<const Eigen::VectorXf>& v);
Tensor CodesToTensor(const Eigen::Ref<const MatrixXi8>& m);
Tensor ScalarI32Tensor(int32_t v);
Tensor ScalarF32Tensor(float v);

}  // namespace axeq

#endif  // AXEQ_FORMATS_SAFETENSORS_H_
