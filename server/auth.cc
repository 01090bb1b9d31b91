// Bearer-token authentication.
#include "server/auth.h"

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
      return absl::InvalidArgumentError(absl::StrCat(path, ":", n, ": expected '<token of >= 16 chars> <principal>'"));
    a.principals_[token] = principal;
  }
  if (a.principals_.empty()) return absl::InvalidArgumentError(absl::StrCat(path, " holds no tokens"));
  a.enabled_ = true;
  return a;
}

absl::StatusOr<std::string> Authenticator::Authenticate(const grpc::ServerContext& ctx) const {
  if (!enabled_) return std::string("anonymous");
  const auto& md = ctx.client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) return absl::UnauthenticatedError("missing 'authorization: Bearer <token>' metadata");
  const std::string value(it->second.data(), it->second.size());
  if (!absl::StartsWith(value, "Bearer ")) return absl::UnauthenticatedError("authorization metadata must be 'Bearer <token>'");
  auto p = principals_.find(value.substr(7));
  if (p == principals_.end()) return absl::UnauthenticatedError("unknown bearer token");
  return p->second;
}

}  // namespace axeq::server
