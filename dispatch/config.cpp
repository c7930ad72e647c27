#include "dispatch/config.h"

#include <cctype>
#include <functional>
#include <map>

#include "common/atomic_file.h"
#include "common/ini.h"
#include "dispatch/http/headers.h"
#include "dispatch/net/address.h"

namespace usher::dispatch {

Config defaultConfig() {
  Config c;
  std::string err;
  c.trustedProxies = *CidrSet::parse(c.trustedProxiesText, err);
  return c;
}

namespace {

bool validHeaderName(std::string_view s) {
  if (s.empty() || s.size() > 64) return false;
  for (unsigned char ch : s)
    if (!(std::isalnum(ch) || ch == '-')) return false;
  return true;
}

// One setter per key: returns "" on success, else what is wrong with the value.
using Setter = KeySetter<Config>;

Setter duration(milliseconds Config::*field, bool allowZero = false) {
  return [=](Config& c, std::string_view v) -> std::string {
    auto d = parseDuration(v);
    if (!d) return "expected a duration such as 10s, 250ms, 2m or 1h";
    if (!allowZero && d->count() == 0) return "must be greater than zero";
    c.*field = *d;
    return "";
  };
}

Setter size(uint64_t Config::*field, uint64_t min, uint64_t max) {
  return [=](Config& c, std::string_view v) -> std::string {
    auto n = parseSize(v);
    if (!n) return "expected a size such as 8192, 64k or 1M";
    if (*n < min || *n > max)
      return "must be between " + std::to_string(min) + " and " + std::to_string(max);
    c.*field = *n;
    return "";
  };
}

Setter boolean(bool Config::*field) {
  return [=](Config& c, std::string_view v) -> std::string {
    auto b = parseBool(v);
    if (!b) return "expected yes or no";
    c.*field = *b;
    return "";
  };
}


Setter mintBool(bool MintConfig::*field) {
  return [=](Config& c, std::string_view v) -> std::string {
    auto b = parseBool(v);
    if (!b) return "expected yes or no";
    c.mint.*field = *b;
    return "";
  };
}

Setter mintDuration(milliseconds MintConfig::*field, bool allowZero) {
  return [=](Config& c, std::string_view v) -> std::string {
    auto d = parseDuration(v);
    if (!d) return "expected a duration such as 10s, 250ms, 2m or 1h";
    if (!allowZero && d->count() == 0) return "must be greater than zero";
    c.mint.*field = *d;
    return "";
  };
}

bool validPath(std::string_view p) {
  if (p.empty() || p.front() != '/' || p.size() > 1024) return false;
  for (unsigned char ch : p)
    if (ch <= 0x20 || ch >= 0x7f) return false;
  return true;
}

Setter mintCookieName(std::string MintConfig::*field) {
  return [=](Config& c, std::string_view v) -> std::string {
    if (v.empty() || v.size() > 64) return "expected a cookie name";
    for (unsigned char ch : v)
      if (!(std::isalnum(ch) || ch == '_' || ch == '-' || ch == '.')) return "expected a cookie name of letters, digits, '_', '-', '.'";
    c.mint.*field = std::string(v);
    return "";
  };
}

Setter mintKeyPath(std::string MintConfig::*field, bool allowEmpty) {
  return [=](Config& c, std::string_view v) -> std::string {
    if (v.empty() && allowEmpty) {
      c.mint.*field = "";
      return "";
    }
    if (v.empty() || v.front() != '/') return "expected an absolute path";
    c.mint.*field = std::string(v);
    return "";
  };
}

const ConfigSchema<Config>& schema() {
  static const ConfigSchema<Config> s = {
      {"server",
       {
           {"listen",
            [](Config& c, std::string_view v) -> std::string {
              auto items = splitList(v);
              if (items.empty()) return "expected at least one address:port";
              for (const auto& a : items)
                if (!net::parseAddress(a)) return "invalid address \"" + a + "\" (expected host:port or [v6]:port)";
              c.listen = items;
              return "";
            }},
           {"admin_listen",
            [](Config& c, std::string_view v) -> std::string {
              if (!v.empty() && !net::parseAddress(v)) return "invalid address (expected host:port, or empty to disable)";
              c.adminListen = std::string(v);
              return "";
            }},
           {"trusted_proxies",
            [](Config& c, std::string_view v) -> std::string {
              std::string err;
              auto set = CidrSet::parse(v, err);
              if (!set) return err;
              c.trustedProxies = std::move(*set);
              c.trustedProxiesText = std::string(v);
              return "";
            }},
           {"identity_header",
            [](Config& c, std::string_view v) -> std::string {
              if (!validHeaderName(v)) return "expected a header name of letters, digits and '-'";
              c.identityHeader = std::string(v);
              return "";
            }},
           {"strip_cookies",
            [](Config& c, std::string_view v) -> std::string {
              auto items = splitList(v);
              for (const auto& n : items) {
                std::string_view name = n;
                if (name.size() > 1 && name.back() == '*') name.remove_suffix(1);
                for (unsigned char ch : name)
                  if (!(std::isalnum(ch) || ch == '_' || ch == '-' || ch == '.'))
                    return "invalid cookie name \"" + n + "\" (letters, digits, '_', '-', '.', and a trailing '*')";
              }
              c.stripCookies = std::move(items);
              return "";
            }},
           {"forward_user_header",
            [](Config& c, std::string_view v) -> std::string {
              if (!v.empty() && !validHeaderName(v)) return "expected a header name, or empty to disable";
              c.forwardUserHeader = std::string(v);
              return "";
            }},
       }},
      {"users",
       {
           {"map_file", absolutePathKey(&Config::mapFile)},
           {"state_file", absolutePathKey(&Config::stateFile)},
           {"min_uid", minUidKey(&Config::minUid)},
           {"verify_os_users", boolean(&Config::verifyOsUsers)},
           {"reload_debounce", duration(&Config::reloadDebounce, true)},
       }},
      {"limits",
       {
           {"max_request_line", size(&Config::maxRequestLine, 64, 65536)},
           // http-parser refuses heads above 80 KiB whatever we say.
           {"max_header_bytes", size(&Config::maxHeaderBytes, 256, 65536)},
           {"max_headers", size(&Config::maxHeaders, 1, 1000)},
           {"max_body_bytes", size(&Config::maxBodyBytes, 0, UINT64_MAX >> 1)},
           {"max_chunk_line", size(&Config::maxChunkLine, 16, 65536)},
           {"max_connections", size(&Config::maxConnections, 1, 1'000'000)},
       }},
      {"timeouts",
       {
           {"client_header", duration(&Config::clientHeader)},
           {"client_body", duration(&Config::clientBody)},
           {"keepalive_idle", duration(&Config::keepaliveIdle)},
           {"backend_connect", duration(&Config::backendConnect)},
           {"backend_response", duration(&Config::backendResponse)},
           {"upgraded_idle", duration(&Config::upgradedIdle)},
           {"send", duration(&Config::sendTimeout)},
           {"shutdown_drain", duration(&Config::shutdownDrain, true)},
       }},
      {"upstream",
       {
           {"max_idle_per_backend", size(&Config::maxIdlePerBackend, 0, 100000)},
           {"idle_timeout", duration(&Config::upstreamIdle)},
           {"buffer_high_watermark", size(&Config::bufferHighWatermark, 4096, 1ULL << 30)},
       }},
      {"log",
       {
           {"level",
            [](Config& c, std::string_view v) -> std::string {
              static const char* kLevels[] = {"trace", "debug", "info", "warn", "error", "critical", "off"};
              for (auto l : kLevels)
                if (v == l) {
                  c.logLevel = std::string(v);
                  return "";
                }
              return "expected one of trace, debug, info, warn, error, critical, off";
            }},
           {"access_log", boolean(&Config::accessLog)},
       }},
      {"mint",
       {
           {"enabled", mintBool(&MintConfig::enabled)},
           {"command",
            [](Config& c, std::string_view v) -> std::string {
              std::vector<std::string> argv;
              std::string err;
              if (!splitCommand(v, argv, err)) return err;
              if (argv.empty()) return "expected a command";
              if (argv[0].empty() || argv[0].front() != '/')
                return "the program must be an absolute path (no PATH search, no shell)";
              // A placeholder is {name} with name of [a-z_]; other braces are literal.
              for (const auto& a : argv) {
                for (size_t i = a.find('{'); i != std::string::npos; i = a.find('{', i + 1)) {
                  size_t j = i + 1;
                  while (j < a.size() && (std::islower(static_cast<unsigned char>(a[j])) || a[j] == '_')) ++j;
                  if (j == i + 1 || j >= a.size() || a[j] != '}') continue;
                  std::string_view name = std::string_view(a).substr(i + 1, j - i - 1);
                  if (name != "os_user" && name != "home" && name != "port")
                    return "unknown placeholder {" + std::string(name) + "} (known: {os_user}, {home}, {port})";
                }
              }
              c.mint.command = std::move(argv);
              return "";
            }},
           {"timeout", mintDuration(&MintConfig::timeout, false)},
           {"max_output",
            [](Config& c, std::string_view v) -> std::string {
              auto n = parseSize(v);
              if (!n || *n < 64 || *n > (16u << 20)) return "expected a size between 64 and 16M";
              c.mint.maxOutput = *n;
              return "";
            }},
           {"credential_pointer",
            [](Config& c, std::string_view v) -> std::string {
              if (v.empty() || v.front() != '/') return "expected a JSON pointer such as /credential";
              c.mint.credentialPointer = std::string(v);
              return "";
            }},
           {"exchange_method",
            [](Config& c, std::string_view v) -> std::string {
              if (v != "POST" && v != "PUT" && v != "GET" && v != "PATCH") return "expected POST, PUT, PATCH or GET";
              c.mint.exchangeMethod = std::string(v);
              return "";
            }},
           {"exchange_path",
            [](Config& c, std::string_view v) -> std::string {
              if (!validPath(v)) return "expected an absolute path without spaces";
              c.mint.exchangePath = std::string(v);
              return "";
            }},
           {"exchange_body",
            [](Config& c, std::string_view v) -> std::string {
              if (v.find("{credential}") == std::string_view::npos) return "must contain {credential}";
              if (v.find_first_of("\r\n") != std::string_view::npos) return "must be one line";
              c.mint.exchangeBody = std::string(v);
              return "";
            }},
           {"exchange_content_type",
            [](Config& c, std::string_view v) -> std::string {
              if (v.empty() || v.size() > 128 || v.find_first_of("\r\n") != std::string_view::npos)
                return "expected a media type";
              c.mint.exchangeContentType = std::string(v);
              return "";
            }},
           {"cookie_name", mintCookieName(&MintConfig::cookieName)},
           {"session_check_path",
            [](Config& c, std::string_view v) -> std::string {
              if (!v.empty() && !validPath(v)) return "expected an absolute path, or empty";
              c.mint.sessionCheckPath = std::string(v);
              return "";
            }},
           {"secure_cookies", mintBool(&MintConfig::secureCookies)},
           {"bind_cookie_name", mintCookieName(&MintConfig::bindCookieName)},
           {"bind_key_file", mintKeyPath(&MintConfig::bindKeyFile, false)},
           {"bind_key_previous_file", mintKeyPath(&MintConfig::bindKeyPreviousFile, true)},
           {"bind_max_age", mintDuration(&MintConfig::bindMaxAge, false)},
           {"reuse_window", mintDuration(&MintConfig::reuseWindow, true)},
           {"rate_limit",
            [](Config& c, std::string_view v) -> std::string {
              auto n = parseUnsigned(v);
              if (!n || *n == 0 || *n > 100000) return "expected a number of mints, at least 1";
              c.mint.rateLimit = *n;
              return "";
            }},
           {"rate_limit_window", mintDuration(&MintConfig::rateLimitWindow, false)},
           {"public_origins",
            [](Config& c, std::string_view v) -> std::string {
              auto items = splitList(v);
              for (auto& o : items) {
                bool scheme = o.rfind("http://", 0) == 0 || o.rfind("https://", 0) == 0;
                size_t hostStart = o.find("://") + 3;
                if (!scheme || o.size() <= hostStart || o.find('/', hostStart) != std::string::npos)
                  return "invalid origin \"" + o + "\" (expected scheme://host[:port])";
                for (auto& ch : o) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
              }
              c.mint.publicOrigins = std::move(items);
              return "";
            }},
       }},
  };
  return s;
}

}  // namespace

bool splitCommand(std::string_view text, std::vector<std::string>& argv, std::string& error) {
  argv.clear();
  std::string cur;
  bool inWord = false;
  bool quoted = false;
  for (size_t i = 0; i < text.size(); ++i) {
    char ch = text[i];
    if (quoted) {
      if (ch == '\\' && i + 1 < text.size()) {
        cur.push_back(text[++i]);
      } else if (ch == '"') {
        quoted = false;
      } else {
        cur.push_back(ch);
      }
      continue;
    }
    if (ch == '"') {
      quoted = true;
      inWord = true;
    } else if (ch == ' ' || ch == '\t') {
      if (inWord) argv.push_back(std::move(cur));
      cur.clear();
      inWord = false;
    } else {
      if (static_cast<unsigned char>(ch) < 0x20) {
        error = "control character in command";
        return false;
      }
      cur.push_back(ch);
      inWord = true;
    }
  }
  if (quoted) {
    error = "unterminated quote in command";
    return false;
  }
  if (inWord) argv.push_back(std::move(cur));
  return true;
}

bool parseConfig(std::string_view text, const std::string& sourceName, Config& config,
                 std::vector<ConfigError>& errors) {
  size_t before = errors.size();
  KeyLines lines;
  // One file configures the whole host; usher-reconcile checks its own section.
  static const auto families = vmProfileFamilies(&Config::vm);
  applyIni(text, sourceName, schema(), {"reconcile"}, config, errors, &lines, &families);
  checkVmProfiles(config.vm, sourceName, errors);
  if (!config.adminListen.empty()) {
    auto admin = net::parseAddress(config.adminListen);
    for (const auto& l : config.listen)
      if (admin && admin->port() != 0 && l == config.adminListen)
        errors.push_back({sourceName, lines.count({"server", "admin_listen"}) ? lines[{"server", "admin_listen"}] : 0,
                          "server", "admin_listen", "must differ from listen"});
  }
  config.sourcePath = sourceName;
  return errors.size() == before;
}

bool loadConfig(const std::string& path, Config& config, std::vector<ConfigError>& errors) {
  return loadConfigFile(path, config, errors, parseConfig);
}

}  // namespace usher::dispatch
