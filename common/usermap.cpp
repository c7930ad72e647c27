#include "common/usermap.h"

#include <algorithm>

#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "common/atomic_file.h"

namespace usher {

namespace {

// A map is a few lines per person; anything near these sizes is a mistake or
// an attack, and must not cost the dispatcher its memory on reload.
constexpr size_t kMaxMapBytes = size_t{16} << 20;
constexpr size_t kMaxLineBytes = 4096;

// Echoes map text in an error message without letting control bytes (or a
// whole hostile line) through to the log.
std::string printable(std::string_view s) {
  constexpr size_t kMax = 64;
  std::string out = "\"";
  for (size_t i = 0; i < s.size() && i < kMax; ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    out.push_back(c >= 0x20 && c < 0x7f && c != '"' && c != '\\' ? static_cast<char>(c) : '?');
  }
  out.push_back('"');
  if (s.size() > kMax) out.append("...");
  return out;
}

bool isBlank(char c) { return c == ' ' || c == '\t'; }
bool isLowerOrDigit(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }
bool isAlnum(char c) { return isLowerOrDigit(c) || (c >= 'A' && c <= 'Z'); }

std::string_view trimBlanks(std::string_view s) {
  while (!s.empty() && isBlank(s.front())) s.remove_prefix(1);
  while (!s.empty() && isBlank(s.back())) s.remove_suffix(1);
  return s;
}

// Whitespace-separated tokens up to a trailing `#` comment.
std::vector<std::string_view> tokenize(std::string_view line) {
  std::vector<std::string_view> tokens;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && isBlank(line[i])) ++i;
    if (i == line.size() || line[i] == '#') break;
    size_t start = i;
    while (i < line.size() && !isBlank(line[i])) ++i;
    tokens.push_back(line.substr(start, i - start));
  }
  return tokens;
}

struct ParsedLine {
  std::string_view sso;
  std::string_view os;
  BackendKind backend = BackendKind::Unit;
  bool shared = false;
  std::string vmProfile;
};

// Syntax and name patterns of one non-comment line: nullopt and `why` set
// when the line is unusable.
std::optional<ParsedLine> parseLine(std::string_view line, std::string& why) {
  std::vector<std::string_view> tokens = tokenize(line);
  std::string_view mapping = tokens.front();
  size_t eq = mapping.find('=');
  bool next = tokens.size() > 1;
  // `alice = alice`, `alice =alice`, `alice= alice`: tools that read the map
  // as plain `a=b` would see other names than we do, so refuse the line.
  if ((eq == std::string_view::npos && next && tokens[1].front() == '=') ||
      (eq == mapping.size() - 1 && next)) {
    why = "whitespace around '=' is not allowed (write sso_name=os_user)";
    return std::nullopt;
  }
  if (eq == std::string_view::npos) {
    why = "expected sso_name=os_user, got " + printable(mapping);
    return std::nullopt;
  }
  ParsedLine out;
  out.sso = mapping.substr(0, eq);
  out.os = mapping.substr(eq + 1);
  if (!validSsoName(out.sso)) {
    why = "invalid SSO name " + printable(out.sso) +
          " (1-128 of A-Z a-z 0-9 . _ @ + -, starting with a letter or digit)";
    return std::nullopt;
  }
  if (!validOsUser(out.os)) {
    why = "invalid OS user " + printable(out.os) +
          " (1-32 of a-z 0-9 _ -, starting with a-z or _)";
    return std::nullopt;
  }

  bool seenBackend = false;
  bool seenShared = false;
  bool seenProfile = false;
  for (size_t i = 1; i < tokens.size(); ++i) {
    std::string_view attr = tokens[i];
    size_t aeq = attr.find('=');
    if (aeq == std::string_view::npos) {
      why = "attribute " + printable(attr) + " is not key=value";
      return std::nullopt;
    }
    std::string_view key = attr.substr(0, aeq);
    std::string_view value = attr.substr(aeq + 1);
    bool* seen = key == "backend"      ? &seenBackend
                 : key == "shared"     ? &seenShared
                 : key == "vm_profile" ? &seenProfile
                                       : nullptr;
    if (seen == nullptr) {
      why = "unknown attribute " + printable(key) + " (known: backend, shared, vm_profile)";
      return std::nullopt;
    }
    if (*seen) {
      why = "repeated attribute " + printable(key);
      return std::nullopt;
    }
    *seen = true;
    if (key == "backend") {
      auto kind = parseBackendKind(value);
      if (!kind) {
        why = "invalid backend " + printable(value) + " (expected unit or vm)";
        return std::nullopt;
      }
      out.backend = *kind;
    } else if (key == "vm_profile") {
      if (!validVmProfileName(value)) {
        why = "invalid vm_profile " + printable(value) + " (1-32 of a-z 0-9 _ -)";
        return std::nullopt;
      }
      out.vmProfile = std::string(value);
    } else if (value == "yes" || value == "no") {
      out.shared = value == "yes";
    } else {
      why = "invalid shared " + printable(value) + " (expected yes or no)";
      return std::nullopt;
    }
  }
  if (seenProfile && out.backend != BackendKind::Vm) {
    why = "vm_profile needs backend=vm";
    return std::nullopt;
  }
  if (out.backend == BackendKind::Vm && out.vmProfile.empty()) out.vmProfile = "default";
  return out;
}

}  // namespace

