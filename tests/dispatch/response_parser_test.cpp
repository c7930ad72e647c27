#include "dispatch/http/response_parser.h"

#include <doctest.h>

#include <string>
#include <string_view>
#include <vector>

using usher::http::ResponseFraming;
using usher::http::ResponseHead;
using usher::http::ResponseParser;

// doctest prints operands with an unqualified toString(), found by ADL here.
namespace usher::http {
[[maybe_unused]] static doctest::String toString(ResponseFraming f) {
  switch (f) {
    case ResponseFraming::None:
      return "None";
    case ResponseFraming::Length:
      return "Length";
    case ResponseFraming::Chunked:
      return "Chunked";
    case ResponseFraming::UntilClose:
      return "UntilClose";
  }
  return "?";
}
}  // namespace usher::http

namespace {

// Records every callback, and behaves as the client connection does: after
// an interim (1xx, not 101) response it resets the parser for the final one.
struct Backend {
  std::vector<ResponseHead> heads;
  std::string body;
  std::string completed;  // head().status at each onComplete, space-separated
  bool refuseHead = false;
  bool headRequest = false;
  ResponseParser parser;

  explicit Backend(size_t maxHeaders = 100)
      : parser(maxHeaders, ResponseParser::Callbacks{
                               [this](ResponseHead& h) {
                                 heads.push_back(h);
                                 return !refuseHead;
                               },
                               [this](std::string_view d) { body.append(d); },
                               [this] {
                                 int status = parser.head().status;
                                 completed += (completed.empty() ? "" : " ") + std::to_string(status);
                                 if (status / 100 == 1 && status != 101) parser.reset(headRequest);
                               },
                           }) {}

  void startHeadRequest() {
    headRequest = true;
    parser.reset(true);
  }

  // Feeds `wire` in reads of at most `piece` bytes until the parser stops
  // taking bytes (complete, failed, or waiting for more). Returns the bytes
  // consumed.
  size_t feed(std::string_view wire, size_t piece) {
    size_t consumed = 0;
    while (consumed < wire.size()) {
      size_t n = parser.feed(wire.substr(consumed, piece));
      consumed += n;
      if (n == 0 || parser.failed()) break;
    }
    return consumed;
  }
};

const std::vector<size_t> kPieces = {1, 2, 3, 7, 1 << 20};

}  // namespace

TEST_CASE("response parser: Content-Length, every field exact, stops at the end of the message") {
  const std::string response =
      "HTTP/1.1 200 OK\r\n"
      "Content-Length: 5\r\n"
      "X-Trailing-Space: v \t\r\n"
      "Set-Cookie: a=1\r\n"
      "Set-Cookie: b=2\r\n"
      "\r\n"
      "hello";
  const std::string next = "HTTP/1.1 204 No Content\r\n\r\n";
  for (size_t piece : kPieces) {
    CAPTURE(piece);
    Backend b;
    CHECK(b.feed(response + next, piece) == response.size());
    CHECK_FALSE(b.parser.failed());
    CHECK(b.parser.headSeen());
    CHECK(b.parser.complete());
    REQUIRE(b.heads.size() == 1);
    const ResponseHead& h = b.heads[0];
    CHECK(h.status == 200);
    CHECK(h.reason == "OK");
    CHECK(h.versionMinor == 1);
    CHECK(h.framing == ResponseFraming::Length);
    CHECK(h.contentLength == 5);
    CHECK(h.keepAlive);
    CHECK_FALSE(h.upgrade);
    REQUIRE(h.headers.size() == 4);
    CHECK(h.headers[0].name == "Content-Length");
    CHECK(h.headers[0].value == "5");
    CHECK(h.headers[1].name == "X-Trailing-Space");
    CHECK(h.headers[1].value == "v");
    CHECK(h.headers[2].value == "a=1");
    CHECK(h.headers[3].value == "b=2");
    CHECK(b.body == "hello");
    CHECK(b.completed == "200");
    // Complete: nothing more is taken until reset.
    CHECK(b.parser.feed(next) == 0);
  }
}

TEST_CASE("response parser: chunked body decoded in any split") {
  const std::string response =
      "HTTP/1.1 200 OK\r\n"
      "Transfer-Encoding: chunked\r\n"
      "\r\n"
      "5\r\nhello\r\n"
      "6;ext=1\r\n world\r\n"
      "0\r\n"
      "X-Trailer: t\r\n"
      "\r\n";
  for (size_t piece : kPieces) {
    CAPTURE(piece);
    Backend b;
    CHECK(b.feed(response + "HTTP/1.1 200 OK\r\n", piece) == response.size());
    CHECK_FALSE(b.parser.failed());
    CHECK(b.parser.complete());
    REQUIRE(b.heads.size() == 1);
    CHECK(b.heads[0].framing == ResponseFraming::Chunked);
    CHECK(b.heads[0].keepAlive);
    // Trailer fields are not merged into the head (RFC 9110 §6.5.1).
    CHECK(b.parser.head().headers.size() == 1);
    CHECK(b.body == "hello world");
    CHECK(b.completed == "200");
  }
}

