// Schema-driven loading of one INI file shared by several programs: each
// program names its sections and keys with a setter each; sections that
// belong to another program are skipped; every error is reported with file,
// line, section and key, and the whole file is checked, not just up to the
// first problem.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/atomic_file.h"
#include "common/ini.h"

namespace usher {

struct ConfigError {
  std::string file;
  int line = 0;  // 0: not tied to a line
  std::string section;
  std::string key;
  std::string message;
  std::string str() const;  // "file:line: [section] key: message"
};

// A setter returns "" when the value was taken, else what is wrong with it.
template <class Config>
using KeySetter = std::function<std::string(Config&, std::string_view)>;
template <class Config>
using ConfigSchema = std::map<std::string, std::map<std::string, KeySetter<Config>>>;
// A family of sections sharing a prefix, such as [vm.gpu] and [vm.default]:
// the handler gets the rest of the section name ("gpu"), the key, the value
// and the line, and returns "" or what is wrong ("unknown key" included).
template <class Config>
using SectionFamilyHandler =
    std::function<std::string(Config&, std::string_view name, std::string_view key, std::string_view value, int line)>;
template <class Config>
using SectionFamilies = std::map<std::string, SectionFamilyHandler<Config>>;  // prefix -> handler

// Where each key was set: {section, key} -> line.
using KeyLines = std::map<std::pair<std::string, std::string>, int>;

// inih syntax errors ("line N: ...") as ConfigErrors; the entries parsed.
std::vector<IniEntry> readIniEntries(std::string_view text, const std::string& source,
                                     std::vector<ConfigError>& errors);

// Applies `text` to `config`. Returns false if any error was found.
template <class Config>
bool applyIni(std::string_view text, const std::string& source, const ConfigSchema<Config>& schema,
              const std::set<std::string>& foreignSections, Config& config, std::vector<ConfigError>& errors,
              KeyLines* lines = nullptr, const SectionFamilies<Config>* families = nullptr) {
  size_t before = errors.size();
  KeyLines seen;
  for (const auto& e : readIniEntries(text, source, errors)) {
    if (foreignSections.count(e.section)) continue;
    const SectionFamilyHandler<Config>* family = nullptr;
    std::string_view familyName;
    if (families) {
      for (const auto& [prefix, handler] : *families) {
        if (e.section.size() > prefix.size() && e.section.compare(0, prefix.size(), prefix) == 0) {
          family = &handler;
          familyName = std::string_view(e.section).substr(prefix.size());
        }
      }
    }
    if (family) {
      auto [it, fresh] = seen.emplace(std::make_pair(e.section, e.key), e.line);
      if (!fresh) {
        errors.push_back({source, e.line, e.section, e.key, "set twice (first on line " + std::to_string(it->second) + ")"});
        continue;
      }
      std::string problem = (*family)(config, familyName, e.key, trim(e.value), e.line);
      if (!problem.empty()) errors.push_back({source, e.line, e.section, e.key, problem});
      continue;
    }
    auto sec = schema.find(e.section);
    if (sec == schema.end()) {
      errors.push_back({source, e.line, e.section, e.key,
                        e.section.empty() ? "key outside any [section]" : "unknown section"});
      continue;
    }
    auto key = sec->second.find(e.key);
    if (key == sec->second.end()) {
      errors.push_back({source, e.line, e.section, e.key, "unknown key"});
      continue;
    }
    auto [it, fresh] = seen.emplace(std::make_pair(e.section, e.key), e.line);
    if (!fresh) {
      errors.push_back({source, e.line, e.section, e.key, "set twice (first on line " + std::to_string(it->second) + ")"});
      continue;
    }
    std::string problem = key->second(config, trim(e.value));
    if (!problem.empty()) errors.push_back({source, e.line, e.section, e.key, problem});
  }
  if (lines) *lines = std::move(seen);
  return errors.size() == before;
}

// Setters for keys both programs read from the shared [users] section.
template <class Config>
KeySetter<Config> absolutePathKey(std::string Config::*field) {
  return [=](Config& c, std::string_view v) -> std::string {
    if (v.empty() || v.front() != '/') return "expected an absolute path";
    c.*field = std::string(v);
    return "";
  };
}

template <class Config>
KeySetter<Config> minUidKey(uint32_t Config::*field) {
  return [=](Config& c, std::string_view v) -> std::string {
    auto n = parseUnsigned(v);
    if (!n || *n == 0 || *n > 0xfffffffeULL) return "expected a uid greater than 0";
    c.*field = static_cast<uint32_t>(*n);
    return "";
  };
}

// Reads `path` and hands its text to `parse(text, source, config, errors)`;
// a file that cannot be read is one error without a line.
template <class Config, class Parse>
bool loadConfigFile(const std::string& path, Config& config, std::vector<ConfigError>& errors, Parse parse) {
  std::string err;
  auto text = readFile(path, err);
  if (!text) {
    errors.push_back({path, 0, "", "", err});
    return false;
  }
  return parse(*text, path, config, errors);
}

}  // namespace usher
