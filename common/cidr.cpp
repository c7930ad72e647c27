#include "common/cidr.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstring>

#include "common/ini.h"

namespace usher {

namespace {

// Echoes config text in an error without letting control bytes through.
std::string printable(std::string_view s) {
  constexpr size_t kMax = 64;
  std::string out = "\"";
  for (size_t i = 0; i < s.size() && i < kMax; ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    out.push_back(c >= 0x20 && c < 0x7f && c != '"' && c != '\\' ? static_cast<char>(c) : '?');
  }
  out.push_back('"');
  if (s.size() > kMax) out.append("...");
  return out;
}

constexpr uint8_t kV4MappedPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

// Compares the first `prefix` bits of two network-order addresses.
bool prefixMatches(const uint8_t* a, const uint8_t* b, int prefix) {
  int whole = prefix / 8;
  if (std::memcmp(a, b, static_cast<size_t>(whole)) != 0) return false;
  int rest = prefix % 8;
  if (rest == 0) return true;
  auto mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (a[whole] & mask) == (b[whole] & mask);
}

void maskHostBits(std::array<uint8_t, 16>& addr, int prefix, int bits) {
  for (int i = prefix; i < bits; ++i) {
    addr[static_cast<size_t>(i / 8)] &= static_cast<uint8_t>(~(0x80 >> (i % 8)));
  }
}

}  // namespace

std::optional<CidrSet> CidrSet::parse(std::string_view list, std::string& error) {
  CidrSet set;
  for (const std::string& element : splitList(list)) {
    auto fail = [&](const char* why) -> std::optional<CidrSet> {
      error = "bad CIDR " + printable(element) + ": " + why;
      return std::nullopt;
    };
    std::string_view addrText = element;
    std::optional<uint64_t> prefix;
    if (size_t slash = addrText.find('/'); slash != std::string_view::npos) {
      prefix = parseUnsigned(addrText.substr(slash + 1));
      if (!prefix) return fail("prefix length is not a number");
      addrText = addrText.substr(0, slash);
    }
    // "[::1]" as in URLs; brackets only make sense around IPv6.
    bool bracketed = addrText.size() >= 2 && addrText.front() == '[' && addrText.back() == ']';
    if (bracketed) addrText = addrText.substr(1, addrText.size() - 2);

    Block block;
    std::string addr(addrText);  // inet_pton needs a terminated string
    if (!bracketed && ::inet_pton(AF_INET, addr.c_str(), block.addr.data()) == 1) {
      block.v6 = false;
    } else if (::inet_pton(AF_INET6, addr.c_str(), block.addr.data()) == 1) {
      block.v6 = true;
    } else {
      return fail("not a numeric IPv4 or IPv6 address");
    }
    int bits = block.v6 ? 128 : 32;
    if (prefix && *prefix > static_cast<uint64_t>(bits)) {
      return fail(block.v6 ? "prefix length must be 0..128" : "prefix length must be 0..32");
    }
    block.prefix = prefix ? static_cast<int>(*prefix) : bits;
    // "10.1.2.3/8" is read as 10.0.0.0/8, as ip(8) does, rather than refused.
    maskHostBits(block.addr, block.prefix, bits);

    // ::ffff:a.b.c.d/96+ is an IPv4 block in disguise; storing it as one lets
    // plain IPv4 peers match it too.
    if (block.v6 && block.prefix >= 96 &&
        std::memcmp(block.addr.data(), kV4MappedPrefix, sizeof kV4MappedPrefix) == 0) {
      std::memmove(block.addr.data(), block.addr.data() + 12, 4);
      std::memset(block.addr.data() + 4, 0, 12);
      block.v6 = false;
      block.prefix -= 96;
    }
    set.blocks_.push_back(block);
  }
  return set;
}

bool CidrSet::contains(const sockaddr* addr) const {
  if (addr == nullptr) return false;
  const uint8_t* v4 = nullptr;
  const uint8_t* v6 = nullptr;
  if (addr->sa_family == AF_INET) {
    v4 = reinterpret_cast<const uint8_t*>(&reinterpret_cast<const sockaddr_in*>(addr)->sin_addr);
  } else if (addr->sa_family == AF_INET6) {
    v6 = reinterpret_cast<const sockaddr_in6*>(addr)->sin6_addr.s6_addr;
    // A dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d. Judge them as
    // the IPv4 peer they are, so that trust does not depend on how the
    // listener was bound (and "::/0" does not quietly cover all of IPv4).
    if (std::memcmp(v6, kV4MappedPrefix, sizeof kV4MappedPrefix) == 0) {
      v4 = v6 + 12;
      v6 = nullptr;
    }
  } else {
    return false;
  }
  for (const Block& block : blocks_) {
    const uint8_t* peer = block.v6 ? v6 : v4;
    if (peer != nullptr && prefixMatches(peer, block.addr.data(), block.prefix)) return true;
  }
  return false;
}

}  // namespace usher