TEST_CASE("response parser: a body delimited by closing ends with feedEof") {
  struct Case {
    std::string what;
    std::string wire;
  };
  const Case cases[] = {
      {"no framing", "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nsome data"},
      {"HTTP/1.0 without framing", "HTTP/1.0 200 OK\r\n\r\nsome data"},
      // RFC 9112 §6.3: a transfer coding other than chunked last means read until close.
      {"Transfer-Encoding other than chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nsome data"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.what);
    for (size_t piece : kPieces) {
      CAPTURE(piece);
      Backend b;
      CHECK(b.feed(c.wire, piece) == c.wire.size());
      REQUIRE(b.heads.size() == 1);
      CHECK(b.heads[0].framing == ResponseFraming::UntilClose);
      CHECK_FALSE(b.heads[0].keepAlive);  // the connection cannot be reused
      CHECK_FALSE(b.parser.complete());
      CHECK(b.completed.empty());
      b.parser.feedEof();
      CHECK_FALSE(b.parser.failed());
      CHECK(b.parser.complete());
      CHECK(b.body == "some data");
      CHECK(b.completed == "200");
    }
  }
}

TEST_CASE("response parser: the backend closing mid-response is an error") {
  SUBCASE("inside a Content-Length body") {
    Backend b;
    b.feed("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf", 64);
    b.parser.feedEof();
    CHECK(b.parser.failed());
    CHECK(b.parser.error() == "backend closed the connection mid-response");
    CHECK(b.completed.empty());
  }
  SUBCASE("inside a chunked body") {
    Backend b;
    b.feed("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", 64);
    b.parser.feedEof();
    CHECK(b.parser.failed());
    CHECK(b.completed.empty());
  }
  SUBCASE("inside the head") {
    Backend b;
    b.feed("HTTP/1.1 200 OK\r\nContent-Le", 64);
    b.parser.feedEof();
    CHECK(b.parser.failed());
    CHECK(b.heads.empty());
    CHECK(b.completed.empty());
  }
}

