// usher-dispatch configuration: one INI file, every key documented in
// dispatch/usher.conf.example. Embedded defaults make a config file optional.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "common/cidr.h"
#include "common/config_schema.h"
#include "common/vm_profile.h"

namespace usher::dispatch {

using std::chrono::milliseconds;

// How a session is obtained for a user (DESIGN.md, "Mint"). Defaults: t3.
struct MintConfig {
  bool enabled = true;
  std::vector<std::string> command{"/usr/bin/sudo", "-n", "-u", "{os_user}", "/usr/libexec/usher/t3-mint"};
  milliseconds timeout{10'000};
  uint64_t maxOutput = 64 * 1024;
  std::string credentialPointer = "/credential";
  std::string exchangeMethod = "POST";
  std::string exchangePath = "/api/auth/bootstrap";
  std::string exchangeBody = R"({"credential":"{credential}"})";
  std::string exchangeContentType = "application/json";
  std::string cookieName = "t3_session";
  std::string sessionCheckPath = "/api/auth/session";  // "" = no check
  bool secureCookies = true;
  std::string bindCookieName = "usher_bind";
  std::string bindKeyFile = "/etc/usher/bind.key";
  std::string bindKeyPreviousFile;
  milliseconds bindMaxAge{30LL * 24 * 3600 * 1000};
  milliseconds reuseWindow{30'000};
  uint64_t rateLimit = 10;
  milliseconds rateLimitWindow{60'000};
  std::vector<std::string> publicOrigins;  // "" = the request's own origin
};

// Splits a command line into argv: whitespace separates, double quotes group,
// backslash escapes the next character inside quotes. No shell semantics.
bool splitCommand(std::string_view text, std::vector<std::string>& argv, std::string& error);

struct Config {
  std::string sourcePath;  // file it was read from, "" for embedded defaults

  // [server]
  std::vector<std::string> listen{"127.0.0.1:8080"};
  std::string adminListen = "127.0.0.1:9090";  // "" disables the admin listener
  CidrSet trustedProxies;                       // default: 127.0.0.1/32, ::1/128
  std::string trustedProxiesText = "127.0.0.1/32 ::1/128";
  std::string identityHeader = "X-authentik-username";
  std::string forwardUserHeader = "X-Forwarded-User";  // "" = do not send one
  // Cookies never forwarded to backends (the SSO edge's own session); a
  // trailing '*' matches a prefix.
  std::vector<std::string> stripCookies{"authentik_proxy_*", "_oauth2_proxy*", "authelia_session"};

  // [users]
  std::string mapFile = "/etc/ttyd-user-map";
  std::string stateFile = "/var/lib/usher/state.json";
  uint32_t minUid = 1000;
  bool verifyOsUsers = true;
  milliseconds reloadDebounce{100};

  // [limits]
  uint64_t maxRequestLine = 8192;
  uint64_t maxHeaderBytes = 32768;
  uint64_t maxHeaders = 100;
  uint64_t maxBodyBytes = 0;  // 0: unlimited
  uint64_t maxChunkLine = 4096;  // chunk-size line incl. extensions
  uint64_t maxConnections = 16384;

  // [timeouts]
  milliseconds clientHeader{10'000};
  milliseconds clientBody{60'000};
  milliseconds keepaliveIdle{75'000};
  milliseconds backendConnect{5'000};
  milliseconds backendResponse{60'000};
  milliseconds upgradedIdle{3'600'000};
  milliseconds sendTimeout{60'000};
  milliseconds shutdownDrain{10'000};

  // [upstream]
  uint64_t maxIdlePerBackend = 32;
  milliseconds upstreamIdle{60'000};
  uint64_t bufferHighWatermark = 256 * 1024;

  // [log]
  std::string logLevel = "info";
  bool accessLog = true;

  // [mint]
  MintConfig mint;

  // [vm.NAME] profiles (shared with usher-reconcile): how VM users are minted
  VmProfiles vm;
};

using usher::ConfigError;

// Embedded defaults, validated (trustedProxies parsed).
Config defaultConfig();

// Reads `path` over the defaults. Returns false when there is any error;
// every error found is in `errors` (the whole file is checked, not just up to
// the first problem).
bool loadConfig(const std::string& path, Config& config, std::vector<ConfigError>& errors);
bool parseConfig(std::string_view text, const std::string& sourceName, Config& config,
                 std::vector<ConfigError>& errors);

}  // namespace usher::dispatch
