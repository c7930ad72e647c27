#include "dispatch/http/headers.h"

#include <doctest.h>

#include <string>
#include <string_view>
#include <vector>

using usher::http::connectionTokens;
using usher::http::hasToken;
using usher::http::iequals;
using usher::http::isHopByHop;
using usher::http::sameNameLoosely;

TEST_CASE("iequals: ASCII case-insensitive, lengths must match") {
  CHECK(iequals("Content-Length", "content-length"));
  CHECK(iequals("HOST", "host"));
  CHECK(iequals("", ""));
  CHECK_FALSE(iequals("Host", "Hos"));
  CHECK_FALSE(iequals("Host", "Hosts"));
  CHECK_FALSE(iequals("Host", "Hast"));
  CHECK_FALSE(iequals("X-A", "X_A"));  // only case is folded
  // Bytes above 0x7f compare as themselves.
  CHECK(iequals("caf\xe9", "CAF\xe9"));
  CHECK_FALSE(iequals("caf\xe9", "caf\xc9"));
}

TEST_CASE("sameNameLoosely: case and '_' versus '-' are ignored, nothing else") {
  // CVE-2025-64484: an underscore spelling of the identity header must be
  // recognised as the same header, or a client could smuggle it past.
  CHECK(sameNameLoosely("X_authentik_username", "X-Authentik-Username"));
  CHECK(sameNameLoosely("x-authentik-username", "X-AUTHENTIK-USERNAME"));
  CHECK(sameNameLoosely("X-authentik_username", "x_Authentik-Username"));
  CHECK(sameNameLoosely("X_A", "X_A"));
  CHECK_FALSE(sameNameLoosely("X-Authentik-Username", "X-Authentik-Usernam"));
  CHECK_FALSE(sameNameLoosely("X-Authentik-Username", "X-Authentik-Usernamex"));
  CHECK_FALSE(sameNameLoosely("X-Authentik-User", "X-Authentik-Username"));
  CHECK_FALSE(sameNameLoosely("X.authentik.username", "X-authentik-username"));
  CHECK_FALSE(sameNameLoosely("X authentik username", "X-authentik-username"));
  CHECK_FALSE(sameNameLoosely("XAuthentikUsername", "X-Authentik-Username"));
}

TEST_CASE("connectionTokens: every listed name, lower-cased, across fields") {
  using V = std::vector<std::string>;
  CHECK(connectionTokens({}) == V{});
  CHECK(connectionTokens({"close"}) == V{"close"});
  CHECK(connectionTokens({"Keep-Alive, X-Foo", " Upgrade ,,\tTE\t"}) ==
        V{"keep-alive", "x-foo", "upgrade", "te"});
  CHECK(connectionTokens({"", " , ,"}) == V{});
  CHECK(connectionTokens({"X-Secret-Header"}) == V{"x-secret-header"});
}

TEST_CASE("isHopByHop: the RFC 9110 §7.6.1 fields and the legacy ones, any case") {
  for (const char* name : {"Connection", "keep-alive", "Proxy-Connection", "TE", "Trailer",
                           "Transfer-Encoding", "UPGRADE", "Proxy-Authenticate", "Proxy-Authorization"}) {
    CAPTURE(name);
    CHECK(isHopByHop(name));
  }
  for (const char* name : {"Content-Length", "Host", "X-Forwarded-For", "Trailers", "Keep-Alives",
                           "Upgrade-Insecure-Requests", "Authorization", ""}) {
    CAPTURE(name);
    CHECK_FALSE(isHopByHop(name));
  }
}

TEST_CASE("hasToken: whole comma-separated elements, case-insensitive, OWS trimmed") {
  CHECK(hasToken("Upgrade", "upgrade"));
  CHECK(hasToken("keep-alive, Upgrade", "upgrade"));
  CHECK(hasToken("keep-alive,Upgrade", "UPGRADE"));
  CHECK(hasToken(" \tUpgrade\t , close", "upgrade"));
  CHECK(hasToken("a,,b", "b"));
  CHECK_FALSE(hasToken("upgrade2", "upgrade"));
  CHECK_FALSE(hasToken("keep-alive", "alive"));
  CHECK_FALSE(hasToken("up grade", "upgrade"));
  CHECK_FALSE(hasToken("", "upgrade"));
  CHECK_FALSE(hasToken("close", "upgrade"));
}
