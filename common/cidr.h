// A set of IPv4 and IPv6 CIDR blocks, for `trusted_proxies`.
#pragma once

#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace usher {

class CidrSet {
public:
  // Parses a list separated by commas and/or whitespace: "127.0.0.1/32, ::1/128 10.0.0.0/8".
  // A bare address means a single host (/32 or /128). IPv4-mapped IPv6 peers
  // (::ffff:a.b.c.d) match IPv4 blocks. On error returns nullopt and sets `error`
  // naming the bad element.
  static std::optional<CidrSet> parse(std::string_view list, std::string& error);

  bool contains(const sockaddr* addr) const;
  bool empty() const { return blocks_.empty(); }
  size_t size() const { return blocks_.size(); }

private:
  struct Block {
    bool v6 = false;
    std::array<uint8_t, 16> addr{};  // network bytes; first 4 used for v4
    int prefix = 0;
  };
  std::vector<Block> blocks_;
};

}  // namespace usher
