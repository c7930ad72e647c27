#include "reconcile/config.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <functional>
#include <map>
#include <set>

#include "common/atomic_file.h"
#include "common/ini.h"

namespace usher::reconcile {

std::string Config::unitFor(std::string_view osUser) const {
  std::string unit = unitTemplate;
  unit.append(osUser);
  unit.append(".service");
  return unit;
}

namespace {

// One setter per key: returns "" on success, else what is wrong with the value.
using Setter = KeySetter<Config>;


Setter ignored() {
  return [](Config&, std::string_view) -> std::string { return ""; };
}

// Characters systemd allows in a unit name prefix (unit_name_is_valid).
bool validUnitPrefix(std::string_view s) {
  if (s.empty() || s.size() > 200) return false;
  for (unsigned char c : s) {
    if (!(std::isalnum(c) || c == ':' || c == '-' || c == '_' || c == '.' || c == '\\')) {
      return false;
    }
  }
  return true;
}

const ConfigSchema<Config>& schema() {
  static const ConfigSchema<Config> s = {
      {"users",
       {
           {"map_file", absolutePathKey(&Config::mapFile)},
           {"state_file", absolutePathKey(&Config::stateFile)},
           {"min_uid", minUidKey(&Config::minUid)},
           // usher-dispatch's keys: it validates them; reconcile always
           // verifies OS users and does not watch files.
           {"verify_os_users", ignored()},
           {"reload_debounce", ignored()},
       }},
      {"reconcile",
       {
           {"port_range",
            [](Config& c, std::string_view v) -> std::string {
              auto dash = v.find('-');
              const char* want = "expected FIRST-LAST, e.g. 3773-4772 (1..65535, FIRST <= LAST)";
              if (dash == std::string_view::npos) return want;
              auto first = parseUnsigned(trim(v.substr(0, dash)));
              auto last = parseUnsigned(trim(v.substr(dash + 1)));
              if (!first || !last || *first < 1 || *last > 65535 || *first > *last) return want;
              c.portFirst = static_cast<uint16_t>(*first);
              c.portLast = static_cast<uint16_t>(*last);
              return "";
            }},
           {"env_dir", absolutePathKey(&Config::envDir)},
           {"unit_template",
            [](Config& c, std::string_view v) -> std::string {
              std::string_view prefix = v;
              if (prefix.ends_with(".service")) prefix.remove_suffix(8);
              if (!prefix.ends_with('@') || !validUnitPrefix(prefix.substr(0, prefix.size() - 1))) {
                return "expected a template unit name such as t3-serve@ or t3-serve@.service";
              }
              c.unitTemplate = std::string(prefix);
              return "";
            }},
           {"backend_address",
            [](Config& c, std::string_view v) -> std::string {
              std::string text(v);
              in6_addr buf{};
              if (::inet_pton(AF_INET, text.c_str(), &buf) != 1 &&
                  ::inet_pton(AF_INET6, text.c_str(), &buf) != 1) {
                return "expected a numeric IPv4 or IPv6 address";
              }
              c.backendAddress = std::move(text);
              return "";
            }},
           {"lock_file", absolutePathKey(&Config::lockFile)},
           {"port_reservation",
            [](Config& c, std::string_view v) -> std::string {
              auto d = parseDuration(v);
              if (!d) return "expected a duration such as 30d, 12h or 0 (no reservation)";
              c.portReservation = std::chrono::duration_cast<seconds>(*d);
              return "";
            }},
           {"job_timeout",
            [](Config& c, std::string_view v) -> std::string {
              auto d = parseDuration(v);
              if (!d || d->count() == 0) return "expected a duration greater than zero, e.g. 30s";
              c.jobTimeout = *d;
              return "";
            }},
           {"lock_wait",
            [](Config& c, std::string_view v) -> std::string {
              auto d = parseDuration(v);
              if (!d) return "expected a duration such as 10m, or 0 to not wait";
              c.lockWait = *d;
              return "";
            }},
           {"vm_parallel",
            [](Config& c, std::string_view v) -> std::string {
              auto n = parseUnsigned(v);
              if (!n || *n == 0 || *n > 256) return "expected 1-256";
              c.vmParallel = static_cast<unsigned>(*n);
              return "";
            }},
           {"log_level",
            [](Config& c, std::string_view v) -> std::string {
              static const char* kLevels[] = {"trace", "debug", "info", "warn",
                                              "error", "critical", "off"};
              for (const char* l : kLevels) {
                if (v == l) {
                  c.logLevel = std::string(v);
                  return "";
                }
              }
              return "expected one of trace, debug, info, warn, error, critical, off";
            }},
       }},
  };
  return s;
}

// usher-dispatch's own sections: the file configures the whole host and
// dispatch checks these itself.
const std::set<std::string> kDispatchSections = {"server", "limits", "timeouts", "upstream", "log", "mint"};

}  // namespace

bool parseConfig(std::string_view text, const std::string& sourceName, Config& config,
                 std::vector<ConfigError>& errors) {
  size_t before = errors.size();
  static const auto families = vmProfileFamilies(&Config::vm);
  applyIni(text, sourceName, schema(), kDispatchSections, config, errors, nullptr, &families);
  checkVmProfiles(config.vm, sourceName, errors);
  config.sourcePath = sourceName;
  return errors.size() == before;
}

bool loadConfig(const std::string& path, Config& config, std::vector<ConfigError>& errors) {
  return loadConfigFile(path, config, errors, parseConfig);
}

}  // namespace usher::reconcile
