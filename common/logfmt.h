// logfmt lines (key=value pairs) whose values are escaped so that no input,
// however hostile, can forge a line or a field: control bytes, quotes,
// backslashes, '=' and non-ASCII bytes are escaped, and any value that is not
// a plain token is quoted.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace usher {

// Appends `value` to `out` in logfmt form (quoted and escaped when needed).
void appendLogfmtValue(std::string& out, std::string_view value);

class LogLine {
public:
  explicit LogLine(std::string_view event) { kv("event", event); }

  LogLine& kv(std::string_view key, std::string_view value);
  LogLine& kv(std::string_view key, const char* value) { return kv(key, std::string_view(value)); }
  LogLine& kv(std::string_view key, const std::string& value) { return kv(key, std::string_view(value)); }
  LogLine& kv(std::string_view key, int64_t value);
  LogLine& kv(std::string_view key, uint64_t value);
  LogLine& kv(std::string_view key, int value) { return kv(key, static_cast<int64_t>(value)); }
  LogLine& kv(std::string_view key, unsigned value) { return kv(key, static_cast<uint64_t>(value)); }
  LogLine& kv(std::string_view key, long long value) { return kv(key, static_cast<int64_t>(value)); }
  LogLine& kv(std::string_view key, unsigned long long value) {
    return kv(key, static_cast<uint64_t>(value));
  }
  // No `long`/`unsigned long` overloads: on LP64 Linux they are int64_t and
  // uint64_t themselves, and declaring them again does not compile.
  LogLine& kv(std::string_view key, double value);
  LogLine& kv(std::string_view key, bool value) { return kv(key, value ? "true" : "false"); }

  const std::string& str() const { return line_; }

private:
  std::string line_;
};

// Sets up spdlog's default logger: stderr, one logfmt line per record,
// `ts=<UTC ISO-8601> level=<level> <fields>`. `level` is trace..critical|off.
bool setupLogging(std::string_view level);

}  // namespace usher
