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
      {"http://example.test?q", nullptr, "/?q", "example.test"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.target);
    std::string req = std::string("GET ") + c.target + " HTTP/1.1\r\n";
    if (c.host) req += std::string("Host: ") + c.host + "\r\nHost: " + c.host + "-again\r\n";
    req += "\r\n";
    RequestParser p(Limits{});
    REQUIRE(p.parseHead(req) == RequestParser::Status::Complete);
    CHECK(p.head().target == c.wantTarget);
    REQUIRE(p.head().count("host") == 1);
    CHECK(p.head().find("host")->value == c.wantHost);
  }
  RequestParser bad(Limits{});
  CHECK(bad.parseHead("GET http://user@evil/ HTTP/1.1\r\nHost: x\r\n\r\n") == RequestParser::Status::Error);
  CHECK(bad.error().status == 400);
  RequestParser other(Limits{});
  CHECK(other.parseHead("GET ftp://x/ HTTP/1.1\r\nHost: x\r\n\r\n") == RequestParser::Status::Error);
}
