// Round trips of the wire codec: options, certificate, status, the upload plan and the result.
#include "proto/convert.h"

#include "core/verify.h"
#include "gtest/gtest.h"

namespace axeq {
namespace {

TEST(Convert, OptionsRoundTripAndDefaults) {
  auto d = OptionsFromProto(v1::QuantizationConfig{});
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->weights.bits, 4);
  EXPECT_EQ(d->inputs.bits, 8);
  EXPECT_EQ(d->method, Method::kAxe);
  LayerOptions o;
  o.algorithm = Algorithm::kGpfq;
  o.method = Method::kEpInit;
  o.weights.bits = 3;
  o.accumulator.bits = 17;
  o.accumulator.tile_size = 64;
  o.rounding = Rounding::kToZero;
  o.soft_threshold = false;
  o.precision = Precision::kFloat64;
  auto back = OptionsFromProto(OptionsToProto(o));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(OptionsToProto(*back).SerializeAsString(), OptionsToProto(o).SerializeAsString());
  v1::QuantizationConfig bad;
  bad.set_weight_bits(12);
  auto e = OptionsFromProto(bad);
  EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(e.status().message().find("weight_bits"), std::string::npos);
  bad = {};
  bad.set_algorithm(static_cast<v1::Algorithm>(9));
  EXPECT_EQ(OptionsFromProto(bad).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Convert, CertificateRoundTrip) {
  MatrixXi8 q(2, 3);
  q << 1, -2, 3, 0, 0, -1;
  AccumulatorSpec acc;
  acc.bits = 11;
  acc.tile_size = 2;
  const Certificate c = MakeCertificate(q, 4, InputSpec{}, acc);
  EXPECT_TRUE(VerifyCertificate(q, *CertificateFromProto(CertificateToProto(c))).consistent);
}

TEST(Convert, ChunkRangesCoverAndAlign) {
  auto r = ChunkRanges(1000, 300, 12);
  int64_t next = 0;
  for (auto [b, e] : r) {
    EXPECT_EQ(b, next);
    EXPECT_LE(e - b, 300);
    EXPECT_EQ(b % 12, 0);
    next = e;
  }
  EXPECT_EQ(next, 1000);
  EXPECT_TRUE(ChunkRanges(0, 300, 4).empty());
}

TEST(Convert, StatusCodesMap) {
  EXPECT_EQ(ToGrpc(absl::ResourceExhaustedError("x")).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(FromGrpc(grpc::Status(grpc::StatusCode::PERMISSION_DENIED, "y")).code(),
            absl::StatusCode::kPermissionDenied);
}

TEST(Upload, HeaderRoundTripAndTensorList) {
  UploadPlan p;
  p.layer_name = "fc1";
  p.output_channels = 3;
  p.inputs = 5;
  p.options.algorithm = Algorithm::kOptq;
  p.activations.scale = 0.5f;
  p.samples = 7;
  p.has_bias = p.has_xx = p.has_means = true;
  p.idempotency_key = "k";
  PlanTensors(&p);
  auto back = DecodeHeader(EncodeHeader(p));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(EncodeHeader(*back).SerializeAsString(), EncodeHeader(p).SerializeAsString());
  std::vector<std::string> names;
  for (const auto& t : back->tensors) names.push_back(t.name());
  EXPECT_EQ(names, (std::vector<std::string>{"GRAM", "WEIGHT", "BIAS", "CROSS", "XX", "MEAN_X",
                                             "MEAN_XQ"}));
  EXPECT_TRUE(back->Find(v1::TENSOR_KIND_CROSS)->optional);  // OPTQ reads it only for the report
  EXPECT_EQ(back->Find(v1::TENSOR_KIND_WEIGHT)->bytes(), 4 * 15);
  EXPECT_EQ(back->TensorBytes(), 4 * (25 + 15 + 3 + 25 + 25 + 5 + 5));
  // Rows mode: only the weights and bias are tensors; the report is computed unless turned off.
  p.rows = true;
  PlanTensors(&p);
  auto rows = DecodeHeader(EncodeHeader(p));
  ASSERT_TRUE(rows.ok());
  EXPECT_EQ(rows->tensors.size(), 2u);
  EXPECT_TRUE(rows->rows_keep_xx());
  EXPECT_FALSE(rows->has_xx);
}

TEST(Upload, BadHeadersNameTheField) {
  UploadPlan p;
  p.layer_name = "x";
  p.output_channels = 2;
  p.inputs = 2;
  p.samples = 1;
  p.activations.scale = 1;
  v1::LayerHeader h = EncodeHeader(p);
  auto check = [](v1::LayerHeader bad, const char* field) {
    auto r = DecodeHeader(bad);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_NE(r.status().message().find(field), std::string::npos) << r.status();
  };
  ASSERT_TRUE(DecodeHeader(h).ok());
  v1::LayerHeader b = h;
  b.clear_layer_name();
  check(b, "layer_name");
  b = h;
  b.set_inputs(0);
  check(b, "inputs");
  b = h;
  b.set_samples(0);
  check(b, "samples");
  b = h;
  b.mutable_activations()->set_bits(4);
  check(b, "activations");
  b = h;
  b.set_calibration(v1::CALIBRATION_KIND_UNSPECIFIED);
  check(b, "calibration");
}

QuantizedLayer SmallLayer() {
  QuantizedLayer l;
  l.name = "layer";
  l.codes.resize(3, 4);
  l.codes << 1, -2, 3, 0, 0, 0, -1, 7, 5, 5, -5, 2;
  l.group_size = 2;
  l.scales = MatrixXf::Constant(3, 2, 0.25f);
  l.bias = Eigen::VectorXf::LinSpaced(3, -1, 1);
  l.bias_corrected = true;
  l.activations.scale = 0.125f;
  l.activations.zero_point = 3;
  AccumulatorSpec acc;
  acc.bits = 12;
  acc.tile_size = 2;
  l.certificate = MakeCertificate(l.codes, 4, InputSpec{}, acc);
  l.report.sparsity = 0.25;
  l.run.description = "test";
  l.run.samples = 9;
  return l;
}

TEST(Result, EncodeDecodeRoundTrip) {
  const QuantizedLayer l = SmallLayer();
  ResultDecoder d;
  std::vector<JobState> states;
  ASSERT_TRUE(
      d.Add(ProgressEvent("j1", JobSnapshot{JobState::kRunning}), [&](const JobSnapshot& p) {
         states.push_back(p.state);
       }).ok());
  ASSERT_TRUE(EmitResultChunks("j1", l.codes, l.scales, &*l.bias,
                               [&](const v1::JobEvent& e) { return d.Add(e).ok(); }));
  ASSERT_TRUE(d.Add(FinishedEvent("j1", EncodeFinished(l))).ok());
  auto back = d.Finish();
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->codes, l.codes);
  EXPECT_EQ(back->scales, l.scales);
  EXPECT_EQ(*back->bias, *l.bias);
  EXPECT_EQ(back->group_size, 2);
  EXPECT_EQ(back->activations.zero_point, 3);
  EXPECT_EQ(back->run.job_id, "j1");
  EXPECT_EQ(back->run.samples, 9);
  EXPECT_TRUE(back->bias_corrected);
  EXPECT_EQ(back->certificate.weights_sha256, l.certificate.weights_sha256);
  EXPECT_EQ(back->certificate.tile_size(), 2);
  EXPECT_EQ(states, std::vector<JobState>{JobState::kRunning});
}

TEST(Result, MissingOrMisorderedPartsAreDataLoss) {
  const QuantizedLayer l = SmallLayer();
  ResultDecoder none;
  EXPECT_EQ(none.Finish().status().code(), absl::StatusCode::kDataLoss);  // no summary
  ResultDecoder partial;
  ASSERT_TRUE(partial.Add(FinishedEvent("j", EncodeFinished(l))).ok());
  EXPECT_EQ(partial.Finish().status().code(), absl::StatusCode::kDataLoss);  // no chunks
  v1::JobEvent e;
  e.mutable_result()->set_part(v1::RESULT_PART_CODES);
  e.mutable_result()->set_offset(5);
  EXPECT_EQ(ResultDecoder().Add(e).code(), absl::StatusCode::kDataLoss);
}

TEST(Result, FailuresKeepTheirCodeAndState) {
  const v1::Finished f = EncodeFailure(absl::DeadlineExceededError("late"));
  EXPECT_EQ(f.state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(FinishedStatus(f).code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(EncodeFailure(absl::FailedPreconditionError("x")).state(), v1::JOB_STATE_FAILED);
  ResultDecoder d;
  ASSERT_TRUE(d.Add(FinishedEvent("j", f)).ok());
  EXPECT_EQ(d.Finish().status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(IsTerminal(DecodeState(v1::JOB_STATE_CANCELLED)));
  EXPECT_FALSE(IsTerminal(DecodeState(v1::JOB_STATE_CANCELLING)));
  EXPECT_EQ(JobStateName(JobState::kRunning), std::string("RUNNING"));
  EXPECT_EQ(FinishedStatus(EncodeOutcome(absl::OkStatus(), nullptr)).code(),
            absl::StatusCode::kInternal);
}

TEST(Result, JobStatesAndProgressRoundTrip) {
  for (JobState s :
       {JobState::kReceiving, JobState::kQueued, JobState::kRunning, JobState::kCancelling,
        JobState::kSucceeded, JobState::kFailed, JobState::kCancelled}) {
    EXPECT_NE(EncodeState(s), v1::JOB_STATE_UNSPECIFIED) << JobStateName(s);
    EXPECT_EQ(DecodeState(EncodeState(s)), s) << JobStateName(s);
    EXPECT_EQ(WireStateName(s), std::string("JOB_STATE_") + JobStateName(s));
    const JobSnapshot p{s, 123456789012, 0.25, 3};
    ResultDecoder d;
    JobSnapshot got;
    ASSERT_TRUE(d.Add(ProgressEvent("j", p), [&](const JobSnapshot& q) { got = q; }).ok());
    EXPECT_EQ(got.state, s);
    EXPECT_EQ(got.bytes_received, p.bytes_received);
    EXPECT_EQ(got.fraction, p.fraction);
    EXPECT_EQ(got.queue_position, p.queue_position);
  }
  EXPECT_EQ(DecodeState(v1::JOB_STATE_UNSPECIFIED), JobState::kUnknown);
  EXPECT_EQ(DecodeState(static_cast<v1::JobState>(99)), JobState::kUnknown);
  EXPECT_EQ(EncodeState(JobState::kUnknown), v1::JOB_STATE_UNSPECIFIED);
}

}  // namespace
}  // namespace axeq
