// The per-user environment file the unit reads (EnvironmentFile=), e.g.
// /etc/t3-serve/alice.env holding `T3_PORT=3773`. Files written by hand or by
// the seed deployment may hold more lines; those are kept as they are.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace usher::reconcile {

// The value of T3_PORT (last assignment wins, as in systemd), accepting
// `T3_PORT=3773`, `T3_PORT="3773"`, `export`-less forms with blanks around.
// nullopt when absent or not a port in 1..65535.
std::optional<uint16_t> readT3Port(std::string_view text);

// `existing` with its T3_PORT line(s) replaced by one `T3_PORT=<port>` line
// (appended when there was none). An empty `existing` gives "T3_PORT=<port>\n".
std::string withT3Port(std::string_view existing, uint16_t port);

// Path of a user's env file in `dir`.
std::string envFilePath(const std::string& dir, std::string_view osUser);

}  // namespace usher::reconcile
