#include <doctest.h>

#include "dispatch/http/request_parser.h"

using namespace usher::http;

TEST_CASE("absolute-form targets are accepted as RFC 9112 §3.2.2 requires, and become origin-form") {
  struct Case {
    const char* target;
    const char* host;  // Host field sent, or nullptr
    const char* wantTarget;
    const char* wantHost;
  };
  const Case cases[] = {
      {"http://example.test:8080/whoami?x=1", "other", "/whoami?x=1", "example.test:8080"},
      {"https://example.test", "example.test", "/", "example.test"},
      {"HTTP://example.test?q", "x", "/?q", "example.test"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.target);
    std::string req = std::string("GET ") + c.target + " HTTP/1.1\r\nHost: " + c.host + "\r\n\r\n";
    RequestParser p(Limits{});
    REQUIRE(p.parseHead(req) == RequestParser::Status::Complete);
    CHECK(p.head().target == c.wantTarget);
    REQUIRE(p.head().count("host") == 1);
    CHECK(p.head().find("host")->value == c.wantHost);
  }
  // RFC 9112 §3.2: exactly one Host in HTTP/1.1, absolute-form or not.
  for (const char* req : {"GET http://a/ HTTP/1.1\r\nX: y\r\n\r\n", "GET http://a/ HTTP/1.1\r\nHost: b\r\nHost: c\r\n\r\n"}) {
    CAPTURE(req);
    RequestParser p(Limits{});
    CHECK(p.parseHead(req) == RequestParser::Status::Error);
    CHECK(p.error().status == 400);
  }
  // HTTP/1.0 needs no Host; none is invented (the head stays within its limits).
  RequestParser ten(Limits{});
  REQUIRE(ten.parseHead("GET http://a/x HTTP/1.0\r\n\r\n") == RequestParser::Status::Complete);
  CHECK(ten.head().target == "/x");
  CHECK(ten.head().count("host") == 0);
  RequestParser bad(Limits{});
  CHECK(bad.parseHead("GET http://user@evil/ HTTP/1.1\r\nHost: x\r\n\r\n") == RequestParser::Status::Error);
  CHECK(bad.error().status == 400);
  RequestParser spaces(Limits{});
  CHECK(spaces.parseHead("GET http://a%20b/ HTTP/1.1\r\nHost: x\r\n\r\n") == RequestParser::Status::Error);
  RequestParser other(Limits{});
  CHECK(other.parseHead("GET ftp://x/ HTTP/1.1\r\nHost: x\r\n\r\n") == RequestParser::Status::Error);
}