bool validVmProfileName(std::string_view name) {
  if (name.empty() || name.size() > 32) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
  });
}

std::string_view toString(BackendKind kind) {
  switch (kind) {
    case BackendKind::Unit: return "unit";
    case BackendKind::Vm: return "vm";
  }
  return "unit";
}

std::optional<BackendKind> parseBackendKind(std::string_view s) {
  if (s == "unit") return BackendKind::Unit;
  if (s == "vm") return BackendKind::Vm;
  return std::nullopt;
}

bool validSsoName(std::string_view name) {
  if (name.empty() || name.size() > 128 || !isAlnum(name.front())) return false;
  for (char c : name) {
    if (!isAlnum(c) && c != '.' && c != '_' && c != '@' && c != '+' && c != '-') return false;
  }
  return true;
}

bool validOsUser(std::string_view name) {
  if (name.empty() || name.size() > 32) return false;
  if (!((name.front() >= 'a' && name.front() <= 'z') || name.front() == '_')) return false;
  for (char c : name) {
    if (!isLowerOrDigit(c) && c != '_' && c != '-') return false;
  }
  return true;
}

OsUserLookup systemOsUserLookup() {
  return [](const std::string& name) -> std::optional<OsUserInfo> {
    long hint = ::sysconf(_SC_GETPW_R_SIZE_MAX);
    std::vector<char> buf(hint > 0 ? static_cast<size_t>(hint) : 16384);
    for (;;) {
      passwd pw{};
      passwd* result = nullptr;
      int rc = ::getpwnam_r(name.c_str(), &pw, buf.data(), buf.size(), &result);
      // sysconf's figure is only a hint; NSS modules (LDAP, sssd) may need more.
      if (rc == ERANGE && buf.size() < (size_t{1} << 20)) {
        buf.resize(buf.size() * 2);
        continue;
      }
      if (rc != 0 || result == nullptr) return std::nullopt;
      return OsUserInfo{pw.pw_uid, pw.pw_gid, pw.pw_dir != nullptr ? pw.pw_dir : ""};
    }
  };
}

