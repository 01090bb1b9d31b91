// The server's limits against slow, stalled, numerous and forwarded callers: an upload that keeps
// sending small chunks outlives the idle timeout while a stalled one does not; 20,000 durable
// results neither slow jobs down nor make retention rescan the directory; bearer tokens are
// compared with the same work whatever they are; a replica forwarding to an mTLS peer presents a
// client certificate.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "core/layer.h"
#include "server/auth.h"
#include "server/durable.h"
#include "tests/server_test_util.h"

namespace axeq {
namespace {

TEST(ServerIdleUploads, ASlowButLiveUploadSucceedsAndAStalledOneIsCancelled) {
  auto opts = Plain();
  opts.jobs.upload_idle_timeout = std::chrono::milliseconds(400);
  opts.jobs.housekeeping_interval = std::chrono::milliseconds(25);
  auto srv = Server::Start(opts);
  ASSERT_TRUE(srv.ok()) << srv.status();
  const int c = 4, k = 8;
  // Live: ten small chunks 100 ms apart, 1 s in all (2.5 idle timeouts), each well within one.
  RawCall live((*srv)->port());
  live.Send(Header(c, k));
  int chunks = 0;
  for (int at = 0; at < c * k; at += 4, ++chunks) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    live.Send(Tensor(v1::TENSOR_KIND_WEIGHT, at, std::vector<float>(4, 0.25f)));
  }
  const std::vector<float> g = Identity(k);
  for (int half = 0; half < 2; ++half, ++chunks) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    live.Send(Tensor(
        v1::TENSOR_KIND_GRAM, half * k * k / 2,
        std::vector<float>(g.begin() + half * k * k / 2, g.begin() + (half + 1) * k * k / 2)));
  }
  live.Send(Commit(chunks));
  const grpc::Status ok = live.Finish();
  EXPECT_TRUE(ok.ok()) << ok.error_code() << ": " << ok.error_message();
  // Stalled: a header and one chunk, then silence: the server ends the call (docs/service.md).
  RawCall stalled((*srv)->port());
  stalled.Send(Header(c, k));
  stalled.Send(Tensor(v1::TENSOR_KIND_WEIGHT, 0, std::vector<float>(4, 0.25f)));
  v1::JobEvent e;
  ASSERT_TRUE(stalled.Next(&e));
  const auto t0 = std::chrono::steady_clock::now();
  while (stalled.Next(&e)) {
  }
  const grpc::Status refused = stalled.Finish();
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::CANCELLED) << refused.error_message();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(20))
      << "the stalled upload was never ended";
  auto list = ClientFor((*srv)->port())->List();
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->size(), 1u) << "an abandoned upload leaves no record";
}

// A tiny quantized layer, the template of the seeded result files.
QuantizedLayer TinyLayer() {
  std::mt19937_64 rng(31);
  Case c;
  c.layer = testing::MakeRandomLayer(rng, 4, 8, 64, InputSpec{});
  c.options.accumulator.bits = 16;
  c.bias = Eigen::VectorXf::Zero(4);
  QuantizedLayer l = Embedded(c);
  l.name = "tiny";
  return l;
}

// Writes n result files "seed-%08d" into dir, oldest first: one real DurableResults write, copied
// with the id rewritten in place (same length), without fsync. Returns the bytes of one file.
int64_t SeedResults(const std::string& dir, int n) {
  const std::string tmpl_dir = dir + ".template";
  fs::remove_all(tmpl_dir);
  auto d = server::DurableResults::Open(tmpl_dir);
  EXPECT_TRUE(d.ok());
  server::DurableEntry e{"seed-XXXXXXXX", "anonymous", "tiny", "", "", ""};
  e.created_unix_ms = server::UnixMs() - 60000;
  EXPECT_TRUE((*d)->Write(e, TinyLayer()).ok());
  std::ifstream in(tmpl_dir + "/seed-XXXXXXXX.axeqjob.safetensors", std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t at = bytes.find("seed-XXXXXXXX");
  EXPECT_NE(at, std::string::npos);
  EXPECT_EQ(bytes.find("seed-XXXXXXXX", at + 1), std::string::npos);
  std::string copy = bytes;
  char id[16];
  for (int i = 0; i < n; ++i) {
    std::snprintf(id, sizeof(id), "seed-%08d", i);
    copy.replace(at, 13, id);
    std::ofstream(dir + "/" + id + ".axeqjob.safetensors", std::ios::binary) << copy;
  }
  fs::remove_all(tmpl_dir);
  return static_cast<int64_t>(bytes.size());
}

TEST(ServerRetention, TwentyThousandResultsOnDiskNeitherSlowJobsNorRescanTheDirectory) {
  const std::string dir = TempDir("retention20k");
  constexpr int kSeeded = 20000, kJobs = 40;
  const int64_t file_bytes = SeedResults(dir, kSeeded);
  auto opts = Plain();
  opts.jobs.results_dir = dir;
  opts.jobs.housekeeping_interval = std::chrono::milliseconds(20);
  // Room for what is there: every new result makes retention delete the oldest seeded ones.
  opts.jobs.retention_max_bytes = kSeeded * file_bytes;
  const int64_t scans = server::DurableResults::directory_scans();
  auto t0 = std::chrono::steady_clock::now();
  auto srv = Server::Start(opts);
  ASSERT_TRUE(srv.ok()) << srv.status();
  const double start_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  auto client = ClientFor((*srv)->port());
  std::mt19937_64 rng(32);
  const Case c = MakeCase(rng, Algorithm::kGpfq, 0, false);
  t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < kJobs; ++i) {
    auto r = client->Quantize(Remote(c));
    ASSERT_TRUE(r.ok()) << "job " << i << ": " << r.status();
  }
  const double jobs_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("indexed %d results in %.2f s; %d jobs in %.2f s (%.1f jobs/s)\n", kSeeded, start_s,
              kJobs, jobs_s, kJobs / jobs_s);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the last trim
  EXPECT_EQ(server::DurableResults::directory_scans() - scans, 1)
      << "one listing at start, none per job";
  // Retention ran incrementally: the oldest seeded results are gone, the newest are still there.
  EXPECT_FALSE(fs::exists(dir + "/seed-00000000.axeqjob.safetensors"));
  EXPECT_TRUE(fs::exists(dir + "/seed-00019999.axeqjob.safetensors"));
  int files = 0;
  for (const auto& f : fs::directory_iterator(dir))
    files += f.path().string().find("axeqjob") != std::string::npos;
  EXPECT_LE(files, kSeeded) << "retention keeps the total within the limit";
  EXPECT_GT(files, kSeeded / 2) << "retention removes only the oldest";
  fs::remove_all(dir);
}

