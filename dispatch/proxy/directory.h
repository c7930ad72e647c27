// Who is where: the user map (SSO name -> OS user) and the state file
// (OS user -> backend), each reloaded as a whole and swapped atomically, so a
// request always sees one consistent version of each.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "common/statefile.h"
#include "common/usermap.h"
#include "dispatch/admin/metrics.h"
#include "dispatch/config.h"

namespace usher::dispatch {

struct Route {
  enum class Result { Ok, Unmapped, NoBackend } result = Result::Unmapped;
  const MapEntry* entry = nullptr;
  const Backend* backend = nullptr;
};

class Directory {
public:
  Directory(const Config& config, Metrics& metrics);

  // Reload from disk. A file that cannot be read or parsed as a whole keeps
  // the previous version (and counts as a failed reload); bad lines or
  // entries are logged and skipped. Returns true if a new version was loaded.
  bool reloadMap();
  bool reloadState();

  // Valid while the caller holds no reload across it (single-threaded loop).
  Route resolve(std::string_view ssoName) const;
  // Does `ssoName` still map to `osUser`?
  bool stillMapped(std::string_view ssoName, std::string_view osUser) const;

  const UserMap& map() const { return *map_; }
  const State& state() const { return *state_; }
  bool mapLoaded() const { return mapLoaded_; }
  bool stateLoaded() const { return stateLoaded_; }

private:
  const Config& config_;
  Metrics& metrics_;
  UserMapPtr map_;
  StatePtr state_;
  bool mapLoaded_ = false;
  bool stateLoaded_ = false;
};

}  // namespace usher::dispatch
