// libFuzzer target for usher-dispatch's config parser (parseConfig).
// Properties: no crash; deterministic (same answer, errors and settings
// twice); it succeeds exactly when it reports no error; every error's line
// is 0 (not tied to a line) or within the text; a config that parses keeps
// every limit inside the range its key allows.
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "dispatch/config.h"

namespace {

using usher::dispatch::Config;
using usher::dispatch::ConfigError;

[[noreturn]] void violated(const char* property, const std::string& detail = "") {
  std::fprintf(stderr, "PROPERTY VIOLATED: %s\n%s\n", property, detail.c_str());
  __builtin_trap();
}

void require(bool ok, const char* property, const std::string& detail = "") {
  if (!ok) violated(property, detail);
}

std::string describe(bool ok, const Config& c, const std::vector<ConfigError>& errors) {
  std::string s = ok ? "ok\n" : "failed\n";
  for (const auto& l : c.listen) s += "listen " + l + "\n";
  s += "admin " + c.adminListen + "\ntrusted " + c.trustedProxiesText + "\nidentity " + c.identityHeader +
       "\nforward " + c.forwardUserHeader + "\nmap " + c.mapFile + "\nstate " + c.stateFile + "\nminUid " +
       std::to_string(c.minUid) + " verify " + std::to_string(c.verifyOsUsers) + "\nlimits " +
       std::to_string(c.maxRequestLine) + " " + std::to_string(c.maxHeaderBytes) + " " +
       std::to_string(c.maxHeaders) + " " + std::to_string(c.maxBodyBytes) + " " +
       std::to_string(c.maxChunkLine) + " " + std::to_string(c.maxConnections) + "\ntimeouts " +
       std::to_string(c.clientHeader.count()) + " " + std::to_string(c.clientBody.count()) + " " +
       std::to_string(c.keepaliveIdle.count()) + " " + std::to_string(c.backendConnect.count()) + " " +
       std::to_string(c.backendResponse.count()) + " " + std::to_string(c.upgradedIdle.count()) + " " +
       std::to_string(c.shutdownDrain.count()) + " " + std::to_string(c.reloadDebounce.count()) +
       "\nupstream " + std::to_string(c.maxIdlePerBackend) + " " + std::to_string(c.upstreamIdle.count()) +
       " " + std::to_string(c.bufferHighWatermark) + "\nlog " + c.logLevel + " " +
       std::to_string(c.accessLog) + "\n";
  for (const auto& e : errors) s += "error " + e.str() + "\n";
  return s;
}

bool within(uint64_t v, uint64_t lo, uint64_t hi) {
  return v >= lo && v <= hi;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);

  Config config = usher::dispatch::defaultConfig();
  std::vector<ConfigError> errors;
  const bool ok = usher::dispatch::parseConfig(text, "fuzz.conf", config, errors);
  const std::string got = describe(ok, config, errors);

  Config again = usher::dispatch::defaultConfig();
  std::vector<ConfigError> errorsAgain;
  const bool okAgain = usher::dispatch::parseConfig(text, "fuzz.conf", again, errorsAgain);
  require(describe(okAgain, again, errorsAgain) == got, "parseConfig is deterministic", got);

  require(ok == errors.empty(), "succeeds exactly when there is no error", got);
  int lines = 0;
  for (char c : text) lines += c == '\n';
  if (!text.empty() && text.back() != '\n') ++lines;
  for (const auto& e : errors) {
    require(e.line >= 0 && e.line <= lines, "error line is 0 or within the text", got);
    require(!e.message.empty(), "error has a message", got);
    require(e.file == "fuzz.conf", "error names the file", got);
  }
  if (ok) {
    // The ranges dispatch/config.cpp allows; a parsed config must be usable.
    require(!config.listen.empty(), "at least one listen address", got);
    require(within(config.maxRequestLine, 64, 65536) && within(config.maxHeaderBytes, 256, 65536) &&
                within(config.maxHeaders, 1, 1000) && within(config.maxChunkLine, 16, 65536) &&
                within(config.maxConnections, 1, 1'000'000) && config.minUid > 0,
            "limits within their ranges", got);
    require(config.clientHeader.count() > 0 && config.clientBody.count() > 0 &&
                config.keepaliveIdle.count() > 0 && config.backendConnect.count() > 0 &&
                config.backendResponse.count() > 0 && config.upgradedIdle.count() > 0 &&
                config.upstreamIdle.count() > 0,
            "timeouts that must be positive are", got);
    require(config.sourcePath == "fuzz.conf", "source path recorded", got);
  }
  return 0;
}
