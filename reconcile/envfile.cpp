#include "reconcile/envfile.h"

#include <vector>

#include "common/ini.h"

namespace usher::reconcile {

namespace {

constexpr std::string_view kKey = "T3_PORT";

// The value when `line` assigns T3_PORT, else nullopt.
std::optional<std::string_view> t3PortValue(std::string_view line) {
  line = trim(line);
  if (!line.starts_with(kKey)) return std::nullopt;
  std::string_view rest = trim(line.substr(kKey.size()));
  if (rest.empty() || rest.front() != '=') return std::nullopt;
  return trim(rest.substr(1));
}

std::vector<std::string_view> lines(std::string_view text) {
  std::vector<std::string_view> out;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    out.push_back(text.substr(0, nl));
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
  }
  return out;
}

}  // namespace

std::optional<uint16_t> readT3Port(std::string_view text) {
  std::optional<uint16_t> port;
  for (std::string_view line : lines(text)) {
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    auto value = t3PortValue(line);
    if (!value) continue;
    std::string_view v = *value;
    if (v.size() >= 2 && (v.front() == '"' || v.front() == '\'') && v.back() == v.front()) {
      v = v.substr(1, v.size() - 2);
    }
    auto n = parseUnsigned(v);
    port = n && *n >= 1 && *n <= 65535 ? std::optional<uint16_t>(static_cast<uint16_t>(*n))
                                       : std::nullopt;
  }
  return port;
}

std::string withT3Port(std::string_view existing, uint16_t port) {
  std::string assignment = std::string(kKey) + "=" + std::to_string(port) + "\n";
  std::string out;
  bool placed = false;
  for (std::string_view line : lines(existing)) {
    if (t3PortValue(line)) {
      if (!placed) out += assignment;
      placed = true;
      continue;
    }
    out.append(line);
    out.push_back('\n');
  }
  if (!placed) out += assignment;
  return out;
}

std::string envFilePath(const std::string& dir, std::string_view osUser) {
  std::string path = dir;
  if (path.empty() || path.back() != '/') path.push_back('/');
  path.append(osUser);
  path.append(".env");
  return path;
}

}  // namespace usher::reconcile
