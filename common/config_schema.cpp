#include "common/config_schema.h"

#include <cstdlib>

namespace usher {

std::string ConfigError::str() const {
  std::string s = file.empty() ? "<config>" : file;
  if (line > 0) s += ":" + std::to_string(line);
  s += ": ";
  if (!key.empty()) s += "[" + section + "] " + key + ": ";
  else if (!section.empty()) s += "[" + section + "]: ";
  return s + message;
}

std::vector<IniEntry> readIniEntries(std::string_view text, const std::string& source,
                                     std::vector<ConfigError>& errors) {
  std::vector<std::string> syntax;
  auto entries = parseIni(text, syntax);
  for (const auto& s : syntax) {
    // parseIni reports "line N: message".
    int line = 0;
    std::string msg = s;
    if (s.rfind("line ", 0) == 0) {
      line = std::atoi(s.c_str() + 5);
      auto colon = s.find(": ");
      if (colon != std::string::npos) msg = s.substr(colon + 2);
    }
    errors.push_back({source, line, "", "", msg});
  }
  return entries;
}

}  // namespace usher
