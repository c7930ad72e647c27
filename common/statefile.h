// The state file: OS user -> backend (DESIGN.md, "State file"). Written only
// by usher-reconcile, atomically; read by usher-dispatch.
//
// {
//   "version": 1,
//   "generated_at": "2026-11-23T15:00:00Z",
//   "users": {
//     "alice": {"kind": "unit", "address": "127.0.0.1", "port": 3773,
//               "unit": "t3-serve@alice.service"},
//     "carol": {"kind": "vm", "address": "192.168.122.10", "port": 8080,
//               "vm": {"name": "usher-carol", "profile": "default",
//                      "provider": "/usr/libexec/usher/usher-vm-libvirt",
//                      "uri": "qemu:///system"}}
//   },
//   "reserved": {
//     "bob": {"port": 3774, "since": "2026-11-20T09:00:00Z"}
//   }
// }
//
// "reserved" (optional) holds the ports of users removed from the map: their
// numbers are kept for them for a while (usher-reconcile's port_reservation)
// and given to nobody else. usher-dispatch never routes by it.
//
// Unknown keys are ignored (forward compatibility). A malformed user entry is
// reported and skipped; the others stay routable.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/usermap.h"

namespace usher {

struct Backend {
  std::string osUser;
  BackendKind kind = BackendKind::Unit;
  std::string address;  // numeric IPv4 or IPv6 literal, never a host name
  uint16_t port = 0;
  std::string unit;     // systemd unit, for kind == Unit (may be empty)
  nlohmann::json vm;    // VM facts, for kind == Vm (object or null)
};

// A port held for an OS user that is no longer mapped.
struct Reservation {
  std::string osUser;
  uint16_t port = 0;
  std::string since;  // ISO-8601 UTC, "2026-11-20T09:00:00Z"; checked by the reader
};

class State {
public:
  static constexpr int kVersion = 1;

  // Parses state JSON. nullopt when the document as a whole is unusable
  // (not JSON, not an object, wrong version); per-user problems go to `errors`.
  static std::optional<State> parse(std::string_view text, std::vector<std::string>& errors);
  static std::optional<State> load(const std::string& path, std::vector<std::string>& errors);

  nlohmann::json toJson() const;

  const Backend* find(std::string_view osUser) const;
  void put(Backend backend);
  bool erase(std::string_view osUser);
  const std::unordered_map<std::string, Backend>& backends() const { return backends_; }
  size_t size() const { return backends_.size(); }

  const Reservation* findReservation(std::string_view osUser) const;
  void reserve(Reservation reservation);
  bool unreserve(std::string_view osUser);
  const std::unordered_map<std::string, Reservation>& reservations() const { return reserved_; }

  std::string generatedAt;

private:
  std::unordered_map<std::string, Backend> backends_;
  std::unordered_map<std::string, Reservation> reserved_;
};

using StatePtr = std::shared_ptr<const State>;

}  // namespace usher
