// Line-numbered INI reading on top of inih, and the value syntaxes every
// Usher config shares (durations, sizes, booleans, lists).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace usher {

struct IniEntry {
  std::string section;
  std::string key;
  std::string value;
  int line = 0;
};

// Parses INI text into entries in file order. Syntax errors (a line that is
// neither a section, a key=value nor a comment) are appended to `errors` as
// "line N: ...". `;` and `#` start comments at the start of a line; `;` after
// whitespace starts an inline comment.
std::vector<IniEntry> parseIni(std::string_view text, std::vector<std::string>& errors);

// "10", "10s", "250ms", "2m", "1h", "30d"; a bare number is seconds. Must be >= 0.
std::optional<std::chrono::milliseconds> parseDuration(std::string_view s);
// "4096", "64k", "1M", "2g" (binary multiples). Must be >= 0.
std::optional<uint64_t> parseSize(std::string_view s);
// yes/no, true/false, on/off, 1/0 (case-insensitive).
std::optional<bool> parseBool(std::string_view s);
// Plain non-negative decimal integer, no sign, no spaces.
std::optional<uint64_t> parseUnsigned(std::string_view s);
// Splits on commas and/or whitespace, dropping empty elements.
std::vector<std::string> splitList(std::string_view s);

std::string_view trim(std::string_view s);

}  // namespace usher
