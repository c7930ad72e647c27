// libFuzzer target for the user map parser (UserMap::parse). Properties:
//   - every entry has a valid SSO name and OS user, and a line in the text;
//   - no SSO name appears twice, and find() returns its entry;
//   - an OS user mapped twice has shared=yes and one backend kind;
//   - every line is accounted for: a blank or comment line gives nothing, an
//     overlong line one error, any other line exactly one entry or one error;
//   - with an OS user lookup, every entry's user exists with a regular uid;
//   - parsing is deterministic.
// Byte 0 chooses whether the fake passwd database is used; the rest is the map.
#include <cstdint>
#include <cstdio>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "common/usermap.h"

namespace {

using usher::MapEntry;
using usher::MapError;
using usher::OsUserInfo;
using usher::UserMap;
using usher::UserMapOptions;

constexpr uid_t kMinUid = 1000;
constexpr size_t kMaxLineBytes = 4096;  // as in common/usermap.cpp

[[noreturn]] void violated(const char* property, const std::string& detail = "") {
  std::fprintf(stderr, "PROPERTY VIOLATED: %s\n%s\n", property, detail.c_str());
  __builtin_trap();
}

void require(bool ok, const char* property, const std::string& detail = "") {
  if (!ok) violated(property, detail);
}

// A fake passwd database: some names missing, some root, some system accounts.
std::optional<OsUserInfo> fakeLookup(const std::string& name) {
  uint32_t h = 2166136261u;  // FNV-1a
  for (unsigned char c : name) h = (h ^ c) * 16777619u;
  switch (h % 5) {
    case 0:
      return std::nullopt;
    case 1:
      return OsUserInfo{0, 0, "/root"};
    case 2:
      return OsUserInfo{static_cast<uid_t>(100 + h % 800), 100, "/var/lib/" + name};
    default:
      return OsUserInfo{static_cast<uid_t>(kMinUid + h % 60000), 1000, "/home/" + name};
  }
}

std::string describe(const UserMap& map, const std::vector<MapError>& errors) {
  std::string s;
  for (const auto& e : map.entries())
    s += std::to_string(e.line) + " " + e.ssoName + "=" + e.osUser + " " +
         std::string(usher::toString(e.backend)) + (e.shared ? " shared" : "") + "\n";
  for (const auto& e : errors) s += "error " + std::to_string(e.line) + ": " + e.message + "\n";
  return s;
}

enum class LineKind { Nothing, Error, EntryOrError };

// What each line must produce, split as UserMap::parse splits: on '\n', one
// trailing '\r' dropped, after a UTF-8 byte-order mark.
std::vector<LineKind> expectedLines(std::string_view text) {
  if (text.substr(0, 3) == "\xEF\xBB\xBF") text.remove_prefix(3);
  std::vector<LineKind> lines;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view raw = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    if (!raw.empty() && raw.back() == '\r') raw.remove_suffix(1);
    if (raw.size() > kMaxLineBytes) {
      lines.push_back(LineKind::Error);
      continue;
    }
    while (!raw.empty() && (raw.front() == ' ' || raw.front() == '\t')) raw.remove_prefix(1);
    lines.push_back(raw.empty() || raw.front() == '#' ? LineKind::Nothing : LineKind::EntryOrError);
  }
  return lines;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  UserMapOptions options;
  options.minUid = kMinUid;
  if (data[0] & 1) options.lookup = fakeLookup;
  const std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);

  std::vector<MapError> errors;
  const UserMap map = UserMap::parse(text, options, errors);
  const std::string got = describe(map, errors);

  std::vector<MapError> errorsAgain;
  const UserMap again = UserMap::parse(text, options, errorsAgain);
  require(describe(again, errorsAgain) == got, "parse is deterministic", got);

  const std::vector<LineKind> lines = expectedLines(text);
  const int lineCount = static_cast<int>(lines.size());
  std::map<int, int> entriesOn, errorsOn;
  std::set<std::string> sso;
  std::map<std::string, const MapEntry*> firstForOs;
  require(map.size() == map.entries().size(), "size() counts the entries", got);
  for (const auto& e : map.entries()) {
    require(usher::validSsoName(e.ssoName), "entry has a valid SSO name", got);
    require(usher::validOsUser(e.osUser), "entry has a valid OS user", got);
    require(e.line >= 1 && e.line <= lineCount, "entry line within the text", got);
    require(sso.insert(e.ssoName).second, "no duplicate SSO names", got);
    require(map.find(e.ssoName) == &e, "find() returns the entry", got);
    ++entriesOn[e.line];
    auto [first, fresh] = firstForOs.try_emplace(e.osUser, &e);
    if (!fresh) {
      require(e.shared, "a second SSO name for an OS user needs shared=yes", got);
      require(e.backend == first->second->backend, "one OS user has one backend kind", got);
    }
    if (options.lookup) {
      auto info = fakeLookup(e.osUser);
      require(info && info->uid != 0 && info->uid >= kMinUid, "entry's OS user exists with a regular uid",
              got);
    }
  }
  for (const auto& e : errors) {
    require(e.line >= 1 && e.line <= lineCount, "error line within the text", got);
    require(!e.message.empty(), "error has a message", got);
    ++errorsOn[e.line];
  }
  for (int line = 1; line <= lineCount; ++line) {
    const int entries = entriesOn[line];
    const int errs = errorsOn[line];
    switch (lines[static_cast<size_t>(line - 1)]) {
      case LineKind::Nothing:
        require(entries == 0 && errs == 0, "blank and comment lines give nothing", got);
        break;
      case LineKind::Error:
        require(entries == 0 && errs == 1, "an overlong line gives one error", got);
        break;
      case LineKind::EntryOrError:
        require(entries + errs == 1, "a mapping line gives one entry or one error", got);
        break;
    }
  }
  return 0;
}
