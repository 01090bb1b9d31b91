// The service through a real in-process server on port 0: the engine's conformance cases give
// bit-identical codes embedded and over the wire (rows and statistics uploads); every malformed
// stream gets its exact status code and the server keeps serving; auth, TLS and mTLS; cancellation
// and deadlines; results survive a restart; and the real binary drains on SIGTERM.
#include "server/server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
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
#include "core/test_util.h"
#include "core/verify.h"
#include "formats/result_file.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "gtest/gtest.h"
#include "proto/convert.h"
#include "server/limits.h"
#include "server/replicas.h"
#include "tests/server_test_util.h"

namespace axeq {
namespace {

TEST(ServerConformance, RemoteEqualsEmbeddedBitForBit) {
  auto srv = Server::Start(Plain());
  ASSERT_TRUE(srv.ok()) << srv.status();
  auto client = ClientFor((*srv)->port());
  std::mt19937_64 rng(testing::TestSeed(1201));
  for (auto alg : {Algorithm::kOptq, Algorithm::kGpfq})
    for (int tile : {0, 24})
      for (bool is_signed : {false, true}) {
        Case c = MakeCase(rng, alg, tile, is_signed);
        const QuantizedLayer local = Embedded(c);
        auto rows = client->Quantize(Remote(c));
        ASSERT_TRUE(rows.ok()) << rows.status();
        EXPECT_EQ(rows->codes, local.codes);
        EXPECT_EQ(rows->scales, local.scales);
        EXPECT_EQ(*rows->bias, *local.bias);
        EXPECT_EQ(rows->certificate.weights_sha256, local.certificate.weights_sha256);
        EXPECT_TRUE(VerifyCertificate(rows->codes, rows->certificate).consistent);
        EXPECT_EQ(rows->report.relative_error, local.report.relative_error);
        // Statistics upload: the same statistics give the same codes.
        StatsAccumulator acc(c.layer.x.cols(), true, true);
        ASSERT_TRUE(acc.Add(c.layer.x, c.layer.xq).ok());
        const LayerStats stats = *acc.Finish();
        RemoteLayer l = Remote(c);
        l.stats = &stats;
        auto st = client->Quantize(l);
        ASSERT_TRUE(st.ok()) << st.status();
        EXPECT_EQ(st->codes, local.codes);
        EXPECT_EQ(st->report.relative_error, local.report.relative_error);  // xx and cross went
        // OPTQ without xx: the client leaves cross out (OPTQ does not read it); same codes.
        LayerStats lean = stats;
        lean.xx.resize(0, 0);
        l.stats = &lean;
        auto ls = client->Quantize(l);
        ASSERT_TRUE(ls.ok()) << ls.status();
        EXPECT_EQ(ls->codes, local.codes);
        EXPECT_EQ(ls->report.relative_error_quantized_inputs,
                  local.report.relative_error_quantized_inputs);
      }
}

TEST(ServerConformance, ProgressCoversTheUploadThenTheJob) {
  auto srv = Server::Start(Plain());
  ASSERT_TRUE(srv.ok()) << srv.status();
  std::mt19937_64 rng(testing::TestSeed(1203));
  Case c = MakeCase(rng, Algorithm::kGpfq, 0, false);
  std::vector<std::pair<std::string, double>> events;
  auto r = ClientFor((*srv)->port())->Quantize(Remote(c), [&](double f, const std::string& s) {
    events.emplace_back(s, f);
  });
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
  for (size_t i = 0; i < done; ++i)
    EXPECT_TRUE(events[i].first == "UPLOADING" || events[i].first == "JOB_STATE_RECEIVING")
        << events[i].first;
  for (size_t i = done + 1; i < events.size(); ++i)
    EXPECT_EQ(events[i].first.rfind("JOB_STATE_", 0), 0u) << events[i].first;
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
  EXPECT_EQ(a->codes, b->codes);
  EXPECT_EQ(a->codes, Embedded(c).codes);
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
      {"zero channels", [&](RawCall& r) { r.Send(Header(0, k)); },
       grpc::StatusCode::INVALID_ARGUMENT, "output_channels"},
      {"absurd bit width",
       [&](RawCall& r) {
         auto h = Header(c, k);
         h.mutable_header()->mutable_config()->set_weight_bits(12);
         r.Send(h);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "weight_bits"},
      {"activation bits disagree",
       [&](RawCall& r) {
         auto h = Header(c, k);
         h.mutable_header()->mutable_activations()->set_bits(4);
         r.Send(h);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "activations"},
      {"second header",
       [&](RawCall& r) {
         r.Send(Header(c, k));
         r.Send(Header(c, k));
       },
       grpc::StatusCode::INVALID_ARGUMENT, "second header"},
      {"out of order",
       [&](RawCall& r) {
         r.Send(Header(c, k));
         r.Send(Tensor(v1::TENSOR_KIND_WEIGHT, 8, std::vector<float>(8, 1)));
       },
       grpc::StatusCode::INVALID_ARGUMENT, "out of order"},
      {"duplicate",
       [&](RawCall& r) {
         r.Send(Header(c, k));
         r.Send(Tensor(v1::TENSOR_KIND_WEIGHT, 0, std::vector<float>(8, 1)));
         r.Send(Tensor(v1::TENSOR_KIND_WEIGHT, 0, std::vector<float>(8, 1)));
       },
       grpc::StatusCode::INVALID_ARGUMENT, "expected offset 8"},
      {"beyond the tensor",
       [&](RawCall& r) {
         r.Send(Header(c, k));
         r.Send(Tensor(v1::TENSOR_KIND_WEIGHT, 0, std::vector<float>(40, 1)));
       },
       grpc::StatusCode::INVALID_ARGUMENT, "beyond"},
      {"NaN",
       [&](RawCall& r) {
         auto bad = w;
         bad[5] = std::nanf("");
         r.Send(Header(c, k));
         r.Send(Tensor(v1::TENSOR_KIND_WEIGHT, 0, bad));
       },
       grpc::StatusCode::INVALID_ARGUMENT, "element 5"},
      {"unexpected tensor",
       [&](RawCall& r) {
         r.Send(Header(c, k));
         r.Send(Tensor(v1::TENSOR_KIND_BIAS, 0, std::vector<float>(4, 1)));
       },
       grpc::StatusCode::INVALID_ARGUMENT, "not expected"},
      {"oversized chunk",
       [&](RawCall& r) {
         r.Send(Header(c, k));
         r.Send(Tensor(v1::TENSOR_KIND_WEIGHT, 0, std::vector<float>(5 << 18, 1)));
       },
       grpc::StatusCode::INVALID_ARGUMENT, "4 MiB"},
      {"message over the limit",
       [&](RawCall& r) {
         r.Send(Header(c, k));
         r.Send(Tensor(v1::TENSOR_KIND_WEIGHT, 0, std::vector<float>(3 << 20, 1)));
       },
       grpc::StatusCode::RESOURCE_EXHAUSTED, "larger than max"},
      {"missing chunks",
       [&](RawCall& r) {
         r.Send(Header(c, k));
         r.Send(Tensor(v1::TENSOR_KIND_WEIGHT, 0, w));
         r.Send(Commit(1));
       },
       grpc::StatusCode::FAILED_PRECONDITION, "GRAM has 0 of 64"},
      {"commit count",
       [&](RawCall& r) {
         r.Send(Header(c, k));
         r.Send(Tensor(v1::TENSOR_KIND_WEIGHT, 0, w));
         r.Send(Commit(7));
       },
       grpc::StatusCode::INVALID_ARGUMENT, "announces 7"},
      {"truncated",
       [&](RawCall& r) {
         r.Send(Header(c, k));
         r.Send(Tensor(v1::TENSOR_KIND_WEIGHT, 0, w));
       },
       grpc::StatusCode::INVALID_ARGUMENT, "truncated"},
      {"infeasible budget",
       [&](RawCall& r) {
         auto h = Header(c, k);
         h.mutable_header()->mutable_config()->set_accumulator_bits(8);
         r.Send(h);
         r.Send(Tensor(v1::TENSOR_KIND_WEIGHT, 0, w));
         r.Send(Tensor(v1::TENSOR_KIND_GRAM, 0, g));
         r.Send(Commit(2));
       },
       grpc::StatusCode::FAILED_PRECONDITION, "cannot hold"},
      {"over the whole memory budget", [&](RawCall& r) { r.Send(Header(4096, 4096)); },
       grpc::StatusCode::FAILED_PRECONDITION, "whole memory budget of 64 MiB"},
  };
  for (auto& b : cases) {
    RawCall call(port);
    b.send(call);
    grpc::Status s = call.Finish();
    EXPECT_EQ(s.error_code(), b.code) << b.what << ": " << s.error_message();
    EXPECT_NE(s.error_message().find(b.message_part), std::string::npos)
        << b.what << ": " << s.error_message();
    // A layer that can never fit is refused for good: no retry hint.
    if (std::string(b.what) == "over the whole memory budget")
      EXPECT_TRUE(call.Trailer("axeq-retry-after-ms").empty());
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
  std::ofstream(dir + "/tokens")
      << "# token principal\nalice-token-0123456789 alice\nbob-token-0123456789ab bob\n";
  auto opts = Plain();
  opts.tokens_file = dir + "/tokens";
  auto srv = Server::Start(opts);
  ASSERT_TRUE(srv.ok()) << srv.status();
  std::mt19937_64 rng(5);
  Case c = MakeCase(rng, Algorithm::kOptq, 0, false);
  EXPECT_EQ(ClientFor((*srv)->port())->Quantize(Remote(c)).status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(
      ClientFor((*srv)->port(), "wrong-token-0000000000")->Quantize(Remote(c)).status().code(),
      absl::StatusCode::kUnauthenticated);
  auto alice = ClientFor((*srv)->port(), "alice-token-0123456789");
  auto r = alice->Quantize(Remote(c));
  ASSERT_TRUE(r.ok()) << r.status();
  auto bob = ClientFor((*srv)->port(), "bob-token-0123456789ab");
  EXPECT_EQ(bob->Fetch(r->run.job_id).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(bob->Cancel(r->run.job_id).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(bob->List()->empty());
  EXPECT_EQ(alice->List()->size(), 1u);
  auto again = alice->Fetch(r->run.job_id);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->codes, r->codes);
  EXPECT_EQ(alice->Fetch("no-such-job").status().code(), absl::StatusCode::kNotFound);
}

TEST(ServerTls, TlsAndMutualTls) {
  const std::string d = TempDir("tls");
  ASSERT_TRUE(MakeTestCertificates(d));
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
  EXPECT_EQ((*RemoteClient::Connect(plain))->Quantize(Remote(c)).status().code(),
            absl::StatusCode::kUnavailable);
  // mTLS: the server requires a client certificate signed by its CA.
  auto mopts = opts;
  mopts.tls_client_ca_file = d + "/ca.pem";
  auto msrv = Server::Start(mopts);
  ASSERT_TRUE(msrv.ok()) << msrv.status();
  ro.address = "localhost:" + std::to_string((*msrv)->port());
  EXPECT_EQ((*RemoteClient::Connect(ro))->Quantize(Remote(c)).status().code(),
            absl::StatusCode::kUnavailable);
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
  std::thread runner(
      [&] { EXPECT_EQ(client->Quantize(l).status().code(), absl::StatusCode::kCancelled); });
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
    id = r->run.job_id;
    codes = r->codes;
  }
  auto srv = Server::Start(opts);
  ASSERT_TRUE(srv.ok());
  auto f = ClientFor((*srv)->port())->Fetch(id);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->codes, codes);
  EXPECT_TRUE(VerifyCertificate(f->codes, f->certificate).consistent);
  // Idempotency: the same key and content returns the same job; other content is refused.
  RemoteLayer l = Remote(c);
  l.idempotency_key = "k1";
  auto a = ClientFor((*srv)->port())->Quantize(l);
  auto b = ClientFor((*srv)->port())->Quantize(l);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->run.job_id, b->run.job_id);
  l.options.accumulator.bits = 18;
  EXPECT_EQ(ClientFor((*srv)->port())->Quantize(l).status().code(),
            absl::StatusCode::kAlreadyExists);
}

std::string HttpGet(int port, const std::string& path) {
  const std::string cmd = "exec 3<>/dev/tcp/127.0.0.1/" + std::to_string(port) +
                          " && printf 'GET " + path + " HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3";
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

// Freed job memory stays with the allocator while jobs keep coming and goes back to the system once
// after release_idle without uploads or jobs (JobManagerOptions::release_idle).
TEST(ServerOps, FreedMemoryIsReleasedOnceAfterAnIdlePeriod) {
  auto opts = Plain();
  opts.metrics_address = "127.0.0.1:0";
  opts.jobs.release_idle = std::chrono::milliseconds(300);
  opts.jobs.housekeeping_interval = std::chrono::milliseconds(20);
  auto srv = Server::Start(opts);
  ASSERT_TRUE(srv.ok()) << srv.status();
  auto releases = [&] {
    const std::string m = HttpGet((*srv)->metrics_port(), "/metrics");
    const size_t at = m.find("\naxeq_memory_releases_total ");
    return at == std::string::npos ? -1 : std::atoi(m.c_str() + at + 28);
  };
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  EXPECT_EQ(releases(), 0) << "nothing ran: nothing to release";
  std::mt19937_64 rng(12);
  for (int round = 1; round <= 2; ++round) {
    Case c = MakeCase(rng, Algorithm::kOptq, 0, false);
    ASSERT_TRUE(ClientFor((*srv)->port())->Quantize(Remote(c)).ok());
    int seen = releases();
    for (int i = 0; i < 200 && seen < round; ++i, seen = releases())
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    EXPECT_EQ(seen, round) << "round " << round;
    std::this_thread::sleep_for(std::chrono::milliseconds(600));  // two more idle periods
    EXPECT_EQ(releases(), round) << "released again without new work";
  }
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
  for (const char* want :
       {"axeq_rpc_requests_total{code=\"OK\",method=\"Quantize\"} 1",
        "axeq_rpc_requests_total{code=\"INVALID_ARGUMENT\",method=\"Quantize\"} 1",
        "axeq_certificates_total{verdict=\"safe\"} 1", "axeq_layer_duration_seconds_count 1",
        "axeq_queue_depth 0", "axeq_inflight_bytes 0", "axeq_received_bytes_total",
        "axeq_jobs_total{state=\"JOB_STATE_SUCCEEDED\"} 1", "axeq_worker_utilisation_ratio"})
    EXPECT_NE(m.find(want), std::string::npos) << want << "\n" << m.substr(0, 3000);
  EXPECT_NE(m.find("axeq_memory_releases_total 0"), std::string::npos)
      << "released before the idle period";
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
  auto channel =
      grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials());
  grpc::internal::RpcMethod method("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                   grpc::internal::RpcMethod::BIDI_STREAMING);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>> stream(
      grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, grpc::ByteBuffer>::Create(
          channel.get(), method, &ctx));
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
  for (const char* want :
       {"axeq/v1/axeq.proto", "UploadRequest", "JobEvent", "Quantize", "TensorChunk"})
    EXPECT_NE(file.find(want), std::string::npos) << want;
}

TEST(ServerDurability, RetentionKeepsTheNewestWithinTheSizeLimit) {
  const std::string dir = TempDir("retention");
  auto opts = Plain();
  opts.jobs.results_dir = dir;
  opts.jobs.retention_max_bytes = 1;  // every result is larger: only the newest file may survive
  opts.jobs.housekeeping_interval = std::chrono::milliseconds(50);
  auto srv = Server::Start(opts);
  ASSERT_TRUE(srv.ok());
  std::mt19937_64 rng(12);
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    Case c = MakeCase(rng, Algorithm::kOptq, 0, false);
    auto r = ClientFor((*srv)->port())->Quantize(Remote(c));
    ASSERT_TRUE(r.ok()) << r.status();
    ids.push_back(r->run.job_id);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  // Retention runs in the background, on the index (no directory scans): wait for it. It removes
  // the files, then (under the job lock) the evicted results' records: wait for both.
  int files = 0;
  absl::StatusCode first = absl::StatusCode::kOk;
  for (int i = 0; i < 100; ++i) {
    files = 0;
    for (const auto& e : fs::directory_iterator(dir))
      files += e.path().string().find(".axeqjob.") != std::string::npos;
    first = ClientFor((*srv)->port())->Fetch(ids[0]).status().code();
    if (files <= 1 && first == absl::StatusCode::kNotFound) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_LE(files, 1);
  // Evicted results are gone by id; the server keeps serving.
  EXPECT_EQ(first, absl::StatusCode::kNotFound);
}

TEST(ServerBinary, DrainsOnSigterm) {
  const char* bin = std::getenv("AXEQ_SERVER_BIN");
  ASSERT_NE(bin, nullptr) << "AXEQ_SERVER_BIN not set";
  const std::string log = TempDir("sigterm") + "/log";
  const pid_t pid = fork();
  if (pid == 0) {
    freopen(log.c_str(), "w", stderr);
    execl(bin, bin, "--address", "127.0.0.1:0", "--insecure", "--grace-seconds", "5",
          "--drain-delay-seconds", "0.2", nullptr);
    _exit(127);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(800));
  ASSERT_EQ(kill(pid, SIGTERM), 0);
  int status = 0;
  for (int i = 0; i < 100 && waitpid(pid, &status, WNOHANG) == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_TRUE(WIFEXITED(status)) << "server did not exit after SIGTERM";
  EXPECT_EQ(WEXITSTATUS(status), 0);
  std::ifstream in(log);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("\"serving\""), std::string::npos) << text;
  EXPECT_NE(text.find("draining"), std::string::npos) << text;
  EXPECT_NE(text.find("stopped"), std::string::npos) << text;
}

// ---- Admission, bounded state, lost jobs, job semantics and replicas (issues 10, 13, 15) ----

long PeakRssKb() {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("VmHWM:", 0) == 0) return std::atol(line.c_str() + 6);
  return -1;
}

v1::UploadRequest RowsHeader(int64_t c, int64_t k) {
  v1::UploadRequest r = Header(c, k);
  r.mutable_header()->set_calibration(v1::CALIBRATION_KIND_ROWS);
  r.mutable_header()->set_samples(0);
  return r;
}

// The last event of Watch(id), or the call's error.
absl::StatusOr<v1::JobEvent> WatchLast(int port, const std::string& id,
                                       bool include_result = false) {
  auto stub = v1::Quantizer::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  v1::WatchRequest req;
  req.set_job_id(id);
  req.set_include_result(include_result);
  auto reader = stub->Watch(&ctx, req);
  v1::JobEvent e, last;
  while (reader->Read(&e)) last = e;
  auto s = reader->Finish();
  if (!last.has_finished()) return FromGrpc(s);
  return last;
}

TEST(ServerAdmission, HostileHeadersAnswerClearCodesWithoutAllocating) {
  auto opts = Plain();
  opts.jobs.memory_budget_bytes = int64_t{1} << 30;
  auto srv = Server::Start(opts);
  ASSERT_TRUE(srv.ok()) << srv.status();
  const long rss0 = PeakRssKb();
  struct Hostile {
    v1::UploadRequest header;
    grpc::StatusCode code;
    const char* message_part;
  };
  for (const Hostile& h :
       {Hostile{RowsHeader(1, 16384), grpc::StatusCode::FAILED_PRECONDITION,
                "whole memory budget of 1024 MiB"},
        Hostile{RowsHeader(1, 131072), grpc::StatusCode::FAILED_PRECONDITION,
                "whole memory budget"},
        Hostile{Header(1, 131072), grpc::StatusCode::FAILED_PRECONDITION, "MiB"},
        Hostile{Header(8192, 8192), grpc::StatusCode::FAILED_PRECONDITION, "MiB at its peak"},
        Hostile{Header(1, 262144), grpc::StatusCode::INVALID_ARGUMENT, "header.inputs"}}) {
    RawCall call((*srv)->port());
    call.Send(h.header);
    const grpc::Status s = call.Finish();
    EXPECT_EQ(s.error_code(), h.code) << h.header.header().inputs() << ": " << s.error_message();
    EXPECT_NE(s.error_message().find(h.message_part), std::string::npos) << s.error_message();
    EXPECT_TRUE(call.Trailer("axeq-retry-after-ms").empty())
        << "a permanent refusal must not invite retries";
  }
  const long delta_mb = (PeakRssKb() - rss0) / 1024;
  std::printf("hostile headers: peak RSS delta %ld MiB\n", delta_mb);
  EXPECT_LT(delta_mb, 256) << "a header alone must not allocate its layer's statistics";
}

TEST(ServerAdmission, ConcurrentUploadsCannotExceedTheQueueLimit) {
  auto opts = Plain();
  opts.jobs.max_queue = 2;
  opts.jobs.workers = 1;
  auto srv = Server::Start(opts);
  ASSERT_TRUE(srv.ok()) << srv.status();
  std::vector<std::unique_ptr<RawCall>> calls;
  for (int i = 0; i < 6; ++i) {
    calls.push_back(std::make_unique<RawCall>((*srv)->port()));
    calls.back()->Send(Header(4, 8));  // the upload stays open: RECEIVING
  }
  int admitted = 0, refused = 0;
  for (auto& c : calls) {
    v1::JobEvent e;
    if (c->Next(&e)) {
      ++admitted;
      continue;
    }
    const grpc::Status s = c->Finish();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
    EXPECT_NE(s.error_message().find("limit 2"), std::string::npos) << s.error_message();
    EXPECT_FALSE(c->Trailer("axeq-retry-after-ms").empty())
        << "a full queue is transient: retry later";
    ++refused;
  }
  EXPECT_EQ(admitted, 2);
  EXPECT_EQ(refused, 4);
  for (auto& c : calls) c->Cancel();
}

TEST(ServerAdmission, IdleUploadsTimeOutAndReleaseTheirReservation) {
  auto opts = Plain();
  opts.jobs.memory_budget_bytes = 64 << 20;  // one 1024 x 1024 layer (~33 MiB) at a time
  opts.jobs.upload_idle_timeout = std::chrono::milliseconds(300);
  opts.jobs.housekeeping_interval = std::chrono::milliseconds(50);
  auto srv = Server::Start(opts);
  ASSERT_TRUE(srv.ok()) << srv.status();
  RawCall idle((*srv)->port());
  idle.Send(Header(1024, 1024));
  v1::JobEvent e;
  ASSERT_TRUE(idle.Next(&e));
  {
    RawCall second((*srv)->port());
    second.Send(Header(1024, 1024));
    EXPECT_EQ(second.Finish().error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(900));
  RawCall third((*srv)->port());
  third.Send(Header(1024, 1024));
  EXPECT_TRUE(third.Next(&e)) << "the idle upload still holds its reservation";
  third.Cancel();
  idle.Cancel();
}

TEST(ServerAdmission, DefaultsComeFromTheContainerLimits) {
  EXPECT_EQ(server::ParseMemoryMax("max\n"), -1);
  EXPECT_EQ(server::ParseMemoryMax("8589934592\n"), int64_t{8} << 30);
  EXPECT_EQ(server::ParseMemoryMax("9223372036854771712\n"), -1);  // cgroup v1's "no limit"
  EXPECT_EQ(server::ParseCpuMax("max 100000\n"), -1);
  EXPECT_DOUBLE_EQ(server::ParseCpuMax("250000 100000\n"), 2.5);
  EXPECT_DOUBLE_EQ(server::ParseCfsQuota("-1", "100000"), -1);
  EXPECT_DOUBLE_EQ(server::ParseCfsQuota("50000\n", "100000\n"), 0.5);
  EXPECT_GE(server::CpuQuota(), 1);
  EXPECT_EQ(server::DefaultMemoryBudget(), server::MemoryLimitBytes() / 4 * 3);
  auto opts = Plain();
  opts.jobs.workers = 0;
  opts.jobs.compute_threads = 0;
  auto jobs = server::JobManager::Create(opts.jobs);
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  EXPECT_EQ((*jobs)->options().memory_budget_bytes, server::DefaultMemoryBudget());
  EXPECT_EQ((*jobs)->options().workers, server::CpuQuota());
  EXPECT_EQ((*jobs)->options().compute_threads, server::CpuQuota());
}

TEST(ServerState, FinishedJobsLeaveMemoryAndRejectedUploadsLeaveNoRecord) {
  auto opts = Plain();
  opts.jobs.max_finished_jobs = 2;
  opts.jobs.housekeeping_interval = std::chrono::milliseconds(50);
  auto srv = Server::Start(opts);
  ASSERT_TRUE(srv.ok()) << srv.status();
  auto client = ClientFor((*srv)->port());
  std::mt19937_64 rng(21);
  std::vector<std::string> ids;
  for (int i = 0; i < 4; ++i) {
    const Case c = MakeCase(rng, Algorithm::kOptq, 0, false);
    auto r = client->Quantize(Remote(c));
    ASSERT_TRUE(r.ok()) << r.status();
    ids.push_back(r->run.job_id);
  }
  for (int i = 0; i < 3; ++i) {  // rejected uploads
    RawCall bad((*srv)->port());
    bad.Send(Header(4, 8));
    bad.Send(Tensor(v1::TENSOR_KIND_WEIGHT, 8, std::vector<float>(8, 1)));
    EXPECT_EQ(bad.Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  auto list = client->List();
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->size(), 2u);
  for (const auto& j : *list) EXPECT_EQ(j.state(), v1::JOB_STATE_SUCCEEDED) << j.job_id();
  EXPECT_EQ(client->Fetch(ids[0]).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(client->Fetch(ids[3]).ok());
  EXPECT_EQ(client->Fetch(std::string(200, 'a')).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Idempotency keys are bounded.
  const Case keyed = MakeCase(rng, Algorithm::kOptq, 0, false);  // outlives the view below
  RemoteLayer l = Remote(keyed);
  l.idempotency_key = std::string(300, 'k');
  EXPECT_EQ(client->Quantize(l).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ServerDurability, ResultsAreResultFilesAndGarbageIsRemoved) {
  const std::string dir = TempDir("resultfile");
  std::ofstream(dir + "/junk.axeqjob.safetensors") << "not a result";
  std::ofstream(dir + "/x.axeqjob.safetensors.tmp") << "half written";
  std::ofstream(dir + "/notes.txt") << "not ours";
  auto opts = Plain();
  opts.jobs.results_dir = dir;
  auto srv = Server::Start(opts);
  ASSERT_TRUE(srv.ok()) << srv.status();
  EXPECT_FALSE(fs::exists(dir + "/junk.axeqjob.safetensors"));
  EXPECT_FALSE(fs::exists(dir + "/x.axeqjob.safetensors.tmp"));
  EXPECT_TRUE(fs::exists(dir + "/notes.txt"));
  std::mt19937_64 rng(22);
  const Case c = MakeCase(rng, Algorithm::kGpfq, 8, false);
  auto r = ClientFor((*srv)->port())->Quantize(Remote(c));
  ASSERT_TRUE(r.ok()) << r.status();
  auto layers = ReadResultFile(dir + "/" + r->run.job_id + ".axeqjob.safetensors");
  ASSERT_TRUE(layers.ok()) << layers.status();
  ASSERT_EQ(layers->size(), 1u);
  EXPECT_EQ((*layers)[0].codes, r->codes);
  EXPECT_TRUE(VerifyCertificate((*layers)[0].codes, (*layers)[0].certificate).ok());
}

TEST(ServerDurability, LostJobsAnswerAbortedAndUnknownIdsNotFound) {
  const std::string dir = TempDir("lost");
  auto opts = Plain();
  opts.jobs.results_dir = dir;
  opts.jobs.peers.replica_id = "r1";
  std::string id;
  {
    auto srv = Server::Start(opts);
    ASSERT_TRUE(srv.ok()) << srv.status();
    RawCall upload((*srv)->port());
    upload.Send(Header(4, 8));
    v1::JobEvent e;
    ASSERT_TRUE(upload.Next(&e));
    id = upload.job_id;
    EXPECT_EQ(id.rfind("r1-", 0), 0u) << id;
    upload.Cancel();
  }  // the server goes away with the job unfinished
  auto srv = Server::Start(opts);
  ASSERT_TRUE(srv.ok()) << srv.status();
  auto client = ClientFor((*srv)->port());
  const auto lost = client->Fetch(id).status();
  EXPECT_EQ(lost.code(), absl::StatusCode::kAborted) << lost;
  EXPECT_NE(lost.message().find("resubmit"), std::string::npos) << lost;
  EXPECT_EQ(client->Fetch("r1-" + std::string(32, '0')).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(client->Fetch("no-such-job").status().code(), absl::StatusCode::kNotFound);
}

// A detached job that runs for seconds (float64, block 1), started through `client`; returns its
// id.
std::string StartBigJob(RemoteClient* client, std::thread* runner, absl::StatusCode* code) {
  *runner = std::thread([client, code] {
    RemoteLayer l{"big", Big().w};
    l.stats = &Big().stats;
    l.activations.scale = 0.1f;
    l.options.precision = Precision::kFloat64;
    l.options.block_size = 1;
    l.detach = true;
    *code = client->Quantize(l).status().code();
  });
  for (int i = 0; i < 200; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    const auto list = client->List();  // named: a range-for over *temporary would dangle
    for (const auto& j : *list)
      if (j.layer_name() == "big" && j.state() == v1::JOB_STATE_RUNNING) return j.job_id();
  }
  return "";
}

TEST(ServerCancel, CancelAnswersCancellingAndDeadlinesRecordDeadlineExceeded) {
  auto opts = Plain();
  opts.jobs.workers = 1;
  opts.jobs.compute_threads = 1;  // the deadline job below must outlast its 2 s on a quiet machine
  auto srv = Server::Start(opts);
  ASSERT_TRUE(srv.ok());
  auto client = ClientFor((*srv)->port());
  std::thread runner;
  absl::StatusCode code = absl::StatusCode::kOk;
  const std::string id = StartBigJob(client.get(), &runner, &code);
  ASSERT_FALSE(id.empty());
  auto st = client->Cancel(id);
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(*st, JobState::kCancelling);
  runner.join();
  EXPECT_EQ(code, absl::StatusCode::kCancelled);
  auto last = WatchLast((*srv)->port(), id);
  ASSERT_TRUE(last.ok()) << last.status();
  EXPECT_EQ(last->finished().state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(last->finished().code(), static_cast<int>(absl::StatusCode::kCancelled));
  // A deadline: the job's record says DEADLINE_EXCEEDED (code 4), not CANCELLED.
  RemoteLayer l{"deadline", Big().w};
  l.stats = &Big().stats;
  l.activations.scale = 0.1f;
  l.options.precision = Precision::kFloat64;
  l.options.block_size = 1;
  RemoteOptions ro;
  ro.address = "127.0.0.1:" + std::to_string((*srv)->port());
  ro.max_attempts = 1;
  ro.deadline_seconds = 2;  // the upload (48 MB) arrives first, then the job runs into the deadline
  EXPECT_EQ((*RemoteClient::Connect(ro))->Quantize(l).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  std::string deadline_id;
  for (int i = 0; i < 200 && deadline_id.empty(); ++i) {
    const auto list = client->List();
    for (const auto& j : *list)
      if (j.layer_name() == "deadline" && j.state() == v1::JOB_STATE_CANCELLED)
        deadline_id = j.job_id();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_FALSE(deadline_id.empty());
  last = WatchLast((*srv)->port(), deadline_id);
  ASSERT_TRUE(last.ok()) << last.status();
  EXPECT_EQ(last->finished().code(), static_cast<int>(absl::StatusCode::kDeadlineExceeded))
      << last->finished().message();
}

TEST(ServerCancel, JobsStoppedByADrainAnswerUnavailable) {
  auto opts = Plain();
  opts.jobs.workers = 1;
  auto srv = Server::Start(opts);
  ASSERT_TRUE(srv.ok());
  auto client = ClientFor((*srv)->port());
  std::thread runner;
  absl::StatusCode code = absl::StatusCode::kOk;
  ASSERT_FALSE(StartBigJob(client.get(), &runner, &code).empty());
  (*srv)->Drain(std::chrono::milliseconds(100));
  runner.join();
  EXPECT_EQ(code, absl::StatusCode::kUnavailable) << "clients retry UNAVAILABLE on another replica";
}

TEST(ServerIdempotency, AResubmissionCarriesTheExistingIdFromItsFirstEvent) {
  auto srv = Server::Start(Plain());
  ASSERT_TRUE(srv.ok());
  const int k = 8, c = 4;
  auto upload = [&](RawCall& call) {
    auto h = Header(c, k);
    h.mutable_header()->set_idempotency_key("layer-7");
    call.Send(h);
    call.Send(Tensor(v1::TENSOR_KIND_WEIGHT, 0, std::vector<float>(c * k, 0.5f)));
    call.Send(Tensor(v1::TENSOR_KIND_GRAM, 0, Identity(k)));
    call.Send(Commit(2));
  };
  RawCall first((*srv)->port());
  upload(first);
  ASSERT_TRUE(first.Finish().ok());
  RawCall again((*srv)->port());
  upload(again);
  v1::JobEvent e;
  ASSERT_TRUE(again.Next(&e));
  EXPECT_EQ(e.job_id(), first.job_id) << "the first event of a resubmission names the existing job";
  EXPECT_TRUE(again.Finish().ok());
  EXPECT_EQ(again.job_id, first.job_id);
  EXPECT_EQ(ClientFor((*srv)->port())->List()->size(), 1u);
}

TEST(ServerReplicas, JobIdsNameTheirReplica) {
  EXPECT_TRUE(server::ValidReplicaId("axeq-0"));
  EXPECT_FALSE(server::ValidReplicaId("evil.example.com"));
  EXPECT_FALSE(server::ValidReplicaId("-a"));
  EXPECT_FALSE(server::ValidReplicaId(""));
  auto p = server::ParseJobId("axeq-0-0123456789abcdef0123456789abcdef");
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->replica, "axeq-0");
  EXPECT_EQ(p->boot, "01234567");
  EXPECT_FALSE(server::ParseJobId("0123456789abcdef0123456789abcdef").has_value());
  EXPECT_FALSE(server::ParseJobId("a.b-0123456789abcdef0123456789abcdef").has_value());
  EXPECT_TRUE(server::ValidReplicaId(server::DefaultReplicaId()));
}

int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t n = sizeof(a);
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &n) != 0)
    return 0;
  close(fd);
  return ntohs(a.sin_port);
}

// Starts the real axeq-server with `args`; returns its pid once it logs "serving" (or -1).
pid_t SpawnServer(const std::vector<std::string>& args, const std::string& log) {
  const char* bin = std::getenv("AXEQ_SERVER_BIN");
  if (!bin) return -1;
  const pid_t pid = fork();
  if (pid == 0) {
    freopen(log.c_str(), "w", stderr);
    std::vector<char*> argv{const_cast<char*>(bin)};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(bin, argv.data());
    _exit(127);
  }
  for (int i = 0; i < 100; ++i) {
    std::ifstream in(log);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (text.find("\"serving\"") != std::string::npos) return pid;
    if (waitpid(pid, nullptr, WNOHANG) == pid) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  return -1;
}

TEST(ServerReplicas, FetchByIdThroughAnyReplicaAndAfterTheOwnerRestarts) {
  ASSERT_NE(std::getenv("AXEQ_SERVER_BIN"), nullptr) << "AXEQ_SERVER_BIN not set";
  const std::string d = TempDir("replicas");
  const int pa = FreePort(), pb = FreePort();
  const std::string peers =
      "a=127.0.0.1:" + std::to_string(pa) + ",b=127.0.0.1:" + std::to_string(pb);
  auto args = [&](const std::string& r, int port) {
    return std::vector<std::string>{"--address",
                                    "127.0.0.1:" + std::to_string(port),
                                    "--insecure",
                                    "--replica-id",
                                    r,
                                    "--peers",
                                    peers,
                                    "--results-dir",
                                    d + "/" + r,
                                    "--drain-delay-seconds",
                                    "0",
                                    "--workers",
                                    "1",
                                    "--compute-threads",
                                    "1"};
  };
  pid_t a = SpawnServer(args("a", pa), d + "/a.log");
  const pid_t b = SpawnServer(args("b", pb), d + "/b.log");
  struct Reaper {  // the servers go away however the test ends
    pid_t* a;
    pid_t b;
    ~Reaper() {
      for (pid_t p : {*a, b})
        if (p > 0 && kill(p, SIGKILL) == 0) waitpid(p, nullptr, 0);
    }
  } reaper{&a, b};
  ASSERT_GT(a, 0);
  ASSERT_GT(b, 0);
  std::mt19937_64 rng(23);
  Case c = MakeCase(rng, Algorithm::kOptq, 16, false);
  auto r = ClientFor(pa)->Quantize(Remote(c));
  ASSERT_TRUE(r.ok()) << r.status();
  const std::string id = r->run.job_id;
  EXPECT_EQ(id.rfind("a-", 0), 0u) << id;
  auto via_b = ClientFor(pb)->Fetch(id);
  ASSERT_TRUE(via_b.ok()) << via_b.status();
  EXPECT_EQ(via_b->codes, r->codes);
  EXPECT_EQ(via_b->scales, r->scales);
  EXPECT_TRUE(VerifyCertificate(via_b->codes, via_b->certificate).ok());
  auto cancel = ClientFor(pb)->Cancel(id);  // forwarded too: the job has already succeeded
  ASSERT_TRUE(cancel.ok()) << cancel.status();
  EXPECT_EQ(*cancel, JobState::kSucceeded);
  kill(a, SIGKILL);
  waitpid(a, nullptr, 0);
  a = -1;
  EXPECT_EQ(ClientFor(pb)->Fetch(id).status().code(), absl::StatusCode::kUnavailable);
  a = SpawnServer(args("a", pa), d + "/a2.log");
  ASSERT_GT(a, 0);
  auto after = ClientFor(pb)->Fetch(id);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->codes, r->codes);
  EXPECT_TRUE(VerifyCertificate(after->codes, after->certificate).ok());
  EXPECT_EQ(ClientFor(pb)->Fetch("a-" + std::string(32, '0')).status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace axeq