TEST(ServerAuth, TokenLookupsDoTheSameWorkWhereverTheMismatchIs) {
  const std::string dir = TempDir("authwork");
  const std::string alice = "alice-token-0123456789abcdef";
  std::ofstream(dir + "/tokens")
      << alice << " alice\nbob-token-0123456789abcdef bob\ncarol-token-0123456789abcde carol\n";
  auto auth = server::Authenticator::FromFile(dir + "/tokens");
  ASSERT_TRUE(auth.ok()) << auth.status();
  std::string first = alice, last = alice;
  first.front() ^= 1;
  last.back() ^= 1;
  const std::vector<std::pair<std::string, bool>> tokens = {{alice, true},
                                                            {first, false},
                                                            {last, false},
                                                            {alice.substr(0, 5), false},
                                                            {alice + "x", false},
                                                            {"", false},
                                                            {std::string(4096, 'a'), false}};
  for (const auto& [token, known] : tokens) {
    server::Authenticator::Work work;
    auto p = auth->PrincipalOf(token, &work);
    EXPECT_EQ(p.ok(), known) << token.size() << " bytes";
    if (known) EXPECT_EQ(*p, "alice");
    // Every known token's whole 32-byte digest, whatever the token's length or mismatch position.
    EXPECT_EQ(work.digests, 3) << token.size() << " bytes";
    EXPECT_EQ(work.bytes, 3 * 32) << token.size() << " bytes";
  }
}

TEST(ServerReplicas, ForwardingToAnMtlsPeerPresentsAClientCertificate) {
  const std::string d = TempDir("peermtls");
  ASSERT_TRUE(MakeTestCertificates(d));
  auto mtls = [&](const std::string& replica) {
    auto o = Plain();
    o.insecure = false;
    o.tls_cert_file = d + "/server.pem";
    o.tls_key_file = d + "/server.key";
    o.tls_client_ca_file = d + "/ca.pem";
    o.jobs.peers.replica_id = replica;
    return o;
  };
  auto owner = Server::Start(mtls("owner"));
  ASSERT_TRUE(owner.ok()) << owner.status();
  auto front_opts = mtls("front");
  front_opts.jobs.peers.peers["owner"] = "localhost:" + std::to_string((*owner)->port());
  auto front = Server::Start(front_opts);  // peers are shown its own certificate by default
  ASSERT_TRUE(front.ok()) << front.status();
  auto explicit_opts = mtls("explicit");
  explicit_opts.jobs.peers.peers = front_opts.jobs.peers.peers;
  explicit_opts.jobs.peers.tls_cert_file = d + "/client.pem";  // --peer-tls-cert / --peer-tls-key
  explicit_opts.jobs.peers.tls_key_file = d + "/client.key";
  auto other = Server::Start(explicit_opts);
  ASSERT_TRUE(other.ok()) << other.status();
  auto client_of = [&](int port) {
    RemoteOptions ro;
    ro.address = "localhost:" + std::to_string(port);
    ro.tls_ca_file = d + "/ca.pem";
    ro.tls_cert_file = d + "/client.pem";
    ro.tls_key_file = d + "/client.key";
    ro.max_attempts = 1;
    ro.deadline_seconds = 60;
    return *RemoteClient::Connect(ro);
  };
  std::mt19937_64 rng(33);
  const Case c = MakeCase(rng, Algorithm::kGpfq, 0, false);
  auto made = client_of((*owner)->port())->Quantize(Remote(c));
  ASSERT_TRUE(made.ok()) << made.status();
  ASSERT_EQ(made->run.job_id.rfind("owner-", 0), 0u) << made->run.job_id;
  for (int port : {(*front)->port(), (*other)->port()}) {
    auto fetched = client_of(port)->Fetch(made->run.job_id);
    ASSERT_TRUE(fetched.ok()) << fetched.status();
    EXPECT_EQ(fetched->codes, made->codes);
    EXPECT_EQ(fetched->scales, made->scales);
  }
  auto half = mtls("half");
  half.jobs.peers.tls_cert_file = d + "/client.pem";  // a certificate without its key
  EXPECT_EQ(Server::Start(half).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace axeq
