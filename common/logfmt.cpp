#include "common/logfmt.h"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdio>

namespace usher {

namespace {

bool plainByte(unsigned char c) {
  return c > 0x20 && c < 0x7f && c != '"' && c != '\\' && c != '=';
}

}  // namespace

void appendLogfmtValue(std::string& out, std::string_view value) {
  bool plain = !value.empty();
  for (unsigned char c : value) {
    if (!plainByte(c)) {
      plain = false;
      break;
    }
  }
  if (plain) {
    out.append(value);
    return;
  }
  out.push_back('"');
  for (unsigned char c : value) {
    switch (c) {
      case '"': out.append("\\\""); break;
      case '\\': out.append("\\\\"); break;
      case '\n': out.append("\\n"); break;
      case '\r': out.append("\\r"); break;
      case '\t': out.append("\\t"); break;
      default:
        if (c < 0x20 || c >= 0x7f) {
          char buf[5];
          std::snprintf(buf, sizeof buf, "\\x%02x", c);
          out.append(buf);
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  out.push_back('"');
}

LogLine& LogLine::kv(std::string_view key, std::string_view value) {
  if (!line_.empty()) line_.push_back(' ');
  line_.append(key);  // keys are ours, never from input
  line_.push_back('=');
  appendLogfmtValue(line_, value);
  return *this;
}

LogLine& LogLine::kv(std::string_view key, int64_t value) {
  return kv(key, std::string_view(std::to_string(value)));
}

LogLine& LogLine::kv(std::string_view key, uint64_t value) {
  return kv(key, std::string_view(std::to_string(value)));
}

LogLine& LogLine::kv(std::string_view key, double value) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f", value);
  return kv(key, std::string_view(buf));
}

bool setupLogging(std::string_view level) {
  auto lvl = spdlog::level::from_str(std::string(level));
  if (lvl == spdlog::level::off && level != "off") return false;
  // Not stderr_logger_st(): that registers the name and throws when logging
  // is set up again (a reload); set_default_logger replaces it instead.
  auto logger = std::make_shared<spdlog::logger>(
      "usher", std::make_shared<spdlog::sinks::stderr_sink_st>());
  logger->set_pattern("ts=%Y-%m-%dT%H:%M:%S.%eZ level=%l %v", spdlog::pattern_time_type::utc);
  logger->set_level(lvl);
  logger->flush_on(spdlog::level::trace);
  spdlog::set_default_logger(logger);
  return true;
}

}  // namespace usher
