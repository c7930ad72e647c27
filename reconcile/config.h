// usher-reconcile configuration: the same INI file as usher-dispatch. Reconcile
// reads [users] (shared with dispatch) and its own [reconcile]; the sections
// only dispatch uses are skipped, anything else is an error with file:line.
// Every key is documented at the end of dispatch/usher.conf.example.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/config_schema.h"
#include "common/vm_profile.h"

namespace usher::reconcile {

using std::chrono::milliseconds;
using std::chrono::seconds;

struct Config {
  std::string sourcePath;  // file it was read from, "" for embedded defaults

  // [users] (map_file, state_file, min_uid are shared with usher-dispatch)
  std::string mapFile = "/etc/ttyd-user-map";
  std::string stateFile = "/var/lib/usher/state.json";
  uint32_t minUid = 1000;

  // [reconcile]
  uint16_t portFirst = 3773;  // the seed deployment's band: wizard=3773, emo=3774, ...
  uint16_t portLast = 4772;
  std::string envDir = "/etc/t3-serve";
  std::string unitTemplate = "t3-serve@";  // instance: <template><os_user>.service
  std::string backendAddress = "127.0.0.1";
  std::string lockFile = "/run/usher/reconcile.lock";
  seconds portReservation{30 * 24 * 3600};
  milliseconds jobTimeout{30'000};
  milliseconds lockWait{600'000};  // 0: do not wait, exit 2 at once
  std::string logLevel = "info";
  unsigned vmParallel = 4;  // provider calls at once

  // [vm.NAME] profiles (shared with usher-dispatch)
  VmProfiles vm;

  // "t3-serve@alice.service"
  std::string unitFor(std::string_view osUser) const;
};

using usher::ConfigError;

// Reads `path` over the defaults. False when there is any error; every error
// found is in `errors` (the whole file is checked).
bool loadConfig(const std::string& path, Config& config, std::vector<ConfigError>& errors);
bool parseConfig(std::string_view text, const std::string& sourceName, Config& config,
                 std::vector<ConfigError>& errors);

}  // namespace usher::reconcile
