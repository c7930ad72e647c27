#include "dispatch/session/bind_cookie.h"

#include <sys/stat.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <charconv>
#include <cstring>

#include "common/atomic_file.h"

namespace usher::dispatch {

namespace {

constexpr size_t kMinKey = 32;

std::string base64url(const unsigned char* data, size_t len) {
  static const char* kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  size_t i = 0;
  for (; i + 2 < len; i += 3) {
    uint32_t v = (uint32_t{data[i]} << 16) | (uint32_t{data[i + 1]} << 8) | data[i + 2];
    for (int s = 18; s >= 0; s -= 6) out.push_back(kAlphabet[(v >> s) & 63]);
  }
  if (len - i == 1) {
    uint32_t v = uint32_t{data[i]} << 16;
    out.push_back(kAlphabet[(v >> 18) & 63]);
    out.push_back(kAlphabet[(v >> 12) & 63]);
  } else if (len - i == 2) {
    uint32_t v = (uint32_t{data[i]} << 16) | (uint32_t{data[i + 1]} << 8);
    out.push_back(kAlphabet[(v >> 18) & 63]);
    out.push_back(kAlphabet[(v >> 12) & 63]);
    out.push_back(kAlphabet[(v >> 6) & 63]);
  }
  return out;
}

bool readKey(const std::string& path, std::string& key, std::string& error) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    error = "bind key " + path + ": " + std::strerror(errno);
    return false;
  }
  if (!S_ISREG(st.st_mode)) {
    error = "bind key " + path + ": not a regular file";
    return false;
  }
  if ((st.st_mode & 077) != 0) {
    error = "bind key " + path + ": readable or writable by group or others (chmod 600)";
    return false;
  }
  std::string err;
  auto text = readFile(path, err);
  if (!text) {
    error = "bind key " + path + ": " + err;
    return false;
  }
  if (text->size() < kMinKey) {
    error = "bind key " + path + ": shorter than 32 bytes (head -c 32 /dev/urandom > " + path + ")";
    return false;
  }
  key = std::move(*text);
  return true;
}

}  // namespace

std::optional<BindKeys> BindKeys::load(const std::string& current, const std::string& previous, std::string& error) {
  BindKeys keys;
  if (!readKey(current, keys.current_, error)) return std::nullopt;
  if (!previous.empty() && !readKey(previous, keys.previous_, error)) return std::nullopt;
  return keys;
}

BindKeys BindKeys::fromBytes(std::string current, std::string previous) {
  BindKeys keys;
  keys.current_ = std::move(current);
  keys.previous_ = std::move(previous);
  return keys;
}

std::string BindKeys::mac(const std::string& key, std::string_view sso, std::string_view osUser,
                          std::string_view backend, int64_t issued) const {
  // NUL separators: no name can contain one, so fields cannot run together.
  std::string msg = "usher-bind-v1";
  for (std::string_view part : {sso, osUser, backend}) {
    msg.push_back('\0');
    msg.append(part);
  }
  msg.push_back('\0');
  msg.append(std::to_string(issued));
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int outLen = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(msg.data()),
       msg.size(), out, &outLen);
  return base64url(out, outLen);
}

std::string BindKeys::sign(std::string_view sso, std::string_view osUser, std::string_view backend,
                           int64_t issued) const {
  return "v1." + std::to_string(issued) + "." + mac(current_, sso, osUser, backend, issued);
}

BindKeys::Verdict BindKeys::verify(std::string_view token, std::string_view sso, std::string_view osUser,
                                   std::string_view backend, int64_t now, int64_t maxAgeSeconds) const {
  if (token.size() > 128 || token.substr(0, 3) != "v1.") return Verdict::Invalid;
  std::string_view rest = token.substr(3);
  size_t dot = rest.find('.');
  if (dot == std::string_view::npos || dot == 0 || dot > 12) return Verdict::Invalid;
  int64_t issued = 0;
  auto [p, ec] = std::from_chars(rest.data(), rest.data() + dot, issued);
  if (ec != std::errc() || p != rest.data() + dot) return Verdict::Invalid;
  std::string_view given = rest.substr(dot + 1);
  auto matches = [&](const std::string& key) {
    if (key.empty()) return false;
    std::string want = mac(key, sso, osUser, backend, issued);
    return want.size() == given.size() && CRYPTO_memcmp(want.data(), given.data(), want.size()) == 0;
  };
  Verdict v;
  if (matches(current_)) v = Verdict::Valid;
  else if (matches(previous_)) v = Verdict::ValidPrevious;
  else return Verdict::Invalid;
  if (issued > now + 300 || now - issued > maxAgeSeconds) return Verdict::Expired;
  return v;
}

}  // namespace usher::dispatch
