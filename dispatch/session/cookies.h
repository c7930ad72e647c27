// Cookie and Set-Cookie handling (RFC 6265) for session injection.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace usher::dispatch {

struct CookiePair {
  std::string_view name;
  std::string_view value;
};

// Splits Cookie header values into name=value pairs (pairs without '=' are kept
// with an empty name, so rebuilding loses nothing).
std::vector<CookiePair> parseCookies(std::string_view header);

// RFC 6265 §4.1.1 cookie-octets: no CTLs, whitespace, DQUOTE, comma,
// semicolon or backslash. A value outside this set is never injected.
bool validCookieValue(std::string_view value);
bool validCookieName(std::string_view name);

struct SetCookie {
  std::string name;
  std::string value;
  std::string expires;  // as sent, if valid (an HTTP date)
  std::string maxAge;   // as sent, if a valid integer
};
// Parses one Set-Cookie header value; nullopt if malformed.
std::optional<SetCookie> parseSetCookie(std::string_view header);

// "name=value; Path=/; [Expires=..; ][Max-Age=..; ]HttpOnly; SameSite=Lax[; Secure]"
std::string formatSetCookie(std::string_view name, std::string_view value, std::string_view expires,
                            std::string_view maxAge, bool secure);
// A Set-Cookie that deletes `name`.
std::string formatDeleteCookie(std::string_view name, bool secure);

}  // namespace usher::dispatch
