// Bearer-token authentication: a tokens file maps tokens to principals ("<token> <principal>" per
// line, '#' comments). Without a tokens file every caller is the principal "anonymous".
#ifndef AXEQ_SERVER_AUTH_H_
#define AXEQ_SERVER_AUTH_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "grpcpp/server_context.h"

namespace axeq::server {

class Authenticator {
 public:
  // Loads the tokens file; an empty path disables authentication.
  static absl::StatusOr<Authenticator> FromFile(const std::string& path);
  // Returns the principal of the call's "authorization: Bearer <token>" metadata, or
  // UNAUTHENTICATED (missing, malformed or unknown token). The token is compared with every
  // known token in constant time (SHA-256 digests, CRYPTO_memcmp, no early exit).
  absl::StatusOr<std::string> Authenticate(const grpc::ServerContext& ctx) const;
  // What one lookup compared (a test hook): every known token's digest, whole, whatever the token.
  struct Work {
    int digests = 0;    // digests compared
    int64_t bytes = 0;  // bytes compared
  };
  absl::StatusOr<std::string> PrincipalOf(const std::string& token, Work* work = nullptr) const;
  // Returns a token of `principal` (for calls forwarded to peer replicas); empty when none.
  std::string TokenFor(const std::string& principal) const;
  bool enabled() const { return enabled_; }

 private:
  struct Entry {
    std::string token, principal;
    unsigned char digest[32];
  };
  bool enabled_ = false;
  std::vector<Entry> entries_;
};

}  // namespace axeq::server

#endif  // AXEQ_SERVER_AUTH_H_
