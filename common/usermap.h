// The user map: which SSO name is which OS account (DESIGN.md, "User map").
//
//   # comment
//   alice=alice
//   emil.barzin=emo   backend=vm
//   ops-bot=alice     shared=yes
//   dave=dave         backend=vm vm_profile=gpu
//
// One `sso_name=os_user` per line, then optional `key=value` attributes after
// whitespace. A bad line is reported with its number and skipped; it never
// takes the other lines down.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace usher {

enum class BackendKind { Unit, Vm };
std::string_view toString(BackendKind kind);
std::optional<BackendKind> parseBackendKind(std::string_view s);

struct MapEntry {
  std::string ssoName;
  std::string osUser;
  BackendKind backend = BackendKind::Unit;
  bool shared = false;  // explicitly allowed to share osUser with another line
  int line = 0;
  std::string vmProfile;  // backend=vm: the [vm.NAME] profile ("default" unless named)
};

struct MapError {
  int line = 0;  // 0: not tied to a line (file missing, unreadable)
  std::string message;
};

struct OsUserInfo {
  uid_t uid = 0;
  gid_t gid = 0;
  std::string home;
};
// Looks an OS account up; nullopt when it does not exist.
using OsUserLookup = std::function<std::optional<OsUserInfo>(const std::string& name)>;
// getpwnam_r on this host.
OsUserLookup systemOsUserLookup();

struct UserMapOptions {
  uid_t minUid = 1000;
  // When set, every OS user must exist and be a regular account (uid >= minUid,
  // never 0). When empty, only the name pattern is checked (demo, unit tests).
  OsUserLookup lookup;
};

// SSO names: 1..128 of [A-Za-z0-9._@+-], starting with a letter or digit.
bool validSsoName(std::string_view name);
// VM profile names ([vm.NAME] sections, vm_profile=): 1..32 of [a-z0-9_-].
bool validVmProfileName(std::string_view name);
// OS user names: 1..32 of [a-z0-9_-], starting with [a-z_] (Debian's NAME_REGEX).
bool validOsUser(std::string_view name);

class UserMap {
public:
  UserMap() = default;

  // Parses map text. Errors (one per bad line) are appended to `errors`.
  static UserMap parse(std::string_view text, const UserMapOptions& options,
                       std::vector<MapError>& errors);
  // Reads and parses a file. nullopt only when the file cannot be read at all
  // (then `errors` holds one entry with line 0).
  static std::optional<UserMap> load(const std::string& path, const UserMapOptions& options,
                                     std::vector<MapError>& errors);

  const MapEntry* find(std::string_view ssoName) const;
  const std::vector<MapEntry>& entries() const { return entries_; }
  size_t size() const { return entries_.size(); }

private:
  std::vector<MapEntry> entries_;
  std::unordered_map<std::string, size_t> bySso_;  // ssoName -> index in entries_
};

using UserMapPtr = std::shared_ptr<const UserMap>;

}  // namespace usher
