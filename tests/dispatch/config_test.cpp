#include <doctest.h>

#include "dispatch/config.h"

using namespace usher::dispatch;

namespace {

std::vector<ConfigError> parse(const std::string& text, Config& c) {
  std::vector<ConfigError> errors;
  parseConfig(text, "test.conf", c, errors);
  return errors;
}

}  // namespace

TEST_CASE("embedded defaults are valid and match the documented ones") {
  Config c = defaultConfig();
  CHECK(c.listen == std::vector<std::string>{"127.0.0.1:8080"});
  CHECK(c.adminListen == "127.0.0.1:9090");
  CHECK(c.identityHeader == "X-authentik-username");
  CHECK(c.forwardUserHeader == "X-Forwarded-User");
  CHECK(c.mapFile == "/etc/ttyd-user-map");
  CHECK(c.stateFile == "/var/lib/usher/state.json");
  CHECK(c.trustedProxies.size() == 2);
  CHECK(c.maxHeaderBytes == 32768);
}

TEST_CASE("every value syntax is read") {
  Config c = defaultConfig();
  auto errors = parse(R"(
; comment
[server]
listen = 127.0.0.1:0, [::1]:0
trusted_proxies = 10.0.0.0/8 fd00::/8
identity_header = X-Remote-User
forward_user_header =
[users]
map_file = /srv/map
verify_os_users = no
min_uid = 2000
[limits]
max_header_bytes = 16k
max_body_bytes = 1M
[timeouts]
client_header = 250ms
upgraded_idle = 2m
[log]
level = debug
access_log = off
)",
                      c);
  REQUIRE(errors.empty());
  CHECK(c.listen == std::vector<std::string>{"127.0.0.1:0", "[::1]:0"});
  CHECK(c.trustedProxies.size() == 2);
  CHECK(c.identityHeader == "X-Remote-User");
  CHECK(c.forwardUserHeader.empty());
  CHECK(c.mapFile == "/srv/map");
  CHECK_FALSE(c.verifyOsUsers);
  CHECK(c.minUid == 2000);
  CHECK(c.maxHeaderBytes == 16384);
  CHECK(c.maxBodyBytes == 1048576);
  CHECK(c.clientHeader.count() == 250);
  CHECK(c.upgradedIdle.count() == 120000);
  CHECK(c.logLevel == "debug");
  CHECK_FALSE(c.accessLog);
}

TEST_CASE("errors name file, line, section and key, and all are reported") {
  Config c = defaultConfig();
  auto errors = parse("[server]\nlisten = nope\nbogus = 1\n[limits]\nmax_headers = 0\n[nowhere]\nx = 1\n"
                      "[timeouts]\nclient_header = soon\nclient_header = 5s\n",
                      c);
  REQUIRE(errors.size() == 6);
  CHECK(errors[0].str() == "test.conf:2: [server] listen: invalid address \"nope\" (expected host:port or [v6]:port)");
  CHECK(errors[1].str() == "test.conf:3: [server] bogus: unknown key");
  CHECK(errors[2].str() == "test.conf:5: [limits] max_headers: must be between 1 and 1000");
  CHECK(errors[3].str() == "test.conf:7: [nowhere] x: unknown section");
  CHECK(errors[4].line == 9);
  CHECK(errors[4].key == "client_header");
  // A repeated key is an error even when its first value was bad, and the
  // repeat is not applied: the default stays.
  CHECK(errors[5].str() == "test.conf:10: [timeouts] client_header: set twice (first on line 9)");
  CHECK(c.clientHeader.count() == 10000);
}

TEST_CASE("a key set twice is an error naming the first line") {
  Config c = defaultConfig();
  auto errors = parse("[log]\nlevel = info\nlevel = warn\n", c);
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].str() == "test.conf:3: [log] level: set twice (first on line 2)");
}

TEST_CASE("bad values") {
  struct Case {
    const char* text;
    const char* message;
  };
  const Case cases[] = {
      {"[server]\ntrusted_proxies = 10.0.0.0/33\n", "10.0.0.0/33"},
      {"[server]\nidentity_header = X Bad\n", "header name"},
      {"[users]\nmap_file = relative/path\n", "absolute path"},
      {"[users]\nmin_uid = 0\n", "uid greater than 0"},
      {"[users]\nverify_os_users = maybe\n", "yes or no"},
      {"[limits]\nmax_header_bytes = 1G\n", "between"},
      {"[timeouts]\nbackend_connect = 0\n", "greater than zero"},
      {"[timeouts]\nbackend_connect = -1s\n", "duration"},
      {"[log]\nlevel = loud\n", "one of"},
      {"key = outside\n", "outside any [section]"},
      {"[server]\nthis line has no equals sign\n", "syntax error"},
  };
  for (const auto& tc : cases) {
    CAPTURE(tc.text);
    Config c = defaultConfig();
    auto errors = parse(tc.text, c);
    REQUIRE(errors.size() == 1);
    CHECK(errors[0].line == 2 - (std::string(tc.text).rfind("key", 0) == 0 ? 1 : 0));
    CHECK(errors[0].message.find(tc.message) != std::string::npos);
  }
}

TEST_CASE("admin and proxy may not share an address") {
  Config c = defaultConfig();
  auto errors = parse("[server]\nlisten = 127.0.0.1:8000\nadmin_listen = 127.0.0.1:8000\n", c);
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].key == "admin_listen");
  CHECK(errors[0].line == 3);
  Config d = defaultConfig();
  CHECK(parse("[server]\nlisten = 127.0.0.1:0\nadmin_listen = 127.0.0.1:0\n", d).empty());
}

TEST_CASE("a missing file is one error without a line") {
  Config c = defaultConfig();
  std::vector<ConfigError> errors;
  CHECK_FALSE(loadConfig("/nonexistent/usher.conf", c, errors));
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].line == 0);
  CHECK(errors[0].str().rfind("/nonexistent/usher.conf: ", 0) == 0);
}
