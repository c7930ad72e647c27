#include "reconcile/config.h"

#include <doctest.h>

#include <string>
#include <vector>

using usher::reconcile::Config;
using usher::reconcile::ConfigError;
using usher::reconcile::parseConfig;
using usher::parseDuration;

namespace {

std::vector<std::string> errorsOf(const std::string& text, Config* out = nullptr) {
  Config c;
  std::vector<ConfigError> errors;
  parseConfig(text, "usher.conf", c, errors);
  if (out) *out = c;
  std::vector<std::string> s;
  for (const auto& e : errors) s.push_back(e.str());
  return s;
}

}  // namespace

TEST_CASE("reconcile config: embedded defaults") {
  Config c;
  CHECK(c.mapFile == "/etc/ttyd-user-map");
  CHECK(c.stateFile == "/var/lib/usher/state.json");
  CHECK(c.minUid == 1000);
  CHECK(c.portFirst == 3773);
  CHECK(c.portLast == 4772);
  CHECK(c.envDir == "/etc/t3-serve");
  CHECK(c.unitFor("alice") == "t3-serve@alice.service");
  CHECK(c.backendAddress == "127.0.0.1");
  CHECK(c.lockFile == "/run/usher/reconcile.lock");
  CHECK(c.portReservation == std::chrono::hours(24 * 30));
  CHECK(c.jobTimeout == std::chrono::seconds(30));
  CHECK(c.lockWait == std::chrono::minutes(10));
}

TEST_CASE("reconcile config: every key") {
  Config c;
  CHECK(errorsOf(R"([users]
map_file = /srv/map
state_file = /srv/state.json
min_uid = 2000
verify_os_users = whatever-dispatch-checks-this
reload_debounce = 5s
[reconcile]
port_range = 5000 - 5009
env_dir = /srv/env
unit_template = app@.service
backend_address = ::1
lock_file = /srv/lock
port_reservation = 7d
job_timeout = 90s
lock_wait = 0
log_level = debug
)",
                 &c)
            .empty());
  CHECK(c.mapFile == "/srv/map");
  CHECK(c.stateFile == "/srv/state.json");
  CHECK(c.minUid == 2000);
  CHECK(c.portFirst == 5000);
  CHECK(c.portLast == 5009);
  CHECK(c.envDir == "/srv/env");
  CHECK(c.unitFor("bob") == "app@bob.service");
  CHECK(c.backendAddress == "::1");
  CHECK(c.lockFile == "/srv/lock");
  CHECK(c.portReservation == std::chrono::hours(24 * 7));
  CHECK(c.jobTimeout == std::chrono::seconds(90));
  CHECK(c.lockWait.count() == 0);
  CHECK(c.logLevel == "debug");
}

TEST_CASE("reconcile config: dispatch's sections are skipped, others refused with file:line") {
  CHECK(errorsOf("[server]\nlisten = whatever\n[limits]\nx = 1\n[timeouts]\n[upstream]\n[log]\n"
                 "level = nonsense\n[mint]\ncommand = t3\n")
            .empty());
  CHECK(errorsOf("[reconcile]\nport_rang = 1-2\n") ==
        std::vector<std::string>{"usher.conf:2: [reconcile] port_rang: unknown key"});
  CHECK(errorsOf("[users]\nmap = /x\n") ==
        std::vector<std::string>{"usher.conf:2: [users] map: unknown key"});
  CHECK(errorsOf("\n[reconcil]\nport_range = 1-2\n") ==
        std::vector<std::string>{"usher.conf:3: [reconcil] port_range: unknown section"});
  CHECK(errorsOf("port_range = 1-2\n") ==
        std::vector<std::string>{"usher.conf:1: [] port_range: key outside any [section]"});
  CHECK(errorsOf("[reconcile]\njob_timeout = 1s\njob_timeout = 2s\n") ==
        std::vector<std::string>{"usher.conf:3: [reconcile] job_timeout: set twice (first on line 2)"});
}

TEST_CASE("reconcile config: bad values") {
  auto one = [](const std::string& key, const std::string& value) {
    auto e = errorsOf("[reconcile]\n" + key + " = " + value + "\n");
    REQUIRE(e.size() == 1);
    return e[0];
  };
  CHECK(one("port_range", "4772-3773") ==
        "usher.conf:2: [reconcile] port_range: expected FIRST-LAST, e.g. 3773-4772 (1..65535, FIRST <= LAST)");
  CHECK(one("port_range", "0-10").find("expected FIRST-LAST") != std::string::npos);
  CHECK(one("port_range", "1-65536").find("expected FIRST-LAST") != std::string::npos);
  CHECK(one("port_range", "3773").find("expected FIRST-LAST") != std::string::npos);
  CHECK(one("env_dir", "relative/dir") == "usher.conf:2: [reconcile] env_dir: expected an absolute path");
  CHECK(one("unit_template", "t3-serve").find("expected a template unit name") != std::string::npos);
  CHECK(one("unit_template", "t3 serve@").find("expected a template unit name") != std::string::npos);
  CHECK(one("backend_address", "localhost") ==
        "usher.conf:2: [reconcile] backend_address: expected a numeric IPv4 or IPv6 address");
  CHECK(one("port_reservation", "30 days").find("expected a duration") != std::string::npos);
  CHECK(one("job_timeout", "0").find("greater than zero") != std::string::npos);
  CHECK(one("lock_wait", "-1").find("expected a duration") != std::string::npos);
  CHECK(one("log_level", "loud").find("expected one of") != std::string::npos);
  // Every error is reported, not just the first.
  CHECK(errorsOf("[reconcile]\nport_range = x\nenv_dir = y\n[users]\nmin_uid = 0\n").size() == 3);
}

TEST_CASE("durations: days on top of s, m, h (port reservations are counted in days)") {
  CHECK(parseDuration("30d") == std::chrono::hours(24 * 30));
  CHECK(parseDuration("0") == std::chrono::milliseconds(0));
  CHECK(parseDuration("12h") == std::chrono::hours(12));
  CHECK(parseDuration("90m") == std::chrono::minutes(90));
  CHECK_FALSE(parseDuration("d").has_value());
  CHECK_FALSE(parseDuration("1w").has_value());
  CHECK_FALSE(parseDuration("99999d").has_value());
}
