#include "common/cidr.h"

#include <arpa/inet.h>
#include <doctest.h>
#include <netinet/in.h>
#include <sys/un.h>

#include <string>

using usher::CidrSet;

namespace {

// A peer address as accept() would hand it over.
sockaddr_storage peer(const std::string& text) {
  sockaddr_storage ss{};
  auto* v4 = reinterpret_cast<sockaddr_in*>(&ss);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&ss);
  if (::inet_pton(AF_INET, text.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(41000);
  } else {
    REQUIRE(::inet_pton(AF_INET6, text.c_str(), &v6->sin6_addr) == 1);
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(41000);
  }
  return ss;
}

CidrSet parsed(std::string_view list) {
  std::string error;
  auto set = CidrSet::parse(list, error);
  CAPTURE(error);
  REQUIRE(set.has_value());
  CHECK(error.empty());
  return *set;
}

bool has(const CidrSet& set, const std::string& addr) {
  auto ss = peer(addr);
  return set.contains(reinterpret_cast<const sockaddr*>(&ss));
}

std::string parseError(std::string_view list) {
  std::string error = "untouched";
  auto set = CidrSet::parse(list, error);
  CHECK_FALSE(set.has_value());
  return error;
}

}  // namespace

TEST_CASE("CidrSet: the header's example list") {
  auto set = parsed("127.0.0.1/32, ::1/128 10.0.0.0/8");
  CHECK(set.size() == 3);
  CHECK(has(set, "127.0.0.1"));
  CHECK_FALSE(has(set, "127.0.0.2"));
  CHECK(has(set, "::1"));
  CHECK_FALSE(has(set, "::2"));
  CHECK(has(set, "10.0.0.0"));
  CHECK(has(set, "10.255.255.255"));
  CHECK_FALSE(has(set, "11.0.0.0"));
  CHECK_FALSE(has(set, "9.255.255.255"));
}

TEST_CASE("CidrSet: separators, bare hosts and brackets") {
  auto set = parsed("  192.168.1.7 ,\t fd00::5\n,, [fe80::1] [2001:db8::]/32 ");
  CHECK(set.size() == 4);
  CHECK(has(set, "192.168.1.7"));
  CHECK_FALSE(has(set, "192.168.1.8"));
  CHECK(has(set, "fd00::5"));
  CHECK_FALSE(has(set, "fd00::6"));
  CHECK(has(set, "fe80::1"));
  CHECK(has(set, "2001:db8:ffff::1"));
  CHECK_FALSE(has(set, "2001:db9::1"));
}

TEST_CASE("CidrSet: prefix lengths that do not fall on a byte") {
  auto set = parsed("172.16.0.0/12, 2001:db8:8000::/33");
  CHECK(has(set, "172.16.0.1"));
  CHECK(has(set, "172.31.255.255"));
  CHECK_FALSE(has(set, "172.32.0.0"));
  CHECK_FALSE(has(set, "172.15.255.255"));
  CHECK(has(set, "2001:db8:8000::1"));
  CHECK(has(set, "2001:db8:ffff:ffff::1"));
  CHECK_FALSE(has(set, "2001:db8:7fff:ffff::1"));
}

TEST_CASE("CidrSet: /0 and host bits beyond the prefix") {
  auto all4 = parsed("0.0.0.0/0");
  CHECK(has(all4, "1.2.3.4"));
  CHECK(has(all4, "255.255.255.255"));
  CHECK_FALSE(has(all4, "::1"));  // all of IPv4 is not IPv6

  auto all6 = parsed("::/0");
  CHECK(has(all6, "2001:db8::1"));
  CHECK_FALSE(has(all6, "1.2.3.4"));
  // A v4-mapped peer is an IPv4 peer: trust does not depend on how the
  // listener was bound.
  CHECK_FALSE(has(all6, "::ffff:1.2.3.4"));

  auto sloppy = parsed("10.1.2.3/8, 2001:db8::dead:beef/32");
  CHECK(has(sloppy, "10.200.0.1"));
  CHECK(has(sloppy, "2001:db8:1::1"));
}

