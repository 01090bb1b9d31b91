// The server's side of an upload: chunks checked against the header's plan, gathered into the
// job's input with one copy per byte.
#include "server/upload.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace axeq::server {
namespace {

absl::Status CheckPayload(size_t bytes, const char* what) {
  if (bytes > static_cast<size_t>(kMaxChunkPayloadBytes))
    return absl::InvalidArgumentError(
        absl::StrCat(what, " chunk of ", bytes, " bytes exceeds the 4 MiB chunk limit"));
  if (bytes % 4 != 0)
    return absl::InvalidArgumentError(
        absl::StrCat(what, " chunk of ", bytes, " bytes is not whole float32 values"));
  return absl::OkStatus();
}

}  // namespace

Upload::Upload(UploadPlan plan, JobManager* jobs)
    : plan_(std::move(plan)), jobs_(jobs), compute_(jobs->ComputeContext()) {
  if (plan_.rows)
    acc_ = std::make_unique<StatsAccumulator>(plan_.inputs, /*keep_cross=*/true,
                                              plan_.rows_keep_xx(), compute_);
}

Upload::~Upload() {
  if (factor_.valid()) *factor_stop_ = true;
}

int64_t Upload::EstimateBytes() const {
  const int64_t c = plan_.output_channels, k = plan_.inputs, kk = k * k;
  const int64_t squares = 2 + (plan_.rows ? plan_.rows_keep_xx() : plan_.has_xx);
  int64_t b = c * k * 4 + c * 8 + squares * kk * (plan_.rows ? 12 : 4);
  const int64_t s = plan_.options.precision == Precision::kFloat64 ? 8 : 4;
  return b + 4 * kk * s + c * k * (s + 1);
}

absl::Status Upload::AddTensor(const v1::TensorChunk& t) {
  const UploadTensor* spec =
      t.tensor() > 0 && t.tensor() < kKinds ? plan_.Find(t.tensor()) : nullptr;
  if (!spec)
    return absl::InvalidArgumentError(
        absl::StrCat("tensor chunk of kind ", v1::TensorKind_Name(t.tensor()), " (", t.tensor(),
                     ") is not expected with this header (", plan_.rows ? "ROWS" : "STATISTICS",
                     " calibration)"));
  const std::string name = spec->name();
  AXEQ_RETURN_IF_ERROR(CheckPayload(t.data().size(), name.c_str()));
  const int kind = spec->kind;
  const int64_t n = static_cast<int64_t>(t.data().size() / 4), at = filled_[kind];
  if (t.offset() != at)
    return absl::InvalidArgumentError(
        absl::StrCat("tensor ", name, " chunk at offset ", t.offset(),
                     " is out of order or duplicated: expected offset ", at));
  if (at + n > spec->elements())
    return absl::InvalidArgumentError(absl::StrCat("tensor ", name, " chunk ends at element ",
                                                   at + n, ", beyond its ", spec->elements(),
                                                   " elements"));
  MatrixXf& buf = data_[kind];
  if (buf.size() == 0) buf.resize(spec->rows, spec->cols);
  float* dst = buf.data() + at;
  std::memcpy(dst, t.data().data(), t.data().size());
  if (const int64_t bad = FirstNonFinite(dst, n); bad >= 0)
    return absl::InvalidArgumentError(
        absl::StrCat("tensor ", name, " has a NaN/Inf value at element ", at + bad));
  filled_[kind] = at + n;
  Hash(kind, dst, t.data().size());
  ++chunks_;
  if (kind == v1::TENSOR_KIND_GRAM && filled_[kind] == spec->elements()) StartFactor();
  return absl::OkStatus();
}

