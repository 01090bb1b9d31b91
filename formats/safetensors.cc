// safetensors I/O with strict validation of the header and offsets.
#include "formats/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace axeq {
namespace {

int64_t DtypeSize(const std::string& d) {
  if (d == "F32" || d == "I32") return 4;
  if (d == "F16" || d == "BF16" || d == "I16") return 2;
  if (d == "I8" || d == "U8" || d == "BOOL") return 1;
  if (d == "F64" || d == "I64") return 8;
  return 0;
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (man == 0)
      bits = sign;
    else {  // subnormal
      float f = std::ldexp(static_cast<float>(man), -24);
      return (h & 0x8000u) ? -f : f;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

}  // namespace

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape)
    if (d < 0 || __builtin_mul_overflow(n, d, &n)) return -1;
  return n;
}

int64_t Tensor::expected_bytes() const {
  const int64_t n = numel(), es = DtypeSize(dtype);
  int64_t bytes;
  if (n < 0 || es == 0 || __builtin_mul_overflow(n, es, &bytes)) return -1;
  return bytes;
}

absl::StatusOr<SafetensorsFile> ParseSafetensors(absl::string_view bytes, const std::string& what) {
  const uint64_t size = bytes.size();
  uint64_t n = 0;
  if (size < 8)
    return absl::InvalidArgumentError(absl::StrCat(what, ": too short for a safetensors header"));
  std::memcpy(&n, bytes.data(), 8);
  if (n > size - 8 || n > kMaxHeaderBytes)
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": header length ", n, " exceeds the file (", size, " bytes) or ", kMaxHeaderBytes));
  nlohmann::json j = nlohmann::json::parse(bytes.data() + 8, bytes.data() + 8 + n, nullptr,
                                           /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object())
    return absl::InvalidArgumentError(absl::StrCat(what, ": header is not a JSON object"));
  const absl::string_view data = bytes.substr(8 + n);
  const int64_t data_size = static_cast<int64_t>(data.size());
  SafetensorsFile f;
  for (auto& item : j.items()) {
    const std::string name = item.key();  // a plain variable: lambdas below capture it
    const nlohmann::json& v = item.value();
    if (name == "__metadata__") {
      if (!v.is_object())
        return absl::InvalidArgumentError(absl::StrCat(what, ": __metadata__ is not an object"));
      for (auto& [k, s] : v.items()) {
        if (!s.is_string())
          return absl::InvalidArgumentError(
              absl::StrCat(what, ": metadata ", k, " is not a string"));
        f.metadata[k] = s.get<std::string>();
      }
      continue;
    }
    auto bad = [&](const std::string& why) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": tensor ", name, " ", why));
    };
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") ||
        !v.contains("data_offsets") || !v["dtype"].is_string() || !v["shape"].is_array() ||
        !v["data_offsets"].is_array() || v["data_offsets"].size() != 2 || v["shape"].size() > 8)
      return bad("has a malformed entry");
    Tensor t;
    t.dtype = v["dtype"].get<std::string>();
    if (DtypeSize(t.dtype) == 0) return bad("has unsupported dtype " + t.dtype);
    for (auto& d : v["shape"]) {
      if (!d.is_number_unsigned() || d.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
        return bad("has a bad shape");
      t.shape.push_back(d.get<int64_t>());
    }
    const int64_t expected = t.expected_bytes();
    if (expected < 0) return bad("has a shape whose size overflows");
    const auto& off = v["data_offsets"];
    if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned() ||
        off[1].get<uint64_t>() > static_cast<uint64_t>(data_size))
      return bad(absl::StrCat("has data_offsets outside the data (", data_size, " bytes)"));
    const int64_t b = off[0].get<int64_t>(), e = off[1].get<int64_t>();
    if (e < b || e - b != expected)
      return bad(
          absl::StrCat("data_offsets [", b, ", ", e, ") do not match shape and dtype ", t.dtype));
    t.data.assign(data.begin() + b, data.begin() + e);
    f.tensors.emplace(name, std::move(t));
  }
  return f;
}

absl::StatusOr<SafetensorsFile> ReadSafetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  if (size < 0)
    return absl::InvalidArgumentError(absl::StrCat(path, ": cannot determine its size"));
  in.seekg(0);
  std::string bytes(static_cast<size_t>(size), '\0');
  if (!in.read(bytes.data(), size))
    return absl::DataLossError(absl::StrCat(path, ": could not read ", size, " bytes"));
  return ParseSafetensors(bytes, path);
}

