// Bearer-token authentication.
#include "server/auth.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace axeq::server {

absl::StatusOr<Authenticator> Authenticator::FromFile(const std::string& path) {
  Authenticator a;
  if (path.empty()) return a;
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read tokens file ", path));
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.empty() || line[0] == '#') continue;
    std::istringstream ss(line);
    std::string token, principal;
    if (!(ss >> token >> principal) || token.size() < 16)
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", n, ": expected '<token of >= 16 chars> <principal>'"));
    Entry e{token, principal, {}};
    SHA256(reinterpret_cast<const unsigned char*>(token.data()), token.size(), e.digest);
    a.entries_.push_back(std::move(e));
  }
  if (a.entries_.empty()) return absl::InvalidArgumentError(absl::StrCat(path, " holds no tokens"));
  a.enabled_ = true;
  return a;
}

absl::StatusOr<std::string> Authenticator::Authenticate(const grpc::ServerContext& ctx) const {
  if (!enabled_) return std::string("anonymous");
  const auto& md = ctx.client_metadata();
  auto it = md.find("authorization");
  if (it == md.end())
    return absl::UnauthenticatedError("missing 'authorization: Bearer <token>' metadata");
  const std::string value(it->second.data(), it->second.size());
  if (!absl::StartsWith(value, "Bearer "))
    return absl::UnauthenticatedError("authorization metadata must be 'Bearer <token>'");
  return PrincipalOf(value.substr(7));
}

absl::StatusOr<std::string> Authenticator::PrincipalOf(const std::string& token, Work* work) const {
  unsigned char digest[32];
  SHA256(reinterpret_cast<const unsigned char*>(token.data()), token.size(), digest);
  const Entry* match = nullptr;
  // Every entry, whole, whatever matched: fixed-length digests (not the tokens, whose length would
  // show) through CRYPTO_memcmp, which has no early exit. docs/service.md gives the timings.
  for (const Entry& e : entries_) {
    const bool equal = CRYPTO_memcmp(e.digest, digest, sizeof(digest)) == 0;
    if (equal) match = &e;
    if (work) {
      ++work->digests;
      work->bytes += sizeof(digest);
    }
  }
  if (!match) return absl::UnauthenticatedError("unknown bearer token");
  return match->principal;
}

std::string Authenticator::TokenFor(const std::string& principal) const {
  for (const Entry& e : entries_)
    if (e.principal == principal) return e.token;
  return "";
}

}  // namespace axeq::server