TEST_CASE("response parser: responses without a body") {
  struct Case {
    std::string what;
    std::string wire;
    bool headRequest;
    int status;
  };
  const Case cases[] = {
      // RFC 9110 §9.3.2: Content-Length in a HEAD response is metadata.
      {"HEAD with Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true, 200},
      {"HEAD with chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", true, 200},
      {"HEAD without framing", "HTTP/1.1 200 OK\r\n\r\n", true, 200},
      {"204", "HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n", false, 204},
      {"204 with Content-Length: 0", "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", false, 204},
      // RFC 9110 §15.3.5: a 204 ends at its head, whatever framing it names.
      {"204 with Transfer-Encoding", "HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n", false,
       204},
      {"304", "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n", false, 304},
      // RFC 9110 §8.6: a 304's Content-Length is that of the representation
      // it did not send; no body follows.
      {"304 with Content-Length", "HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n", false, 304},
  };
  const std::string next = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
  for (const auto& c : cases) {
    CAPTURE(c.what);
    for (size_t piece : kPieces) {
      CAPTURE(piece);
      Backend b;
      if (c.headRequest) b.startHeadRequest();
      CHECK(b.feed(c.wire + next, piece) == c.wire.size());
      CHECK_FALSE(b.parser.failed());
      CHECK(b.parser.complete());
      REQUIRE(b.heads.size() == 1);
      CHECK(b.heads[0].status == c.status);
      CHECK(b.heads[0].framing == ResponseFraming::None);
      CHECK(b.body.empty());
      CHECK(b.completed == std::to_string(c.status));
    }
  }
}

TEST_CASE("response parser: 100 Continue then the final response in one buffer") {
  const std::string wire =
      "HTTP/1.1 100 Continue\r\n\r\n"
      "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
      "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok";
  for (size_t piece : kPieces) {
    CAPTURE(piece);
    Backend b;
    CHECK(b.feed(wire, piece) == wire.size());
    CHECK_FALSE(b.parser.failed());
    CHECK(b.completed == "100 103 201");
    REQUIRE(b.heads.size() == 3);
    CHECK(b.heads[0].status == 100);
    CHECK(b.heads[0].reason == "Continue");
    CHECK(b.heads[0].framing == ResponseFraming::None);
    CHECK(b.heads[1].status == 103);
    REQUIRE(b.heads[1].headers.size() == 1);
    CHECK(b.heads[1].headers[0].value == "</s.css>; rel=preload");
    CHECK(b.heads[2].status == 201);
    CHECK(b.heads[2].framing == ResponseFraming::Length);
    CHECK(b.body == "ok");
  }
}

TEST_CASE("response parser: 101 stops exactly after the head") {
  const std::string head =
      "HTTP/1.1 101 Switching Protocols\r\n"
      "Upgrade: websocket\r\n"
      "Connection: Upgrade\r\n"
      "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
      "\r\n";
  const std::string frames = "\x81\x05hello";
  for (size_t piece : kPieces) {
    CAPTURE(piece);
    Backend b;
    CHECK(b.feed(head + frames, piece) == head.size());
    CHECK_FALSE(b.parser.failed());
    CHECK(b.parser.complete());
    REQUIRE(b.heads.size() == 1);
    CHECK(b.heads[0].status == 101);
    CHECK(b.heads[0].upgrade);
    CHECK(b.heads[0].framing == ResponseFraming::None);
    CHECK(b.body.empty());
    CHECK(b.completed == "101");
  }
}

TEST_CASE("response parser: keep-alive") {
  struct Case {
    const char* wire;
    bool keepAlive;
  };
  const Case cases[] = {
      {"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", true},
      {"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", false},
      {"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false},
      {"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n", true},
  };
  for (const auto& c : cases) {
    CAPTURE(c.wire);
    Backend b;
    b.feed(c.wire, 1 << 20);
    REQUIRE(b.heads.size() == 1);
    CHECK(b.heads[0].keepAlive == c.keepAlive);
    CHECK(b.parser.complete());
  }
}

TEST_CASE("response parser: ambiguous or hostile responses fail before the head is used") {
  struct Case {
    std::string what;
    std::string wire;
    size_t maxHeaders = 100;
  };
  const Case cases[] = {
      {"Content-Length with Transfer-Encoding",
       "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello"},
      {"Transfer-Encoding with Content-Length",
       "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello"},
      {"two equal Content-Lengths", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"},
      {"two different Content-Lengths",
       "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello"},
      {"too many header fields", "HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", 2},
      {"not HTTP", "SSH-2.0-OpenSSH_9.6\r\n\r\n"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.what);
    for (size_t piece : kPieces) {
      CAPTURE(piece);
      Backend b(c.maxHeaders);
      b.feed(c.wire, piece);
      CHECK(b.parser.failed());
      CHECK_FALSE(b.parser.error().empty());
      CHECK(b.heads.empty());
      CHECK(b.body.empty());
      CHECK(b.completed.empty());
      // Failed is final.
      CHECK(b.parser.feed("HTTP/1.1 200 OK\r\n\r\n") == 0);
    }
  }
  SUBCASE("exactly max headers is fine") {
    Backend b(3);
    b.feed("HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nContent-Length: 0\r\n\r\n", 1 << 20);
    CHECK_FALSE(b.parser.failed());
    CHECK(b.parser.complete());
  }
}

TEST_CASE("response parser: obs-fold in a response is refused or replaced by SP") {
  // RFC 9112 §5.2: a proxy either refuses the message or replaces each
  // obs-fold with SP before interpreting or forwarding the field.
  Backend b;
  b.feed("HTTP/1.1 200 OK\r\nX-Folded: a\r\n  b\r\nContent-Length: 0\r\n\r\n", 1 << 20);
  if (!b.parser.failed()) {
    REQUIRE(b.heads.size() == 1);
    REQUIRE(!b.heads[0].headers.empty());
    CHECK(b.heads[0].headers[0].name == "X-Folded");
    const std::string& v = b.heads[0].headers[0].value;
    CHECK(v.find_first_of("\r\n") == std::string::npos);
    CHECK(v.find('a') < v.find('b'));
    CHECK(v.find(' ') != std::string::npos);  // not glued into "ab"
  }
}

TEST_CASE("response parser: onHead returning false aborts") {
  Backend b;
  b.refuseHead = true;
  b.feed("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 1 << 20);
  CHECK(b.parser.failed());
  CHECK(b.parser.error() == "response refused");
  CHECK(b.heads.size() == 1);
  CHECK(b.body.empty());
  CHECK(b.completed.empty());
}

TEST_CASE("response parser: reset() starts the next response on the same connection") {
  Backend b;
  const std::string first = "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na";
  CHECK(b.feed(first, 1 << 20) == first.size());
  b.parser.reset(false);
  CHECK_FALSE(b.parser.complete());
  CHECK_FALSE(b.parser.headSeen());
  const std::string second = "HTTP/1.1 404 Not Found\r\nContent-Length: 1\r\n\r\nb";
  CHECK(b.feed(second, 1 << 20) == second.size());
  CHECK(b.parser.head().status == 404);
  CHECK(b.parser.head().reason == "Not Found");
  CHECK(b.body == "ab");
  CHECK(b.completed == "200 404");
}