absl::StatusOr<std::map<std::string, std::string>> ReadSafetensorsMetadata(
    const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  uint64_t n = 0;
  if (!in.read(reinterpret_cast<char*>(&n), 8) || n > kMaxHeaderBytes)
    return absl::InvalidArgumentError(absl::StrCat(path, ": bad safetensors header"));
  std::string header(n, '\0');
  if (!in.read(header.data(), static_cast<std::streamsize>(n)))
    return absl::InvalidArgumentError(absl::StrCat(path, ": truncated header"));
  nlohmann::json j = nlohmann::json::parse(header, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return absl::InvalidArgumentError(absl::StrCat(path, ": header is not JSON"));
  std::map<std::string, std::string> out;
  if (j.contains("__metadata__") && j["__metadata__"].is_object())
    for (auto& [k, v] : j["__metadata__"].items())
      if (v.is_string()) out[k] = v.get<std::string>();
  return out;
}

absl::Status WriteSafetensors(const std::string& path, const SafetensorsFile& file) {
  nlohmann::json j = nlohmann::json::object();
  int64_t offset = 0;
  for (const auto& [name, t] : file.tensors) {
    j[name] = {{"dtype", t.dtype},
               {"shape", t.shape},
               {"data_offsets", {offset, offset + static_cast<int64_t>(t.data.size())}}};
    offset += static_cast<int64_t>(t.data.size());
  }
  if (!file.metadata.empty()) j["__metadata__"] = file.metadata;
  std::string header = j.dump();
  while (header.size() % 8) header.push_back(' ');
  const std::string tmp = path + ".tmp";
  std::FILE* out = std::fopen(tmp.c_str(), "wb");
  if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot write ", tmp));
  const uint64_t n = header.size();
  bool ok = std::fwrite(&n, 8, 1, out) == 1 && std::fwrite(header.data(), 1, n, out) == n;
  for (const auto& [name, t] : file.tensors)
    ok = ok &&
         (t.data.empty() || std::fwrite(t.data.data(), 1, t.data.size(), out) == t.data.size());
  ok = ok && std::fflush(out) == 0 && ::fsync(::fileno(out)) == 0;
  ok = std::fclose(out) == 0 && ok;
  if (!ok) {
    std::remove(tmp.c_str());
    return absl::DataLossError(absl::StrCat("failed writing ", tmp));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0)
    return absl::InternalError(absl::StrCat("cannot rename ", tmp, " to ", path));
  // The rename is durable once the directory is synced.
  const size_t slash = path.find_last_of('/');
  const std::string dir =
      slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
  return absl::OkStatus();
}

absl::StatusOr<MatrixXf> TensorToMatrix(const Tensor& t, const std::string& name) {
  if (t.shape.size() != 1 && t.shape.size() != 2)
    return absl::InvalidArgumentError(
        absl::StrCat(name, " must be 1-D or 2-D, has ", t.shape.size(), " dims"));
  const int64_t rows = t.shape.size() == 2 ? t.shape[0] : 1;
  const int64_t cols = t.shape.back();
  const int64_t bytes = t.expected_bytes();
  if (bytes < 0 || static_cast<int64_t>(t.data.size()) != bytes)
    return absl::InvalidArgumentError(
        absl::StrCat(name, " holds ", t.data.size(), " bytes, its shape needs ", bytes));
  MatrixXf m(rows, cols);
  const int64_t n = rows * cols;
  if (t.dtype == "F32") {
    std::memcpy(m.data(), t.data.data(), n * 4);
  } else if (t.dtype == "F16" || t.dtype == "BF16") {
    for (int64_t i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, t.data.data() + 2 * i, 2);
      if (t.dtype == "F16") {
        m.data()[i] = HalfToFloat(h);
      } else {
        const uint32_t bits = static_cast<uint32_t>(h) << 16;
        std::memcpy(m.data() + i, &bits, 4);
      }
    }
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(name, " has dtype ", t.dtype, "; expected F32, F16 or BF16"));
  }
  return m;
}

absl::StatusOr<MatrixXi8> TensorToCodes(const Tensor& t, const std::string& name) {
  if (t.dtype != "I8" || t.shape.size() != 2)
    return absl::InvalidArgumentError(absl::StrCat(name, " must be a 2-D I8 tensor, got ", t.dtype,
                                                   " with ", t.shape.size(), " dims"));
  if (t.expected_bytes() != static_cast<int64_t>(t.data.size()))
    return absl::InvalidArgumentError(absl::StrCat(name, " holds ", t.data.size(),
                                                   " bytes, its shape needs ", t.expected_bytes()));
  MatrixXi8 m(t.shape[0], t.shape[1]);
  std::memcpy(m.data(), t.data.data(), t.data.size());
  return m;
}

namespace {
template <typename T>
Tensor Raw(const std::string& dtype, std::vector<int64_t> shape, const T* p, int64_t n) {
  Tensor t;
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.data.resize(n * sizeof(T));
  std::memcpy(t.data.data(), p, t.data.size());
  return t;
}
}  // namespace

Tensor MatrixToTensor(const Eigen::Ref<const MatrixXf>& m) {
  const MatrixXf c = m;
  return Raw("F32", {c.rows(), c.cols()}, c.data(), c.size());
}
Tensor VectorToTensor(const Eigen::Ref<const Eigen::VectorXf>& v) {
  const Eigen::VectorXf c = v;
  return Raw("F32", {c.size()}, c.data(), c.size());
}
Tensor CodesToTensor(const Eigen::Ref<const MatrixXi8>& m) {
  const MatrixXi8 c = m;
  return Raw("I8", {c.rows(), c.cols()}, c.data(), c.size());
}
Tensor ScalarI32Tensor(int32_t v) { return Raw("I32", {}, &v, 1); }
Tensor ScalarF32Tensor(float v) { return Raw("F32", {}, &v, 1); }

}  // namespace axeq
