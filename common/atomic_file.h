// Replacing a file so that a crash at any moment leaves either the old or the
// new content, never a torn one: write a temp file in the same directory,
// fsync it, rename it over the target, fsync the directory.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <string_view>

namespace usher {

// Returns false and sets `error` (with errno text) on failure; the target is
// then untouched and the temp file removed.
bool writeFileAtomically(const std::string& path, std::string_view content, mode_t mode,
                         std::string& error);

// Reads a whole file. nullopt and `error` set when it cannot be read.
std::optional<std::string> readFile(const std::string& path, std::string& error);

}  // namespace usher
