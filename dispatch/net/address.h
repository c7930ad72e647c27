// Numeric socket addresses: "127.0.0.1:8080", "[::1]:8080". No name lookups:
// a proxy that resolves names at request time can be steered by DNS.
#pragma once

#include <sys/socket.h>

#include <optional>
#include <string>
#include <string_view>

namespace usher::net {

struct Address {
  sockaddr_storage storage{};
  socklen_t length = 0;

  const sockaddr* sa() const { return reinterpret_cast<const sockaddr*>(&storage); }
  uint16_t port() const;
  std::string str() const;  // "127.0.0.1:8080" / "[::1]:8080"
  std::string ip() const;   // without port
};

std::optional<Address> parseAddress(std::string_view hostPort);
std::optional<Address> makeAddress(std::string_view ip, uint16_t port);
Address fromSockaddr(const sockaddr* sa, socklen_t len);

}  // namespace usher::net
