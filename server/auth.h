// Bearer-token authentication: a tokens file maps tokens to principals ("<token> <principal>" per
// line, '#' comments). Without a tokens file every caller is the principal "anonymous".
#ifndef AXEQ_SERVER_AUTH_H_
#define AXEQ_SERVER_AUTH_H_

#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/server_context.h"

namespace axeq::server {

class Authenticator {
 public:
  // Loads the tokens file; an empty path disables authentication.
  static absl::StatusOr<Authenticator> FromFile(const std::string& path);
  // Returns the principal of the call's "authorization: Bearer <token>" metadata, or
  // UNAUTHENTICATED (missing, malformed or unknown token).
  absl::StatusOr<std::string> Authenticate(const grpc::ServerContext& ctx) const;
  bool enabled() const { return enabled_; }

 private:
  bool enabled_ = false;
  std::map<std::string, std::string> principals_;
};

}  // namespace axeq::server

#endif  // AXEQ_SERVER_AUTH_H_
