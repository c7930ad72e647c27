// Usher's bind cookie: proof that a browser's app session was minted for the
// identity now asserted. HMAC-SHA256 (OpenSSL) over the SSO name, the OS
// user, the backend and the issue time; the names themselves are not in the
// cookie, they are what the request asserts now, so a second person on the
// same browser fails the check.
//
//   usher_bind=v1.<issued unix seconds>.<base64url(mac)>
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace usher::dispatch {

class BindKeys {
public:
  // Reads the key files: regular files of at least 32 bytes, not readable or
  // writable by group or others. `previous` may be empty.
  static std::optional<BindKeys> load(const std::string& current, const std::string& previous, std::string& error);
  // For tests.
  static BindKeys fromBytes(std::string current, std::string previous = "");

  std::string sign(std::string_view sso, std::string_view osUser, std::string_view backend, int64_t issued) const;

  enum class Verdict { Valid, ValidPrevious, Invalid, Expired };
  Verdict verify(std::string_view token, std::string_view sso, std::string_view osUser, std::string_view backend,
                 int64_t now, int64_t maxAgeSeconds) const;

private:
  std::string mac(const std::string& key, std::string_view sso, std::string_view osUser, std::string_view backend,
                  int64_t issued) const;
  std::string current_;
  std::string previous_;
};

}  // namespace usher::dispatch