TEST_CASE("CidrSet: IPv4-mapped IPv6 peers match IPv4 blocks") {
  auto set = parsed("10.0.0.0/8, 127.0.0.1");
  CHECK(has(set, "::ffff:10.1.2.3"));
  CHECK(has(set, "::ffff:127.0.0.1"));
  CHECK_FALSE(has(set, "::ffff:127.0.0.2"));
  CHECK_FALSE(has(set, "::ffff:11.0.0.1"));
  // Only the ::ffff:0:0/96 prefix means "mapped"; the IPv4-compatible and
  // NAT64 forms are other IPv6 addresses.
  CHECK_FALSE(has(set, "::10.1.2.3"));
  CHECK_FALSE(has(set, "64:ff9b::10.1.2.3"));

  SUBCASE("a block written in mapped form is an IPv4 block") {
    auto mapped = parsed("::ffff:192.168.0.0/112");
    CHECK(has(mapped, "192.168.4.5"));
    CHECK(has(mapped, "::ffff:192.168.4.5"));
    CHECK_FALSE(has(mapped, "192.169.0.1"));
    auto host = parsed("::ffff:10.0.0.1");
    CHECK(has(host, "10.0.0.1"));
    CHECK_FALSE(has(host, "10.0.0.2"));
  }
}

TEST_CASE("CidrSet: the empty list trusts nobody") {
  for (const char* list : {"", "   ", ", ,\t"}) {
    CAPTURE(list);
    auto set = parsed(list);
    CHECK(set.empty());
    CHECK_FALSE(has(set, "127.0.0.1"));
    CHECK_FALSE(has(set, "::1"));
  }
}

TEST_CASE("CidrSet: other address families and null never match") {
  auto set = parsed("0.0.0.0/0, ::/0");
  CHECK_FALSE(set.contains(nullptr));
  sockaddr_un un{};
  un.sun_family = AF_UNIX;
  CHECK_FALSE(set.contains(reinterpret_cast<const sockaddr*>(&un)));
  sockaddr_storage unspec{};
  CHECK_FALSE(set.contains(reinterpret_cast<const sockaddr*>(&unspec)));
}

TEST_CASE("CidrSet: a bad element is named and the whole list refused") {
  CHECK(parseError("10.0.0.0/8, 10.0.0.0/33") ==
        "bad CIDR \"10.0.0.0/33\": prefix length must be 0..32");
  CHECK(parseError("::1/129") == "bad CIDR \"::1/129\": prefix length must be 0..128");
  CHECK(parseError("10.0.0.0/") == "bad CIDR \"10.0.0.0/\": prefix length is not a number");
  CHECK(parseError("10.0.0.0/-1") == "bad CIDR \"10.0.0.0/-1\": prefix length is not a number");
  CHECK(parseError("10.0.0.0/+8") == "bad CIDR \"10.0.0.0/+8\": prefix length is not a number");
  CHECK(parseError("10.0.0.0/8/8") == "bad CIDR \"10.0.0.0/8/8\": prefix length is not a number");
  CHECK(parseError("10.0.0.0/99999999999999999999999") ==
        "bad CIDR \"10.0.0.0/99999999999999999999999\": prefix length is not a number");
  const std::string notAddr = "\": not a numeric IPv4 or IPv6 address";
  CHECK(parseError("localhost") == "bad CIDR \"localhost" + notAddr);
  CHECK(parseError("10.0.0") == "bad CIDR \"10.0.0" + notAddr);
  CHECK(parseError("10.0.0.256/8") == "bad CIDR \"10.0.0.256/8" + notAddr);
  CHECK(parseError("/8") == "bad CIDR \"/8" + notAddr);
  CHECK(parseError("[10.0.0.1]") == "bad CIDR \"[10.0.0.1]" + notAddr);
  CHECK(parseError("[::1") == "bad CIDR \"[::1" + notAddr);
  CHECK(parseError("fe80::1%eth0") == "bad CIDR \"fe80::1%eth0" + notAddr);
  // Echoed text is printable and bounded.
  CHECK(parseError("\x01\x7f" + std::string(100, 'a')) ==
        "bad CIDR \"??" + std::string(62, 'a') + "\"...: not a numeric IPv4 or IPv6 address");
}
