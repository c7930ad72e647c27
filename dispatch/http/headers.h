// Header rules a proxy applies on both sides: hop-by-hop fields
// (RFC 9110 §7.6.1), identity-header spellings, case-insensitive names.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace usher::http {

bool iequals(std::string_view a, std::string_view b);

// Compares header names the way a sloppy upstream might fold them: case
// and '_' versus '-' ignored. Used to strip every spelling of the identity
// header (CVE-2025-64484: underscore variants slipped past oauth2-proxy).
bool sameNameLoosely(std::string_view a, std::string_view b);

// Names listed in Connection header values (lower-cased), which are
// hop-by-hop for this message.
std::vector<std::string> connectionTokens(const std::vector<std::string_view>& connectionValues);

// Hop-by-hop by definition, whatever Connection says.
bool isHopByHop(std::string_view name);

// True if `token` is in the comma-separated list `value` (case-insensitive).
bool hasToken(std::string_view value, std::string_view token);

}  // namespace usher::http
