// Helpers of the server tests (server_test.cc, server_limits_test.cc): a plain in-process server
// on port 0, a client for it, the engine's random conformance cases and raw upload calls.
#ifndef AXEQ_TESTS_SERVER_TEST_UTIL_H_
#define AXEQ_TESTS_SERVER_TEST_UTIL_H_

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "client/remote.h"
#include "core/test_util.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "server/server.h"

namespace axeq {

namespace fs = std::filesystem;
using server::Server;
using server::ServerOptions;

inline std::string TempDir(const std::string& name) {
  const std::string d = ::testing::TempDir() + "axeq_" + name + "_" + std::to_string(getpid());
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

inline ServerOptions Plain() {
  ServerOptions o;
  o.address = "127.0.0.1:0";
  o.insecure = true;
  o.log_json = false;
  o.jobs.workers = 2;
  o.jobs.compute_threads = 2;
  return o;
}

inline std::unique_ptr<RemoteClient> ClientFor(int port, const std::string& token = "") {
  RemoteOptions ro;
  ro.address = "127.0.0.1:" + std::to_string(port);
  ro.token = token;
  ro.max_attempts = 1;
  ro.deadline_seconds = 60;
  return *RemoteClient::Connect(ro);
}

struct Case {
  testing::RandomLayer layer;
  LayerOptions options;
  Eigen::VectorXf bias;
};

inline Case MakeCase(std::mt19937_64& rng, Algorithm alg, int tile, bool is_signed) {
  Case c;
  InputSpec in;
  in.is_signed = is_signed;
  c.layer = testing::MakeRandomLayer(rng, 40, 72, 300, in);
  c.options.algorithm = alg;
  c.options.inputs = in;
  c.options.accumulator.bits = 16;
  c.options.accumulator.tile_size = tile;
  c.bias = Eigen::VectorXf::LinSpaced(40, -0.5f, 0.5f);
  return c;
}

inline QuantizedLayer Embedded(const Case& c) {
  StatsAccumulator acc(c.layer.x.cols(), true, true);
  EXPECT_TRUE(acc.Add(c.layer.x, c.layer.xq).ok());
  return *QuantizeLayer(c.layer.weights, &c.bias, *acc.Finish(), c.options);
}

// A RemoteLayer is a view of the case: the case must outlive every call that reads it, so a view
// of a temporary case does not compile.
RemoteLayer Remote(Case&&) = delete;
inline RemoteLayer Remote(const Case& c) {
  RemoteLayer l{"layer", c.layer.weights};
  l.bias = &c.bias;
  l.x = &c.layer.x;
  l.xq = &c.layer.xq;
  l.activations = c.layer.act;
  l.options = c.options;
  return l;
}

inline bool Shell(const std::string& cmd) {
  return std::system((cmd + " >/dev/null 2>&1").c_str()) == 0;
}

// Makes a CA (ca.pem, ca.key) in `d` and certificates it signs: server.{pem,key} for localhost and
// 127.0.0.1, client.{pem,key}. False when openssl fails.
inline bool MakeTestCertificates(const std::string& d) {
  if (!Shell("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=axeq-ca -keyout " + d +
             "/ca.key -out " + d + "/ca.pem"))
    return false;
  auto sign = [&](const std::string& name, const std::string& san) {
    std::ofstream(d + "/" + name + ".ext") << "subjectAltName=" << san << "\n";
    return Shell("openssl req -newkey rsa:2048 -nodes -subj /CN=" + name + " -keyout " + d + "/" +
                 name + ".key -out " + d + "/" + name + ".csr") &&
           Shell("openssl x509 -req -in " + d + "/" + name + ".csr -CA " + d + "/ca.pem -CAkey " +
                 d + "/ca.key -CAcreateserial -days 1 -extfile " + d + "/" + name + ".ext -out " +
                 d + "/" + name + ".pem");
  };
  return sign("server", "DNS:localhost,IP:127.0.0.1") && sign("client", "DNS:client");
}

// Sends raw upload messages and returns the call's status (and the trailing metadata).
class RawCall {
 public:
  explicit RawCall(int port, const std::string& token = "", double deadline_seconds = 30) {
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                   grpc::InsecureChannelCredentials());
    stub_ = v1::Quantizer::NewStub(channel_);
    if (!token.empty()) ctx_.AddMetadata("authorization", "Bearer " + token);
    ctx_.set_deadline(std::chrono::system_clock::now() +
                      std::chrono::milliseconds(static_cast<int64_t>(deadline_seconds * 1000)));
    stream_ = stub_->Quantize(&ctx_);
  }
  void Send(const v1::UploadRequest& r) { stream_->Write(r); }
  // Reads one event; false when the call ended.
  bool Next(v1::JobEvent* e) {
    if (!stream_->Read(e)) return false;
    if (!e->job_id().empty()) job_id = e->job_id();
    return true;
  }
  void Cancel() { ctx_.TryCancel(); }
  grpc::Status Finish() {
    stream_->WritesDone();
    v1::JobEvent e;
    while (stream_->Read(&e)) {
      if (!e.job_id().empty()) job_id = e.job_id();
    }
    return stream_->Finish();
  }
  std::string Trailer(const std::string& key) {
    auto& md = ctx_.GetServerTrailingMetadata();
    auto it = md.find(key);
    return it == md.end() ? "" : std::string(it->second.data(), it->second.size());
  }
  std::string job_id;

 private:
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Quantizer::Stub> stub_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::UploadRequest, v1::JobEvent>> stream_;
};

inline v1::UploadRequest Header(int64_t c, int64_t k) {
  v1::UploadRequest r;
  auto* h = r.mutable_header();
  h->set_layer_name("bad");
  h->set_output_channels(c);
  h->set_inputs(k);
  h->set_calibration(v1::CALIBRATION_KIND_STATISTICS);
  h->set_samples(10);
  auto* a = h->mutable_activations();
  a->set_bits(8);
  a->set_scale(0.1f);
  return r;
}

inline v1::UploadRequest Tensor(v1::TensorKind kind, int64_t offset, const std::vector<float>& v) {
  v1::UploadRequest r;
  r.mutable_tensor()->set_tensor(kind);
  r.mutable_tensor()->set_offset(offset);
  r.mutable_tensor()->set_data(reinterpret_cast<const char*>(v.data()), v.size() * 4);
  return r;
}

inline v1::UploadRequest Commit(int64_t n) {
  v1::UploadRequest r;
  r.mutable_commit()->set_chunks(n);
  return r;
}

inline std::vector<float> Identity(int k) {
  std::vector<float> g(k * k, 0.0f);
  for (int i = 0; i < k; ++i) g[i * k + i] = 1.0f;
  return g;
}

}  // namespace axeq

#endif  // AXEQ_TESTS_SERVER_TEST_UTIL_H_
