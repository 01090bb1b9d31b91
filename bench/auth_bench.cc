// Bearer-token lookup time by where a wrong token first differs from a known one (docs/service.md):
// the server hashes the presented token and compares fixed-length SHA-256 digests with every known
// token through CRYPTO_memcmp, so a mismatch at the first byte costs what one at the last byte
// does. Run: auth_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <string>

#include "benchmark/benchmark.h"
#include "server/auth.h"

namespace {

constexpr char kKnown[] = "alice-token-0123456789abcdef0123456789abcdef";

const axeq::server::Authenticator& Auth(int tokens) {
  static std::map<int, axeq::server::Authenticator>* cache =
      new std::map<int, axeq::server::Authenticator>;
  auto it = cache->find(tokens);
  if (it != cache->end()) return it->second;
  const std::string path =
      "/tmp/axeq_auth_bench_" + std::to_string(getpid()) + "_" + std::to_string(tokens);
  {
    std::ofstream out(path);
    out << kKnown << " alice\n";
    for (int i = 1; i < tokens; ++i)
      out << "other-token-" << i << "-0123456789abcdef0123456789 p" << i << "\n";
  }
  auto a = axeq::server::Authenticator::FromFile(path);
  std::remove(path.c_str());
  if (!a.ok()) std::abort();
  return cache->emplace(tokens, *a).first->second;
}

// state.range(0): known tokens; state.range(1): byte of the presented token that differs from
// the known one (-1: none, the token is known).
void BM_PrincipalOf(benchmark::State& state) {
  const auto& auth = Auth(static_cast<int>(state.range(0)));
  std::string token = kKnown;
  if (state.range(1) >= 0) token[static_cast<size_t>(state.range(1))] ^= 1;
  for (auto _ : state) benchmark::DoNotOptimize(auth.PrincipalOf(token));
}
BENCHMARK(BM_PrincipalOf)
    ->ArgNames({"tokens", "mismatch_at"})
    ->Args({1, 0})
    ->Args({1, sizeof(kKnown) - 2})
    ->Args({1, -1})
    ->Args({100, 0})
    ->Args({100, sizeof(kKnown) - 2})
    ->Args({100, -1});

}  // namespace

BENCHMARK_MAIN();
