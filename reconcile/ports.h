// Sticky port assignment (DESIGN.md, "State file"): a port, once given to an
// OS user, is theirs; new users get the lowest free port of the range that
// nobody holds and no process already listens on.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

namespace usher::reconcile {

// True when some process already listens on `port` (so it cannot be handed out).
using PortBusy = std::function<bool(uint16_t port)>;

// Probes by bind() on `address` with SO_REUSEADDR: that fails only when a
// socket is bound there in a way that conflicts (a listener on the address or
// on the wildcard), not because of connections in TIME_WAIT.
PortBusy listenerProbe(const std::string& address);

class PortAllocator {
public:
  PortAllocator(uint16_t first, uint16_t last, PortBusy busy)
      : first_(first), last_(last), next_(first), busy_(std::move(busy)) {}

  // Records that `owner` holds `port` (any port, in the range or not). False
  // when someone else already holds it.
  bool claim(uint16_t port, const std::string& owner);
  // Who holds `port`, if anyone.
  const std::string* holder(uint16_t port) const;
  // The lowest port of the range that is not held and not busy, now held by
  // `owner`; nullopt when the range is exhausted. Claim every existing holder
  // before the first allocate(): allocation never looks back below a port it
  // has passed.
  std::optional<uint16_t> allocate(const std::string& owner);

private:
  uint16_t first_;
  uint16_t last_;
  uint32_t next_;  // every port below this in the range is held or busy
  PortBusy busy_;
  std::unordered_map<uint16_t, std::string> holders_;
};

}  // namespace usher::reconcile