UserMap UserMap::parse(std::string_view text, const UserMapOptions& options,
                       std::vector<MapError>& errors) {
  UserMap map;
  // Every line that named an SSO name claims it, even if it fails a later
  // check: two lines for one person are ambiguous, and ambiguity must not be
  // resolved by which OS account happens to exist.
  std::unordered_map<std::string, int> claimed;
  std::unordered_map<std::string, size_t> byOs;  // osUser -> first entry mapping it

  // An editor on another OS may have written a byte-order mark.
  if (text.substr(0, 3) == "\xEF\xBB\xBF") text.remove_prefix(3);

  int lineNo = 0;
  while (!text.empty()) {
    ++lineNo;
    size_t nl = text.find('\n');
    std::string_view raw = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    auto fail = [&](std::string message) { errors.push_back(MapError{lineNo, std::move(message)}); };

    if (!raw.empty() && raw.back() == '\r') raw.remove_suffix(1);
    if (raw.size() > kMaxLineBytes) {
      fail("line too long (" + std::to_string(raw.size()) + " bytes, max " +
           std::to_string(kMaxLineBytes) + ")");
      continue;
    }
    std::string_view line = trimBlanks(raw);
    if (line.empty() || line.front() == '#') continue;

    std::string why;
    auto parsed = parseLine(line, why);
    if (!parsed) {
      fail(std::move(why));
      continue;
    }
    std::string sso(parsed->sso);
    std::string os(parsed->os);

    auto [claim, fresh] = claimed.try_emplace(sso, lineNo);
    if (!fresh) {
      fail("duplicate SSO name " + printable(sso) + ", first mapped on line " +
           std::to_string(claim->second));
      continue;
    }
    if (auto it = byOs.find(os); it != byOs.end()) {
      const MapEntry& first = map.entries_[it->second];
      if (!parsed->shared) {
        fail("OS user " + printable(os) + " is already mapped from " + printable(first.ssoName) +
             " on line " + std::to_string(first.line) +
             "; add shared=yes to give it a second SSO name");
        continue;
      }
      // One OS user has one backend in the state file; two kinds cannot both hold.
      if (parsed->backend != first.backend) {
        fail("OS user " + printable(os) + " has backend=" + std::string(toString(first.backend)) +
             " on line " + std::to_string(first.line) + ", not backend=" +
             std::string(toString(parsed->backend)));
        continue;
      }
      if (parsed->vmProfile != first.vmProfile) {
        fail("OS user " + printable(os) + " has vm_profile=" + first.vmProfile + " on line " +
             std::to_string(first.line) + ", not vm_profile=" + parsed->vmProfile);
        continue;
      }
    }
    if (options.lookup) {
      auto info = options.lookup(os);
      if (!info) {
        fail("OS user " + printable(os) + " does not exist");
        continue;
      }
      if (info->uid == 0) {
        fail("OS user " + printable(os) + " has uid 0; root is never a backend user");
        continue;
      }
      if (info->uid < options.minUid) {
        fail("OS user " + printable(os) + " has uid " + std::to_string(info->uid) +
             ", below the minimum " + std::to_string(options.minUid) +
             " for regular accounts");
        continue;
      }
    }

    byOs.try_emplace(os, map.entries_.size());
    map.bySso_.emplace(sso, map.entries_.size());
    map.entries_.push_back(MapEntry{std::move(sso), std::move(os), parsed->backend,
                                    parsed->shared, lineNo, std::move(parsed->vmProfile)});
  }
  return map;
}

std::optional<UserMap> UserMap::load(const std::string& path, const UserMapOptions& options,
                                     std::vector<MapError>& errors) {
  auto tooLarge = [&](uint64_t size) -> std::optional<UserMap> {
    errors.push_back(MapError{0, "cannot read " + path + ": file too large (" +
                                     std::to_string(size) + " bytes, max " +
                                     std::to_string(kMaxMapBytes) + ")"});
    return std::nullopt;
  };
  // Checked before reading too, so a runaway file is never pulled into memory.
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
      static_cast<uint64_t>(st.st_size) > kMaxMapBytes) {
    return tooLarge(static_cast<uint64_t>(st.st_size));
  }
  std::string error;
  auto text = readFile(path, error);
  if (!text) {
    errors.push_back(MapError{0, std::move(error)});
    return std::nullopt;
  }
  if (text->size() > kMaxMapBytes) return tooLarge(text->size());
  return parse(*text, options, errors);
}

const MapEntry* UserMap::find(std::string_view ssoName) const {
  auto it = bySso_.find(std::string(ssoName));
  return it == bySso_.end() ? nullptr : &entries_[it->second];
}

}  // namespace usher
