#include "dispatch/session/cookies.h"

#include <cctype>

#include "dispatch/http/headers.h"

namespace usher::dispatch {

namespace {

std::string_view trimSp(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool tokenChar(unsigned char c) {
  return c > 0x20 && c < 0x7f && std::string_view("()<>@,;:\\\"/[]?={}").find(static_cast<char>(c)) == std::string_view::npos;
}

}  // namespace

bool validCookieName(std::string_view name) {
  if (name.empty() || name.size() > 256) return false;
  for (unsigned char c : name)
    if (!tokenChar(c)) return false;
  return true;
}

bool validCookieValue(std::string_view v) {
  if (v.size() >= 2 && v.front() == '"' && v.back() == '"') v = v.substr(1, v.size() - 2);
  if (v.size() > 8192) return false;
  for (unsigned char c : v) {
    if (c == 0x21 || (c >= 0x23 && c <= 0x2b) || (c >= 0x2d && c <= 0x3a) || (c >= 0x3c && c <= 0x5b) ||
        (c >= 0x5d && c <= 0x7e))
      continue;
    return false;
  }
  return true;
}

std::vector<CookiePair> parseCookies(std::string_view header) {
  std::vector<CookiePair> out;
  size_t pos = 0;
  while (pos <= header.size()) {
    size_t semi = header.find(';', pos);
    std::string_view item = trimSp(header.substr(pos, semi == std::string_view::npos ? header.npos : semi - pos));
    if (!item.empty()) {
      size_t eq = item.find('=');
      if (eq == std::string_view::npos) out.push_back({{}, item});
      else out.push_back({trimSp(item.substr(0, eq)), trimSp(item.substr(eq + 1))});
    }
    if (semi == std::string_view::npos) break;
    pos = semi + 1;
  }
  return out;
}

std::optional<SetCookie> parseSetCookie(std::string_view header) {
  size_t semi = header.find(';');
  std::string_view pair = trimSp(header.substr(0, semi));
  size_t eq = pair.find('=');
  if (eq == std::string_view::npos) return std::nullopt;
  SetCookie sc;
  sc.name = std::string(trimSp(pair.substr(0, eq)));
  sc.value = std::string(trimSp(pair.substr(eq + 1)));
  if (!validCookieName(sc.name)) return std::nullopt;
  while (semi != std::string_view::npos) {
    size_t next = header.find(';', semi + 1);
    std::string_view attr = trimSp(header.substr(semi + 1, next == std::string_view::npos ? header.npos : next - semi - 1));
    semi = next;
    size_t aeq = attr.find('=');
    std::string_view key = trimSp(attr.substr(0, aeq));
    std::string_view val = aeq == std::string_view::npos ? std::string_view() : trimSp(attr.substr(aeq + 1));
    if (http::iequals(key, "expires")) {
      bool ok = !val.empty() && val.size() <= 64;
      for (unsigned char c : val)
        if (!(std::isalnum(c) || c == ' ' || c == ',' || c == ':' || c == '-')) ok = false;
      if (ok) sc.expires = std::string(val);
    } else if (http::iequals(key, "max-age")) {
      bool ok = !val.empty() && val.size() <= 12;
      for (size_t i = 0; i < val.size(); ++i)
        if (!(std::isdigit(static_cast<unsigned char>(val[i])) || (i == 0 && val[i] == '-'))) ok = false;
      if (ok) sc.maxAge = std::string(val);
    }
  }
  return sc;
}

std::string formatSetCookie(std::string_view name, std::string_view value, std::string_view expires,
                            std::string_view maxAge, bool secure) {
  std::string s;
  s.append(name).append("=").append(value).append("; Path=/");
  if (!expires.empty()) s.append("; Expires=").append(expires);
  if (!maxAge.empty()) s.append("; Max-Age=").append(maxAge);
  s.append("; HttpOnly; SameSite=Lax");
  if (secure) s.append("; Secure");
  return s;
}

std::string formatDeleteCookie(std::string_view name, bool secure) {
  return formatSetCookie(name, "", "Thu, 01 Jan 1970 00:00:00 GMT", "0", secure);
}

}  // namespace usher::dispatch
