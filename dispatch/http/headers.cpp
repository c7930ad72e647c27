#include "dispatch/http/headers.h"

#include <algorithm>
#include <array>
#include <cctype>

namespace usher::http {

namespace {
char lower(char c) { return static_cast<char>(std::tolower(static_cast<unsigned char>(c))); }
}  // namespace

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (lower(a[i]) != lower(b[i])) return false;
  return true;
}

bool sameNameLoosely(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char x = a[i] == '_' ? '-' : lower(a[i]);
    char y = b[i] == '_' ? '-' : lower(b[i]);
    if (x != y) return false;
  }
  return true;
}

namespace {

// Calls `f` with each element of a comma-separated list, optional whitespace
// around it trimmed (empty elements included); stops when `f` returns true.
template <class F>
bool anyListElement(std::string_view value, F f) {
  size_t pos = 0;
  while (pos <= value.size()) {
    size_t comma = value.find(',', pos);
    std::string_view t = value.substr(pos, comma == std::string_view::npos ? value.npos : comma - pos);
    while (!t.empty() && (t.front() == ' ' || t.front() == '\t')) t.remove_prefix(1);
    while (!t.empty() && (t.back() == ' ' || t.back() == '\t')) t.remove_suffix(1);
    if (f(t)) return true;
    if (comma == std::string_view::npos) break;
    pos = comma + 1;
  }
  return false;
}

}  // namespace

bool hasToken(std::string_view value, std::string_view token) {
  return anyListElement(value, [&](std::string_view t) { return iequals(t, token); });
}

std::vector<std::string> connectionTokens(const std::vector<std::string_view>& values) {
  std::vector<std::string> out;
  for (auto value : values) {
    anyListElement(value, [&](std::string_view t) {
      if (!t.empty()) {
        std::string s(t);
        std::transform(s.begin(), s.end(), s.begin(), lower);
        out.push_back(std::move(s));
      }
      return false;
    });
  }
  return out;
}

bool isHopByHop(std::string_view name) {
  static constexpr std::array<std::string_view, 9> kHop = {
      "connection", "keep-alive", "proxy-connection", "te", "trailer",
      "transfer-encoding", "upgrade", "proxy-authenticate", "proxy-authorization"};
  for (auto h : kHop)
    if (iequals(name, h)) return true;
  return false;
}

}  // namespace usher::http
