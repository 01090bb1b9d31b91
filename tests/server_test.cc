// The service through a real in-process server on port 0: the engine's conformance cases give
// bit-identical codes embedded and over the wire (rows and statistics uploads); every malformed
// stream gets its exact status code and the server keeps serving; auth, TLS and mTLS; cancellation
// and deadlines; results survive a restart; and the real binary drains on SIGTERM.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "client/remote.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "core/test_util.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "gtest/gtest.h"
#include "proto/convert.h"
#include "server/server.h"

namespace axeq {
namespace {

namespace fs = std::filesystem;
using server::Server;
using server::ServerOptions;

std::string TempDir(const std::string& name) {
  const std::string d = ::testing::TempDir() + "axeq_" + name + "_" + std::to_string(getpid());
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

ServerOptions Plain() {
  ServerOptions o;
  o.address = "127.0.0.1:0";
  o.insecure = true;
  o.log_json = false;
  o.jobs.workers = 2;
  o.jobs.compute_threads = 2;
  return o;
}

std::unique_ptr<RemoteClient> ClientFor(int port, const std::string& token = "") {
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

Case MakeCase(std::mt19937_64& rng, Algorithm alg, int tile, bool is_signed) {
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

LayerResult Embedded(const Case& c) {
  StatsAccumulator acc(c.layer.x.cols(), true, true);
  EXPECT_TRUE(acc.Add(c.layer.x, c.layer.xq).ok());
  return *QuantizeLayer(c.layer.weights, &c.bias, *acc.Finish(), c.options);
}

RemoteLayer Remote(const Case& c) {
  RemoteLayer l{"layer", c.layer.weights};
  l.bias = &c.bias;
  l.x = &c.layer.x;
  l.xq = &c.layer.xq;
  l.activations = c.layer.act;
  l.options = c.options;
  return l;
}

TEST(ServerConformance, RemoteEqualsEmbeddedBitForBit) {
  auto srv = Server::Start(Plain());
  ASSERT_TRUE(srv.ok()) << srv.status();
  auto client = ClientFor((*srv)->port());
  std::mt19937_64 rng(testing::TestSeed(1201));
  for (auto alg : {Algorithm::kOptq, Algorithm::kGpfq})
    for (int tile : {0, 24})
      for (bool is_signed : {false, true}) {
        Case c = MakeCase(rng, alg, tile, is_signed);
        const LayerResult local = Embedded(c);
        auto rows = client->Quantize(Remote(c));
        ASSERT_TRUE(rows.ok()) << rows.status();
        EXPECT_EQ(rows->result.codes, local.codes);
        EXPECT_EQ(rows->result.scales, local.scales);
        EXPECT_EQ(*rows->result.bias, *local.bias);
        EXPECT_EQ(rows->result.certificate.weights_sha256, local.certificate.weights_sha256);
        EXPECT_TRUE(VerifyCertificate(rows->result.codes, rows->result.certificate).consistent);
        EXPECT_EQ(rows->result.report.relative_error, local.report.relative_error);
        // Statistics upload: the same statistics give the same codes.
        StatsAccumulator acc(c.layer.x.cols(), true, true);
        ASSERT_TRUE(acc.Add(c.layer.x, c.layer.xq).ok());
        const LayerStats stats = *acc.Finish();
        RemoteLayer l = Remote(c);
        l.stats = &stats;
        auto st = client->Quantize(l);
        ASSERT_TRUE(st.ok()) << st.status();
        EXPECT_EQ(st->result.codes, local.codes);
        EXPECT_EQ(st->result.report.relative_error, local.report.relative_error);  // xx and cross went
        // OPTQ without xx: the client leaves cross out (OPTQ does not read it); same codes.
        LayerStats lean = stats;
        lean.xx.resize(0, 0);
        l.stats = &lean;
        auto ls = client->Quantize(l);
        ASSERT_TRUE(ls.ok()) << ls.status();
        EXPECT_EQ(ls->result.codes, local.codes);
        EXPECT_EQ(ls->result.report.relative_error_quantized_inputs, local.report.relative_error_quantized_inputs);
      }
}

TEST(ServerConformance, ProgressCoversTheUploadThenTheJob) {
  auto srv = Server::Start(Plain());
  ASSERT_TRUE(srv.ok()) << srv.status();
  std::mt19937_64 rng(testing::TestSeed(1203));
  Case c = MakeCase(rng, Algorithm::kGpfq, 0, false);
  std::vector<std::pair<std::string, double>> events;
  auto r = ClientFor((*srv)->port())->Quantize(Remote(c), [&](double f, const std::string& s) { events.emplace_back(s, f); });
  ASSERT_TRUE(r.ok()) << r.status();
  // Upload progress: non-decreasing, ending at exactly 1, before the job is queued (only the
  // server's RECEIVING may come earlier); then server states, ending in SUCCEEDED.
  double prev = 0;
  size_t done = events.size();
  for (size_t i = 0; i < events.size(); ++i) {
    if (events[i].first != "UPLOADING") continue;
    EXPECT_GE(events[i].second, prev);
    prev = events[i].second;
    if (prev == 1.0 && done == events.size()) done = i;
  }
  ASSERT_LT(done, events.size()) << "no UPLOADING event reached 1";
  for (size_t i = 0; i < done; ++i) EXPECT_TRUE(events[i].first == "UPLOADING" || events[i].first == "JOB_STATE_RECEIVING") << events[i].first;
  for (size_t i = done + 1; i < events.size(); ++i) EXPECT_EQ(events[i].first.rfind("JOB_STATE_", 0), 0u) << events[i].first;
  EXPECT_EQ(events.back().first, "JOB_STATE_SUCCEEDED");
}

TEST(ServerConformance, WeightsFromAStridedViewAreSentAsTheirValues) {
  // A layer that is a slice of a larger matrix (outer stride != K): the client cannot lend its
  // rows as one run, so it copies them once; the result equals the contiguous upload.
  auto srv = Server::Start(Plain());
  ASSERT_TRUE(srv.ok()) << srv.status();
  auto client = ClientFor((*srv)->port());
  std::mt19937_64 rng(testing::TestSeed(1202));
  Case c = MakeCase(rng, Algorithm::kOptq, 0, false);
  MatrixXf wide = MatrixXf::Zero(c.layer.weights.rows(), c.layer.weights.cols() + 7);
  wide.leftCols(c.layer.weights.cols()) = c.layer.weights;
  RemoteLayer strided{"strided", wide.leftCols(c.layer.weights.cols())};
  ASSERT_NE(strided.weights.outerStride(), strided.weights.cols());
  RemoteLayer plain = Remote(c);
  strided.bias = plain.bias;
  strided.x = plain.x;
  strided.xq = plain.xq;
  strided.activations = plain.activations;
  strided.options = plain.options;
  auto a = client->Quantize(strided);
  auto b = client->Quantize(plain);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->result.codes, b->result.codes);
  EXPECT_EQ(a->result.codes, Embedded(c).codes);
}

// Sends raw upload messages and returns the call's status (and the trailing metadata).
class RawCall {
 public:
  explicit RawCall(int port, const std::string& token = "") {
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials());
    stub_ = v1::Quantizer::NewStub(channel_);
    if (!token.empty()) ctx_.AddMetadata("authorization", "Bearer " + token);
    ctx_.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    stream_ = stub_->Quantize(&ctx_);
  }
  void Send(const v1::UploadRequest& r) { stream_->Write(r); }
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

v1::UploadRequest Header(int64_t c, int64_t k) {
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

v1::UploadRequest Tensor(v1::TensorKind kind, int64_t offset, const std::vector<float>& v) {
  v1::UploadRequest r;
  r.mutable_tensor()->set_tensor(kind);
  r.mutable_tensor()->set_offset(offset);
  r.mutable_tensor()->set_data(reinterpret_cast<const char*>(v.data()), v.size() * 4);
  return r;
}

v1::UploadRequest Commit(int64_t n) {
  v1::UploadRequest r;
  r.mutable_commit()->set_chunks(n);
  return r;
}

std::vector<float> Identity(int k) {
  std::vector<float> g(k * k, 0.0f);
  for (int i = 0; i < k; ++i) g[i * k + i] = 1.0f;
  return g;
}

TEST(ServerBadInput, EachMalformedStreamGetsItsCodeAndTheServerKeepsServing) {
  auto opts = Plain();
  opts.jobs.memory_budget_bytes = 64 << 20;
  auto srv = Server::Start(opts);
  ASSERT_TRUE(srv.ok()) << srv.status();
  const int port = (*srv)->port();
  const int k = 8, c = 4;
  const std::vector<float> w(c * k, 0.5f), g = Identity(k);
  struct Bad {
    const char* what;
    std::function<void(RawCall&)> send;
    grpc::StatusCode code;
    const char* message_part;
  };
  std::vector<Bad> cases = {
      {"empty stream", [](RawCall&) {}, grpc::StatusCode::INVALID_ARGUMENT, "header"},
      {"chunk before header", [&](RawCall& r) { r.Send(Tensor(v1::TENSOR_KIND_WEIGHT, 0, w)); },
       grpc::StatusCode::INVALID_ARGUMENT, "first upload message"},
      {"zero channels", [&](RawCall& r) { r.Send(Header(0, k)); }, grpc::StatusCode::INVALID_ARGUMENT, "output_channels"},
      {"absurd bit width", [&](RawCall& r) { auto h = Header(c, k); h.mutable_header()->mutable_config()->set_weight_bits(12); r.Send(h); },
       grpc::StatusCode::INVALID_ARGUMENT, "weight_bits"},
      {"activation bits disagree", [&](RawCall& r) { auto h = Header(c, k); h.mutable_header()->mutable_activations()->set_bits(4); r.Send(h); },
       grpc::StatusCode::INVALID_ARGUMENT, "activations"},
      {"second header", [&](RawCall& r) { r.Send(Header(c, k)); r.Send(Header(c, k)); }, grpc::StatusCode::INVALID_ARGUMENT, "second header"},
      {"out of order", [&](RawCall& r) { r.Send(Header(c, k)); r.Send(Tensor(v1::TENSOR_KIND_WEIGHT, 8, std::vector<float>(8, 1))); },
       grpc::StatusCode::INVALID_ARGUMENT, "out of order"},
      {"duplicate", [&](RawCall& r) {
         r.Send(Header(c, k));
         r.Send(Tensor(v1::TENSOR_KIND_WEIGHT, 0, std::vector<float>(8, 1)));
         r.Send(Tensor(v1::TENSOR_KIND_WEIGHT, 0, std::vector<float>(8, 1)));
       }, grpc::StatusCode::INVALID_ARGUMENT, "expected offset 8"},
      {"beyond the tensor", [&](RawCall& r) { r.Send(Header(c, k)); r.Send(Tensor(v1::TENSOR_KIND_WEIGHT, 0, std::vector<float>(40, 1))); },
       grpc::StatusCode::INVALID_ARGUMENT, "beyond"},
      {"NaN", [&](RawCall& r) { auto bad = w; bad[5] = std::nanf(""); r.Send(Header(c, k)); r.Send(Tensor(v1::TENSOR_KIND_WEIGHT, 0, bad)); },
       grpc::StatusCode::INVALID_ARGUMENT, "element 5"},
      {"unexpected tensor", [&](RawCall& r) { r.Send(Header(c, k)); r.Send(Tensor(v1::TENSOR_KIND_BIAS, 0, std::vector<float>(4, 1))); },
       grpc::StatusCode::INVALID_ARGUMENT, "not expected"},
      {"oversized chunk", [&](RawCall& r) { r.Send(Header(c, k)); r.Send(Tensor(v1::TENSOR_KIND_WEIGHT, 0, std::vector<float>(5 << 18, 1))); },
       grpc::StatusCode::INVALID_ARGUMENT, "4 MiB"},
      {"message over the limit", [&](RawCall& r) { r.Send(Header(c, k)); r.Send(Tensor(v1::TENSOR_KIND_WEIGHT, 0, std::vector<float>(3 << 20, 1))); },
       grpc::StatusCode::RESOURCE_EXHAUSTED, ""},
      {"missing chunks", [&](RawCall& r) { r.Send(Header(c, k)); r.Send(Tensor(v1::TENSOR_KIND_WEIGHT, 0, w)); r.Send(Commit(1)); },
       grpc::StatusCode::FAILED_PRECONDITION, "GRAM has 0 of 64"},
      {"commit count", [&](RawCall& r) { r.Send(Header(c, k)); r.Send(Tensor(v1::TENSOR_KIND_WEIGHT, 0, w)); r.Send(Commit(7)); },
       grpc::StatusCode::INVALID_ARGUMENT, "announces 7"},
      {"truncated", [&](RawCall& r) { r.Send(Header(c, k)); r.Send(Tensor(v1::TENSOR_KIND_WEIGHT, 0, w)); },
       grpc::StatusCode::INVALID_ARGUMENT, "truncated"},
      {"infeasible budget", [&](RawCall& r) {
         auto h = Header(c, k);
         h.mutable_header()->mutable_config()->set_accumulator_bits(8);
         r.Send(h);
         r.Send(Tensor(v1::TENSOR_KIND_WEIGHT, 0, w));
         r.Send(Tensor(v1::TENSOR_KIND_GRAM, 0, g));
         r.Send(Commit(2));
       }, grpc::StatusCode::FAILED_PRECONDITION, "cannot hold"},
      {"over the memory budget", [&](RawCall& r) { r.Send(Header(4096, 4096)); }, grpc::StatusCode::RESOURCE_EXHAUSTED, "MiB"},
  };
  for (auto& b : cases) {
    RawCall call(port);
    b.send(call);
    grpc::Status s = call.Finish();
    EXPECT_EQ(s.error_code(), b.code) << b.what << ": " << s.error_message();
    EXPECT_NE(s.error_message().find(b.message_part), std::string::npos) << b.what << ": " << s.error_message();
    if (std::string(b.what) == "over the memory budget") EXPECT_FALSE(call.Trailer("axeq-retry-after-ms").empty());
    // The server still serves a good layer after every bad one.
    RawCall good(port);
    good.Send(Header(c, k));
    good.Send(Tensor(v1::TENSOR_KIND_WEIGHT, 0, w));
    good.Send(Tensor(v1::TENSOR_KIND_GRAM, 0, g));
    good.Send(Commit(2));
    EXPECT_TRUE(good.Finish().ok()) << "after " << b.what;
  }
}

TEST(ServerAuth, TokensAndPrincipals) {
  const std::string dir = TempDir("auth");
  std::ofstream(dir + "/tokens") << "# token principal\nalice-token-0123456789 alice\nbob-token-0123456789ab bob\n";
  auto opts = Plain();
  opts.tokens_file = dir + "/tokens";
  auto srv = Server::Start(opts);
  ASSERT_TRUE(srv.ok()) << srv.status();
  std::mt19937_64 rng(5);
  Case c = MakeCase(rng, Algorithm::kOptq, 0, false);
  EXPECT_EQ(ClientFor((*srv)->port())->Quantize(Remote(c)).status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(ClientFor((*srv)->port(), "wrong-token-0000000000")->Quantize(Remote(c)).status().code(),
            absl::StatusCode::kUnauthenticated);
  auto alice = ClientFor((*srv)->port(), "alice-token-0123456789");
  auto r = alice->Quantize(Remote(c));
  ASSERT_TRUE(r.ok()) << r.status();
  auto bob = ClientFor((*srv)->port(), "bob-token-0123456789ab");
  EXPECT_EQ(bob->Fetch(r->job_id).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(bob->Cancel(r->job_id).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(bob->List()->empty());
  EXPECT_EQ(alice->List()->size(), 1u);
  auto again = alice->Fetch(r->job_id);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->result.codes, r->result.codes);
  EXPECT_EQ(alice->Fetch("no-such-job").status().code(), absl::StatusCode::kNotFound);
}

bool Shell(const std::string& cmd) { return std::system((cmd + " >/dev/null 2>&1").c_str()) == 0; }

TEST(ServerTls, TlsAndMutualTls) {
  const std::string d = TempDir("tls");
  ASSERT_TRUE(Shell("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=axeq-ca -keyout " + d + "/ca.key -out " + d + "/ca.pem"));
  auto sign = [&](const std::string& name, const std::string& san) {
    std::ofstream(d + "/" + name + ".ext") << "subjectAltName=" << san << "\n";
    return Shell("openssl req -newkey rsa:2048 -nodes -subj /CN=" + name + " -keyout " + d + "/" + name + ".key -out " + d + "/" + name + ".csr") &&
           Shell("openssl x509 -req -in " + d + "/" + name + ".csr -CA " + d + "/ca.pem -CAkey " + d + "/ca.key -CAcreateserial -days 1 -extfile " +
               d + "/" + name + ".ext -out " + d + "/" + name + ".pem");
  };
  ASSERT_TRUE(sign("server", "DNS:localhost,IP:127.0.0.1"));
  ASSERT_TRUE(sign("client", "DNS:client"));
  std::mt19937_64 rng(6);
  Case c = MakeCase(rng, Algorithm::kGpfq, 0, false);
  auto opts = Plain();
  opts.insecure = false;
  opts.tls_cert_file = d + "/server.pem";
  opts.tls_key_file = d + "/server.key";
  auto srv = Server::Start(opts);
  ASSERT_TRUE(srv.ok()) << srv.status();
  RemoteOptions ro;
  ro.address = "localhost:" + std::to_string((*srv)->port());
  ro.tls_ca_file = d + "/ca.pem";
  ro.max_attempts = 1;
  EXPECT_TRUE((*RemoteClient::Connect(ro))->Quantize(Remote(c)).ok());
  RemoteOptions plain = ro;
  plain.tls_ca_file.clear();
  EXPECT_EQ((*RemoteClient::Connect(plain))->Quantize(Remote(c)).status().code(), absl::StatusCode::kUnavailable);
  // mTLS: the server requires a client certificate signed by its CA.
  auto mopts = opts;
  mopts.tls_client_ca_file = d + "/ca.pem";
  auto msrv = Server::Start(mopts);
  ASSERT_TRUE(msrv.ok()) << msrv.status();
  ro.address = "localhost:" + std::to_string((*msrv)->port());
  EXPECT_EQ((*RemoteClient::Connect(ro))->Quantize(Remote(c)).status().code(), absl::StatusCode::kUnavailable);
  ro.tls_cert_file = d + "/client.pem";
  ro.tls_key_file = d + "/client.key";
  auto r = (*RemoteClient::Connect(ro))->Quantize(Remote(c));
  EXPECT_TRUE(r.ok()) << r.status();
  // No TLS and no --insecure: the server refuses to start.
  auto none = Plain();
  none.insecure = false;
  EXPECT_EQ(Server::Start(none).status().code(), absl::StatusCode::kInvalidArgument);
}

// A layer large enough that quantizing it takes a while (for cancellation and deadlines).
struct BigLayer {
  MatrixXf w;
  LayerStats stats;
};
const BigLayer& Big() {
  static BigLayer* b = [] {
    auto* b = new BigLayer;
    std::mt19937_64 rng(9);
    auto l = testing::MakeRandomLayer(rng, 4096, 2048, 256, InputSpec{});
    b->w = l.weights;
    StatsAccumulator acc(2048, true, false);
    (void)acc.Add(l.x, l.xq);
    b->stats = *acc.Finish();
    return b;
  }();
  return *b;
}

TEST(ServerCancel, ClientCancelAndDeadlineStopTheJob) {
  auto opts = Plain();
  opts.jobs.workers = 1;
  auto srv = Server::Start(opts);
  ASSERT_TRUE(srv.ok());
  RemoteLayer l{"big", Big().w};
  l.stats = &Big().stats;
  l.activations.scale = 0.1f;
  l.options.precision = Precision::kFloat64;  // block 1: no GEMMs, seconds of work to cancel
  l.options.block_size = 1;
  RemoteOptions ro;
  ro.address = "127.0.0.1:" + std::to_string((*srv)->port());
  ro.max_attempts = 1;
  ro.deadline_seconds = 0.8;
  auto t0 = std::chrono::steady_clock::now();
  auto r = (*RemoteClient::Connect(ro))->Quantize(l);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded) << r.status();
  // The job stops within a block: a follow-up tiny job runs on the single worker right away.
  std::mt19937_64 rng(7);
  Case c = MakeCase(rng, Algorithm::kOptq, 0, false);
  auto small = ClientFor((*srv)->port())->Quantize(Remote(c));
  EXPECT_TRUE(small.ok()) << small.status();
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 8.0);
  // Detached job, cancelled by id.
  l.detach = true;
  ro.deadline_seconds = 60;
  auto client = *RemoteClient::Connect(ro);
  std::thread runner([&] { EXPECT_EQ(client->Quantize(l).status().code(), absl::StatusCode::kCancelled); });
  std::string id;
  for (int i = 0; i < 100 && id.empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    auto list = client->List();
    for (const auto& j : *list)
      if (j.layer_name() == "big" && j.state() != v1::JOB_STATE_CANCELLED) id = j.job_id();
  }
  ASSERT_FALSE(id.empty());
  auto st = client->Cancel(id);
  ASSERT_TRUE(st.ok()) << st.status();
  runner.join();
}

TEST(ServerDurability, ResultsSurviveARestart) {
  const std::string dir = TempDir("restart");
  auto opts = Plain();
  opts.jobs.results_dir = dir;
  std::mt19937_64 rng(8);
  Case c = MakeCase(rng, Algorithm::kGpfq, 16, true);
  std::string id;
  MatrixXi8 codes;
  {
    auto srv = Server::Start(opts);
    ASSERT_TRUE(srv.ok());
    auto r = ClientFor((*srv)->port())->Quantize(Remote(c));
    ASSERT_TRUE(r.ok()) << r.status();
    id = r->job_id;
    codes = r->result.codes;
  }
  auto srv = Server::Start(opts);
  ASSERT_TRUE(srv.ok());
  auto f = ClientFor((*srv)->port())->Fetch(id);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->result.codes, codes);
  EXPECT_TRUE(VerifyCertificate(f->result.codes, f->result.certificate).consistent);
  // Idempotency: the same key and content returns the same job; other content is refused.
  RemoteLayer l = Remote(c);
  l.idempotency_key = "k1";
  auto a = ClientFor((*srv)->port())->Quantize(l);
  auto b = ClientFor((*srv)->port())->Quantize(l);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->job_id, b->job_id);
  l.options.accumulator.bits = 18;
  EXPECT_EQ(ClientFor((*srv)->port())->Quantize(l).status().code(), absl::StatusCode::kAlreadyExists);
}

std::string HttpGet(int port, const std::string& path) {
  const std::string cmd = "exec 3<>/dev/tcp/127.0.0.1/" + std::to_string(port) + " && printf 'GET " + path +
                          " HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3";
  std::string out;
  FILE* p = popen(("bash -c \"" + cmd + "\"").c_str(), "r");
  char buf[4096];
  size_t n;
  while (p && (n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  if (p) pclose(p);
  return out;
}

grpc::health::v1::HealthCheckResponse::ServingStatus Health(int port) {
  auto stub = grpc::health::v1::Health::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::health::v1::HealthCheckResponse resp;
  auto st = stub->Check(&ctx, grpc::health::v1::HealthCheckRequest{}, &resp);
  return st.ok() ? resp.status() : grpc::health::v1::HealthCheckResponse::UNKNOWN;
}

TEST(ServerOps, MetricsHealthAndDrain) {
  auto opts = Plain();
  opts.metrics_address = "127.0.0.1:0";
  opts.drain_delay = std::chrono::milliseconds(400);
  auto srv = Server::Start(opts);
  ASSERT_TRUE(srv.ok()) << srv.status();
  EXPECT_EQ(Health((*srv)->port()), grpc::health::v1::HealthCheckResponse::SERVING);
  std::mt19937_64 rng(11);
  Case c = MakeCase(rng, Algorithm::kOptq, 0, false);
  ASSERT_TRUE(ClientFor((*srv)->port())->Quantize(Remote(c)).ok());
  RawCall bad((*srv)->port());
  EXPECT_EQ(bad.Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  ASSERT_GT((*srv)->metrics_port(), 0);
  const std::string m = HttpGet((*srv)->metrics_port(), "/metrics");
  for (const char* want : {"axeq_rpc_requests_total{code=\"OK\",method=\"Quantize\"} 1",
                           "axeq_rpc_requests_total{code=\"INVALID_ARGUMENT\",method=\"Quantize\"} 1",
                           "axeq_certificates_total{verdict=\"safe\"} 1", "axeq_layer_duration_seconds_count 1",
                           "axeq_queue_depth 0", "axeq_inflight_bytes 0", "axeq_received_bytes_total",
                           "axeq_jobs_total{state=\"JOB_STATE_SUCCEEDED\"} 1", "axeq_worker_utilisation_ratio"})
    EXPECT_NE(m.find(want), std::string::npos) << want << "\n" << m.substr(0, 3000);
  // Draining: health turns NOT_SERVING before the server stops accepting.
  std::thread drain([&] { (*srv)->Drain(std::chrono::milliseconds(500)); });
  bool not_serving = false;
  for (int i = 0; i < 40 && !not_serving; ++i) {
    not_serving = Health((*srv)->port()) == grpc::health::v1::HealthCheckResponse::NOT_SERVING;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  drain.join();
  EXPECT_TRUE(not_serving);
}

// One grpc.reflection.v1alpha exchange, hand-encoded (the stubs live inside libgrpc++_reflection
// without installed headers): returns the raw ServerReflectionResponse bytes.
std::string Reflect(int port, int field, const std::string& value) {
  auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials());
  grpc::internal::RpcMethod method("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                   grpc::internal::RpcMethod::BIDI_STREAMING);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>> stream(
      grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, grpc::ByteBuffer>::Create(channel.get(), method, &ctx));
  std::string req = {static_cast<char>((field << 3) | 2), static_cast<char>(value.size())};
  req += value;
  grpc::Slice slice(req);
  EXPECT_TRUE(stream->Write(grpc::ByteBuffer(&slice, 1)));
  stream->WritesDone();
  grpc::ByteBuffer resp;
  std::string out;
  if (stream->Read(&resp)) {
    std::vector<grpc::Slice> parts;
    EXPECT_TRUE(resp.Dump(&parts).ok());
    for (const auto& p : parts) out.append(reinterpret_cast<const char*>(p.begin()), p.size());
  }
  EXPECT_TRUE(stream->Finish().ok());
  return out;
}

TEST(ServerOps, ReflectionDescribesTheServices) {
  auto srv = Server::Start(Plain());
  ASSERT_TRUE(srv.ok()) << srv.status();
  // list_services (field 7): the quantizer and the health service.
  const std::string services = Reflect((*srv)->port(), 7, "");
  EXPECT_NE(services.find("axeq.v1.Quantizer"), std::string::npos);
  EXPECT_NE(services.find("grpc.health.v1.Health"), std::string::npos);
  // file_containing_symbol (field 4): the contract's descriptor, with Quantize's real message types
  // (the server reads Quantize as raw buffers, but it describes the typed contract).
  const std::string file = Reflect((*srv)->port(), 4, "axeq.v1.Quantizer");
  for (const char* want : {"axeq/v1/axeq.proto", "UploadRequest", "JobEvent", "Quantize", "TensorChunk"})
    EXPECT_NE(file.find(want), std::string::npos) << want;
}

TEST(ServerDurability, RetentionKeepsTheNewestWithinTheSizeLimit) {
  const std::string dir = TempDir("retention");
  auto opts = Plain();
  opts.jobs.results_dir = dir;
  opts.jobs.retention_max_bytes = 1;  // every result is larger: only the newest file may survive
  auto srv = Server::Start(opts);
  ASSERT_TRUE(srv.ok());
  std::mt19937_64 rng(12);
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    Case c = MakeCase(rng, Algorithm::kOptq, 0, false);
    auto r = ClientFor((*srv)->port())->Quantize(Remote(c));
    ASSERT_TRUE(r.ok()) << r.status();
    ids.push_back(r->job_id);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  int files = 0;
  for (const auto& e : fs::directory_iterator(dir)) files += e.path().string().find(".axeqjob.") != std::string::npos;
  EXPECT_LE(files, 1);
  // Evicted results are gone by id; the server keeps serving.
  EXPECT_EQ(ClientFor((*srv)->port())->Fetch(ids[0]).status().code(), absl::StatusCode::kNotFound);
}

TEST(ServerBinary, DrainsOnSigterm) {
  const char* bin = std::getenv("AXEQ_SERVER_BIN");
  ASSERT_NE(bin, nullptr) << "AXEQ_SERVER_BIN not set";
  const std::string log = TempDir("sigterm") + "/log";
  const pid_t pid = fork();
  if (pid == 0) {
    freopen(log.c_str(), "w", stderr);
    execl(bin, bin, "--address", "127.0.0.1:0", "--insecure", "--grace-seconds", "5", "--drain-delay-seconds", "0.2", nullptr);
    _exit(127);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(800));
  ASSERT_EQ(kill(pid, SIGTERM), 0);
  int status = 0;
  for (int i = 0; i < 100 && waitpid(pid, &status, WNOHANG) == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_TRUE(WIFEXITED(status)) << "server did not exit after SIGTERM";
  EXPECT_EQ(WEXITSTATUS(status), 0);
  std::ifstream in(log);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("\"serving\""), std::string::npos) << text;
  EXPECT_NE(text.find("draining"), std::string::npos) << text;
  EXPECT_NE(text.find("stopped"), std::string::npos) << text;
}

}  // namespace
}  // namespace axeq