absl::Status Upload::AddRows(const v1::RowsChunk& r) {
  if (!plan_.rows) return absl::InvalidArgumentError("rows chunk sent with STATISTICS calibration");
  AXEQ_RETURN_IF_ERROR(CheckPayload(r.inputs().size() + r.quant_inputs().size(), "rows"));
  const int64_t k = plan_.inputs, row_bytes = k * 4;
  if (r.inputs().empty() || r.inputs().size() % row_bytes != 0)
    return absl::InvalidArgumentError(absl::StrCat("rows chunk must hold whole rows of ", k,
                                                   " float32 (", row_bytes, " bytes); got ",
                                                   r.inputs().size(), " bytes"));
  if (!r.quant_inputs().empty() && r.quant_inputs().size() != r.inputs().size())
    return absl::InvalidArgumentError(absl::StrCat("rows chunk quant_inputs has ",
                                                   r.quant_inputs().size(), " bytes, inputs ",
                                                   r.inputs().size()));
  if (r.row_offset() != rows_)
    return absl::InvalidArgumentError(absl::StrCat("rows chunk at row ", r.row_offset(),
                                                   " is out of order or duplicated: expected row ",
                                                   rows_));
  const int64_t n = static_cast<int64_t>(r.inputs().size()) / row_bytes;
  Eigen::Map<const MatrixXf> x(reinterpret_cast<const float*>(r.inputs().data()), n, k);
  absl::Status s =
      r.quant_inputs().empty()
          ? acc_->Add(x, plan_.activations.Apply(x))
          : acc_->Add(x, Eigen::Map<const MatrixXf>(
                             reinterpret_cast<const float*>(r.quant_inputs().data()), n, k));
  if (!s.ok())
    return absl::InvalidArgumentError(
        absl::StrCat("rows ", rows_, "..", rows_ + n, ": ", s.message()));
  rows_ += n;
  rows_digest_.Update(r.inputs().data(), r.inputs().size());  // rows are not kept
  rows_digest_.Update(r.quant_inputs().data(), r.quant_inputs().size());
  ++chunks_;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<JobInput>> Upload::Finish(const v1::Commit& commit) {
  if (commit.chunks() != chunks_)
    return absl::InvalidArgumentError(
        absl::StrCat("commit announces ", commit.chunks(), " chunks but ", chunks_, " arrived"));
  for (const UploadTensor& t : plan_.tensors) {
    const int64_t got = filled_[t.kind];
    if (got != t.elements() && !(t.optional && got == 0))
      return absl::FailedPreconditionError(absl::StrCat("upload incomplete at commit: tensor ",
                                                        t.name(), " has ", got, " of ",
                                                        t.elements(), " elements"));
  }
  auto in = std::make_unique<JobInput>();
  in->layer_name = plan_.layer_name;
  in->options = plan_.options;
  in->activations = plan_.activations;
  in->weights = std::move(data_[v1::TENSOR_KIND_WEIGHT]);  // no copy
  if (plan_.has_bias) in->bias = Eigen::VectorXf(data_[v1::TENSOR_KIND_BIAS].row(0).transpose());
  if (plan_.rows) {
    if (rows_ == 0)
      return absl::FailedPreconditionError(
          "upload incomplete at commit: no calibration rows arrived");
    AXEQ_ASSIGN_OR_RETURN(in->stats, acc_->Finish());
    acc_.reset();
  } else {
    in->stats.samples = plan_.samples;
    in->stats.gram =
        std::move(data_[v1::TENSOR_KIND_GRAM]);  // the buffer moves, its bytes stay put
    in->optq_factor = std::move(factor_);        // still running, maybe: the job waits for it
    in->optq_factor_stop = factor_stop_;
    in->stats.cross = std::move(data_[v1::TENSOR_KIND_CROSS]);
    in->stats.xx = std::move(data_[v1::TENSOR_KIND_XX]);
    if (plan_.has_means) {
      in->stats.mean_x = data_[v1::TENSOR_KIND_MEAN_X].row(0).transpose();
      in->stats.mean_xq = data_[v1::TENSOR_KIND_MEAN_XQ].row(0).transpose();
    }
  }
  AXEQ_RETURN_IF_ERROR(
      ValidateLayer(in->weights, in->bias ? &*in->bias : nullptr, in->stats, in->options));
  return in;
}

std::string Upload::DigestHex() {
  const XXH128_hash_t rows = rows_digest_.Final();
  digest_.Update(&rows, sizeof(rows));
  const XXH128_hash_t d = digest_.Final();
  return absl::StrCat("xxh3-128:", absl::Hex(d.high64, absl::kZeroPad16),
                      absl::Hex(d.low64, absl::kZeroPad16));
}

void Upload::HashHeader(v1::LayerHeader h) {
  h.clear_detach();
  const std::string bytes = h.SerializeAsString();
  Hash(-2, bytes.data(), bytes.size());
}

void Upload::Hash(int64_t tag, const void* data, size_t size) {
  digest_.Update(&tag, sizeof(tag));
  digest_.Update(data, size);
}

// OPTQ needs only the Gram matrix for its 2/3 K^3 factorization: start it as soon as GRAM is
// complete (clients send it first), overlapping the rest of the upload.
void Upload::StartFactor() {
  if (plan_.rows || plan_.options.algorithm != Algorithm::kOptq || factor_.valid()) return;
  // Captures by value: the future may move to the job (JobInput), outliving this Upload; the
  // Gram buffer it reads moves along with it and is freed only after the future is waited for.
  RunContext compute = compute_;
  compute.should_stop = [stop = factor_stop_] { return stop->load(); };
  factor_ = std::async(std::launch::async,
                       [jobs = jobs_, g = data_[v1::TENSOR_KIND_GRAM].data(), k = plan_.inputs,
                        options = plan_.options, compute = std::move(compute)] {
                         jobs->LowerToComputePriority();
                         return PrepareOptq(Eigen::Map<const MatrixXf>(g, k, k), options, compute);
                       });
}

}  // namespace axeq::server
