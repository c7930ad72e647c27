#include "common/ini.h"

#include <ini.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstring>

namespace usher {

namespace {

// Feeds inih one line at a time and counts lines, so that every handler call
// knows the line it came from (Debian's inih is built without
// INI_HANDLER_LINENO).
struct LineReader {
  std::string_view text;
  size_t pos = 0;
  int line = 0;
  std::vector<int> overlong;  // lines cut at the reader's buffer size
};

char* readLine(char* str, int num, void* stream) {
  auto* r = static_cast<LineReader*>(stream);
  if (r->pos >= r->text.size() || num <= 1) return nullptr;
  size_t end = r->text.find('\n', r->pos);
  size_t next = end == std::string_view::npos ? r->text.size() : end + 1;
  size_t stop = end == std::string_view::npos ? next : end;  // inih needs no '\n'
  size_t start = r->pos;
  // inih reads an indented line as a continuation of the previous value
  // (INI_ALLOW_MULTILINE), so an indented `key = value` would silently become
  // a second value of the key above it. Nothing here uses continuations.
  while (start < stop && (r->text[start] == ' ' || r->text[start] == '\t')) ++start;
  size_t len = stop - start;
  ++r->line;
  size_t cap = static_cast<size_t>(num) - 1;
  if (len > cap) {
    r->overlong.push_back(r->line);
    len = cap;
  }
  std::memcpy(str, r->text.data() + start, len);
  str[len] = '\0';
  r->pos = next;
  return str;
}

struct Collector {
  LineReader* reader;
  std::vector<IniEntry>* entries;
};

int onEntry(void* user, const char* section, const char* name, const char* value) {
  auto* c = static_cast<Collector*>(user);
  // A cut-off value is not the configured one; the line is reported instead.
  const auto& overlong = c->reader->overlong;
  if (!overlong.empty() && overlong.back() == c->reader->line) return 1;
  c->entries->push_back(IniEntry{section, name, value ? value : "", c->reader->line});
  return 1;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

}  // namespace

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

std::vector<IniEntry> parseIni(std::string_view text, std::vector<std::string>& errors) {
  std::vector<IniEntry> entries;
  LineReader reader{text};
  Collector collector{&reader, &entries};
  int rc = ini_parse_stream(readLine, &reader, onEntry, &collector);
  for (int line : reader.overlong) {
    errors.push_back("line " + std::to_string(line) + ": line too long");
  }
  if (rc > 0) {
    errors.push_back("line " + std::to_string(rc) +
                     ": syntax error (expected [section], key = value or a comment)");
  } else if (rc < 0) {
    errors.push_back("cannot parse (out of memory)");
  }
  return entries;
}

std::optional<uint64_t> parseUnsigned(std::string_view s) {
  if (s.empty() || s.size() > 19) return std::nullopt;
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

namespace {

// "30s" -> {30, "s"}: the leading decimal number and the unit after it.
std::optional<std::pair<uint64_t, std::string_view>> numberAndUnit(std::string_view s) {
  s = trim(s);
  size_t digits = 0;
  while (digits < s.size() && std::isdigit(static_cast<unsigned char>(s[digits]))) ++digits;
  auto n = parseUnsigned(s.substr(0, digits));
  if (!n) return std::nullopt;
  return std::make_pair(*n, s.substr(digits));
}

}  // namespace

std::optional<std::chrono::milliseconds> parseDuration(std::string_view s) {
  auto parsed = numberAndUnit(s);
  if (!parsed) return std::nullopt;
  auto [n, unit] = *parsed;
  uint64_t ms;
  if (unit.empty() || unit == "s") ms = n * 1000;
  else if (unit == "ms") ms = n;
  else if (unit == "m" || unit == "min") ms = n * 60'000;
  else if (unit == "h") ms = n * 3'600'000;
  else if (unit == "d" && n <= 36500) ms = n * 86'400'000;
  else return std::nullopt;
  if (n > (uint64_t{1} << 32)) return std::nullopt;
  return std::chrono::milliseconds(ms);
}

std::optional<uint64_t> parseSize(std::string_view s) {
  auto parsed = numberAndUnit(s);
  if (!parsed) return std::nullopt;
  auto [n, unit] = *parsed;
  int shift = 0;
  if (unit.empty()) shift = 0;
  else if (iequals(unit, "k") || iequals(unit, "kb") || iequals(unit, "kib")) shift = 10;
  else if (iequals(unit, "m") || iequals(unit, "mb") || iequals(unit, "mib")) shift = 20;
  else if (iequals(unit, "g") || iequals(unit, "gb") || iequals(unit, "gib")) shift = 30;
  else return std::nullopt;
  if (n > (UINT64_MAX >> (shift + 1))) return std::nullopt;
  return n << shift;
}

std::optional<bool> parseBool(std::string_view s) {
  s = trim(s);
  for (auto t : {"yes", "true", "on", "1"})
    if (iequals(s, t)) return true;
  for (auto f : {"no", "false", "off", "0"})
    if (iequals(s, f)) return false;
  return std::nullopt;
}

std::vector<std::string> splitList(std::string_view s) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && (s[i] == ',' || std::isspace(static_cast<unsigned char>(s[i])))) ++i;
    size_t start = i;
    while (i < s.size() && s[i] != ',' && !std::isspace(static_cast<unsigned char>(s[i]))) ++i;
    if (i > start) out.emplace_back(s.substr(start, i - start));
  }
  return out;
}

}  // namespace usher
