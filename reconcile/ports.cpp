#include "reconcile/ports.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

namespace usher::reconcile {

PortBusy listenerProbe(const std::string& address) {
  sockaddr_storage base{};
  socklen_t len = 0;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&base);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&base);
  if (::inet_pton(AF_INET, address.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    len = sizeof(sockaddr_in);
  } else if (::inet_pton(AF_INET6, address.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    len = sizeof(sockaddr_in6);
  }
  return [base, len](uint16_t port) {
    if (len == 0) return false;  // config validated the address; nothing to probe
    sockaddr_storage addr = base;
    if (addr.ss_family == AF_INET) {
      reinterpret_cast<sockaddr_in*>(&addr)->sin_port = htons(port);
    } else {
      reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port = htons(port);
    }
    int fd = ::socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    bool busy = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0 && errno == EADDRINUSE;
    ::close(fd);
    return busy;
  };
}

bool PortAllocator::claim(uint16_t port, const std::string& owner) {
  auto [it, fresh] = holders_.try_emplace(port, owner);
  return fresh || it->second == owner;
}

const std::string* PortAllocator::holder(uint16_t port) const {
  auto it = holders_.find(port);
  return it == holders_.end() ? nullptr : &it->second;
}

std::optional<uint16_t> PortAllocator::allocate(const std::string& owner) {
  for (; next_ <= last_; ++next_) {
    auto port = static_cast<uint16_t>(next_);
    if (holders_.count(port) > 0) continue;
    if (busy_ && busy_(port)) continue;
    holders_.emplace(port, owner);
    ++next_;
    return port;
  }
  return std::nullopt;
}

}  // namespace usher::reconcile
