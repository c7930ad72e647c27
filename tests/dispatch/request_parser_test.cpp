#include "dispatch/http/request_parser.h"

#include <doctest.h>

#include <string>
#include <string_view>
#include <vector>

using usher::http::Framing;
using usher::http::Limits;
using usher::http::RequestHead;
using usher::http::RequestParser;
using Status = usher::http::RequestParser::Status;

// doctest prints operands with an unqualified toString(), found by ADL here;
// without these it would print enums as numbers.
namespace usher::http {
[[maybe_unused]] static doctest::String toString(RequestParser::Status s) {
  switch (s) {
    case RequestParser::Status::Incomplete:
      return "Incomplete";
    case RequestParser::Status::Complete:
      return "Complete";
    case RequestParser::Status::Error:
      return "Error";
  }
  return "?";
}
[[maybe_unused]] static doctest::String toString(Framing f) {
  switch (f) {
    case Framing::None:
      return "None";
    case Framing::Length:
      return "Length";
    case Framing::Chunked:
      return "Chunked";
  }
  return "?";
}
}  // namespace usher::http

namespace {

// What parseHead said, in a form two parses can be compared by.
struct HeadOutcome {
  Status status = Status::Incomplete;
  int errorStatus = 0;  // when Error
  size_t headBytes = 0;
  std::string head;  // describe(head()) when Complete
};

// Every parsed field on one line each, so that a mismatch shows as a text diff.
std::string describe(const RequestHead& h) {
  std::string s = h.method + " " + h.target + " HTTP/" + std::to_string(h.versionMajor) + "." +
                  std::to_string(h.versionMinor) + "\n";
  for (const auto& hdr : h.headers) s += "[" + hdr.name + "]=[" + hdr.value + "]\n";
  s += "framing=" + std::string(toString(h.framing).c_str());
  s += " contentLength=" + std::to_string(h.contentLength);
  s += " keepAlive=" + std::to_string(h.keepAlive) + " upgrade=" + std::to_string(h.upgrade) +
       " expectContinue=" + std::to_string(h.expectContinue);
  return s;
}

HeadOutcome outcome(const RequestParser& p, Status status) {
  HeadOutcome o;
  o.status = status;
  if (status == Status::Error) o.errorStatus = p.error().status;
  if (status == Status::Complete) {
    o.headBytes = p.headBytes();
    o.head = describe(p.head());
  }
  return o;
}

// Everything in one read.
HeadOutcome parseAll(RequestParser& p, std::string_view bytes) {
  return outcome(p, p.parseHead(bytes));
}

// One more byte per read: parseHead sees bytes[0, k) for k = 1..n, as a
// connection calls it with everything buffered so far, and stops at the
// first answer that is not Incomplete.
HeadOutcome parseGrowing(RequestParser& p, std::string_view bytes) {
  Status s = Status::Incomplete;
  for (size_t k = 1; k <= bytes.size() && s == Status::Incomplete; ++k) s = p.parseHead(bytes.substr(0, k));
  return outcome(p, s);
}

// Two reads: bytes[0, k) then all of it.
HeadOutcome parseTwoReads(RequestParser& p, std::string_view bytes, size_t k) {
  Status s = p.parseHead(bytes.substr(0, k));
  if (s == Status::Incomplete) s = p.parseHead(bytes);
  return outcome(p, s);
}

void checkSame(const HeadOutcome& got, const HeadOutcome& want) {
  CHECK(got.status == want.status);
  CHECK(got.errorStatus == want.errorStatus);
  CHECK(got.headBytes == want.headBytes);
  CHECK(got.head == want.head);
}

bool same(const HeadOutcome& a, const HeadOutcome& b) {
  return a.status == b.status && a.errorStatus == b.errorStatus && a.headBytes == b.headBytes &&
         a.head == b.head;
}

// Parses `bytes` in one read, then split at every byte boundary, and checks
// that every way of splitting gives the one-read answer (reporting the first
// split that does not). Returns the one-read answer.
HeadOutcome parseEveryWay(std::string_view bytes, const Limits& limits = {}) {
  RequestParser whole(limits);
  HeadOutcome want = parseAll(whole, bytes);
  {
    INFO("fed one more byte per read");
    RequestParser p(limits);
    checkSame(parseGrowing(p, bytes), want);
  }
  for (size_t k = 1; k < bytes.size(); ++k) {
    RequestParser p(limits);
    HeadOutcome got = parseTwoReads(p, bytes, k);
    if (!same(got, want)) {
      INFO("fed as two reads split after byte " << k << " (the first split that differs)");
      checkSame(got, want);
      break;
    }
  }
  return want;
}

// Parses a head that must be complete, every way; `p` holds the result.
void parseValid(RequestParser& p, std::string_view bytes, const Limits& limits = {}) {
  CAPTURE(bytes);
  HeadOutcome want = parseEveryWay(bytes, limits);
  REQUIRE(p.parseHead(bytes) == Status::Complete);
  CHECK(want.status == Status::Complete);
}

struct BodyOutcome {
  std::string decoded;
  size_t consumed = 0;
  bool complete = false;
  bool error = false;
  int errorStatus = 0;
};

// Feeds body bytes in reads of at most `piece` bytes, as a connection would,
// until the message is complete, an error, or the bytes run out.
BodyOutcome feedPieces(RequestParser& p, std::string_view bytes, size_t piece) {
  BodyOutcome out;
  RequestParser::BodySink sink = [&](std::string_view d) { out.decoded.append(d); };
  while (out.consumed < bytes.size()) {
    auto r = p.feedBody(bytes.substr(out.consumed, piece), sink);
    out.consumed += r.consumed;
    if (r.error) {
      out.error = true;
      out.errorStatus = p.error().status;
      break;
    }
    if (r.complete) {
      out.complete = true;
      break;
    }
    if (r.consumed == 0) break;
  }
  if (!out.error && p.bodyComplete()) out.complete = true;
  return out;
}

// Parses the head of `message` and feeds the rest as body in reads of
// `piece` bytes.
BodyOutcome parseMessage(std::string_view message, size_t piece, const Limits& limits = {}) {
  RequestParser p(limits);
  REQUIRE(p.parseHead(message) == Status::Complete);
  return feedPieces(p, message.substr(p.headBytes()), piece);
}

// Feeds the body of `message` one read, one byte per read and a few sizes in
// between; every way must decode the same. Returns the one-read answer.
BodyOutcome feedEveryWay(std::string_view message, const Limits& limits = {}) {
  BodyOutcome want = parseMessage(message, message.size(), limits);
  for (size_t piece : {1, 2, 3, 5, 7, 16}) {
    INFO("body fed in reads of " << piece << " bytes");
    BodyOutcome got = parseMessage(message, piece, limits);
    CHECK(got.error == want.error);
    CHECK(got.errorStatus == want.errorStatus);
    CHECK(got.complete == want.complete);
    // Data before a framing error is streamed out as it arrives, so how much
    // of it was seen depends on the reads; without an error it must not.
    if (!want.error) {
      CHECK(got.decoded == want.decoded);
      CHECK(got.consumed == want.consumed);
    }
  }
  return want;
}

const char* const kChunkedHead = "POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";

}  // namespace

TEST_CASE("request parser: a GET, every field exact") {
  const std::string req =
      "GET /index.html?q=1&r=%20 HTTP/1.1\r\n"
      "Host: example.com\r\n"
      "User-Agent: t/1\r\n"
      "x-LoWeR-case:v\r\n"
      "Accept: */*\r\n"
      "\r\n";
  RequestParser p(Limits{});
  parseValid(p, req);
  const auto& h = p.head();
  CHECK(p.headBytes() == req.size());
  CHECK(h.method == "GET");
  CHECK(h.methodCode == HTTP_GET);
  CHECK(h.target == "/index.html?q=1&r=%20");
  CHECK(h.versionMajor == 1);
  CHECK(h.versionMinor == 1);
  REQUIRE(h.headers.size() == 4);
  CHECK(h.headers[0].name == "Host");
  CHECK(h.headers[0].value == "example.com");
  CHECK(h.headers[1].name == "User-Agent");
  CHECK(h.headers[1].value == "t/1");
  CHECK(h.headers[2].name == "x-LoWeR-case");  // names as sent
  CHECK(h.headers[2].value == "v");
  CHECK(h.headers[3].name == "Accept");
  CHECK(h.headers[3].value == "*/*");
  CHECK(h.framing == Framing::None);
  CHECK(h.contentLength == 0);
  CHECK(h.keepAlive);
  CHECK_FALSE(h.upgrade);
  CHECK_FALSE(h.expectContinue);
  // Nothing follows a request without framing: the message is already complete.
  CHECK(p.bodyComplete());
  auto r = p.feedBody("GET /next HTTP/1.1\r\n", [](std::string_view) { FAIL("no body expected"); });
  CHECK(r.consumed == 0);
  CHECK(r.complete);
}

TEST_CASE("request parser: split reads as in STYLE.md, \"G\" then the rest") {
  RequestParser p(Limits{});
  const std::string req = "GET / HTTP/1.1\r\nHost: h\r\n\r\n";
  CHECK(p.parseHead("G") == Status::Incomplete);
  CHECK(p.parseHead("GET / HTTP/1.1\r") == Status::Incomplete);
  CHECK(p.parseHead("GET / HTTP/1.1\r\nHost: h\r\n") == Status::Incomplete);
  CHECK(p.parseHead("GET / HTTP/1.1\r\nHost: h\r\n\r") == Status::Incomplete);
  REQUIRE(p.parseHead(req) == Status::Complete);
  CHECK(p.headBytes() == req.size());
  CHECK(p.head().target == "/");
}

TEST_CASE("request parser: header values are trimmed, duplicates kept in order, empty values kept") {
  const std::string req =
      "GET / HTTP/1.1\r\n"
      "Host: h\r\n"
      "X-A: 1\r\n"
      "X-Pad: \t  padded value \t \r\n"
      "X-Empty:\r\n"
      "X-Empty-Spaces:   \r\n"
      "x-a: 2\r\n"
      "\r\n";
  RequestParser p(Limits{});
  parseValid(p, req);
  const auto& h = p.head();
  REQUIRE(h.headers.size() == 6);
  CHECK(h.headers[1].name == "X-A");
  CHECK(h.headers[1].value == "1");
  CHECK(h.headers[2].value == "padded value");
  CHECK(h.headers[3].name == "X-Empty");
  CHECK(h.headers[3].value == "");
  CHECK(h.headers[4].name == "X-Empty-Spaces");
  CHECK(h.headers[4].value == "");
  CHECK(h.headers[5].name == "x-a");
  CHECK(h.headers[5].value == "2");
  CHECK(h.count("X-A") == 2);
  REQUIRE(h.find("x-A") != nullptr);
  CHECK(h.find("x-A")->value == "1");
  CHECK(h.find("X-Missing") == nullptr);
  CHECK(h.count("X-Missing") == 0);
}

TEST_CASE("request parser: POST with Content-Length stops at the end of its body (pipelining)") {
  const std::string first =
      "POST /submit HTTP/1.1\r\n"
      "Host: h\r\n"
      "Content-Length: 11\r\n"
      "Content-Type: text/plain\r\n"
      "\r\n";
  const std::string next = "GET /next HTTP/1.1\r\nHost: h\r\n\r\n";
  const std::string wire = first + "hello world" + next;

  RequestParser p(Limits{});
  parseValid(p, wire);
  CHECK(p.headBytes() == first.size());
  CHECK(p.head().method == "POST");
  CHECK(p.head().methodCode == HTTP_POST);
  CHECK(p.head().framing == Framing::Length);
  CHECK(p.head().contentLength == 11);
  CHECK_FALSE(p.bodyComplete());

  BodyOutcome body = feedEveryWay(wire);
  CHECK(body.decoded == "hello world");
  CHECK(body.consumed == 11);
  CHECK(body.complete);
  CHECK_FALSE(body.error);

  // What is left is the next request, whole.
  std::string_view rest = std::string_view(wire).substr(first.size() + 11);
  CHECK(rest == next);
  p.reset();
  REQUIRE(p.parseHead(rest) == Status::Complete);
  CHECK(p.head().target == "/next");
  CHECK(p.headBytes() == next.size());
}

TEST_CASE("request parser: Content-Length: 0 is a complete message with a Length framing") {
  RequestParser p(Limits{});
  parseValid(p, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n");
  CHECK(p.head().framing == Framing::Length);
  CHECK(p.head().contentLength == 0);
  CHECK(p.bodyComplete());
}

TEST_CASE("request parser: chunked body with extensions and trailers, then a pipelined request") {
  const std::string body =
      "5;name=value\r\n"
      "hello\r\n"
      "6 ; a=b;c=\"quoted ; value\"\r\n"
      " world\r\n"
      "A\r\n"
      "0123456789\r\n"
      "0;last\r\n"
      "X-Checksum: abc\r\n"
      "X-Other: d\r\n"
      "\r\n";
  const std::string next = "GET /after HTTP/1.1\r\nHost: h\r\n\r\n";
  const std::string wire = kChunkedHead + body + next;

  RequestParser p(Limits{});
  parseValid(p, wire);
  CHECK(p.headBytes() == std::string_view(kChunkedHead).size());
  CHECK(p.head().framing == Framing::Chunked);
  CHECK(p.head().contentLength == 0);
  CHECK_FALSE(p.bodyComplete());

  BodyOutcome got = feedEveryWay(wire);
  CHECK(got.decoded == "hello world0123456789");
  CHECK(got.consumed == body.size());
  CHECK(got.complete);
  CHECK_FALSE(got.error);
}

TEST_CASE("request parser: chunked body one byte per read, each feedBody answer exact") {
  const std::string body = "3\r\nabc\r\n0\r\n\r\n";
  RequestParser p(Limits{});
  REQUIRE(p.parseHead(std::string(kChunkedHead) + body) == Status::Complete);
  std::string decoded;
  RequestParser::BodySink sink = [&](std::string_view d) { decoded.append(d); };
  for (size_t i = 0; i < body.size(); ++i) {
    CAPTURE(i);
    auto r = p.feedBody(body.substr(i, 1), sink);
    CHECK(r.consumed == 1);
    CHECK_FALSE(r.error);
    CHECK(r.complete == (i + 1 == body.size()));
  }
  CHECK(decoded == "abc");
  CHECK(p.bodyComplete());
  CHECK(p.bodyBytes() == 3);
  // After the end, nothing more is taken.
  auto r = p.feedBody("GET", sink);
  CHECK(r.consumed == 0);
  CHECK(r.complete);
}

TEST_CASE("request parser: trailer fields do not change the head already handed out") {
  // RFC 9110 §6.5.1: trailer fields are kept apart from the header section
  // unless the recipient knows they may be merged; the head has been
  // forwarded by the time the trailers arrive.
  RequestParser p(Limits{});
  REQUIRE(p.parseHead(std::string(kChunkedHead)) == Status::Complete);
  const std::string before = describe(p.head());
  BodyOutcome got = feedPieces(p, "1\r\nx\r\n0\r\nHost: evil\r\nX-Trailer: t\r\n\r\n", 64);
  CHECK(got.complete);
  CHECK(describe(p.head()) == before);
}

TEST_CASE("request parser: keep-alive by version and Connection") {
  struct Case {
    const char* wire;
    bool keepAlive;
  };
  const Case cases[] = {
      {"GET / HTTP/1.1\r\nHost: h\r\n\r\n", true},
      {"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", false},
      {"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, close\r\n\r\n", false},
      {"GET / HTTP/1.0\r\n\r\n", false},
      {"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true},
      {"GET / HTTP/1.0\r\nHost: h\r\nConnection: Keep-Alive\r\n\r\n", true},
  };
  for (const auto& c : cases) {
    CAPTURE(c.wire);
    RequestParser p(Limits{});
    parseValid(p, c.wire);
    CHECK(p.head().keepAlive == c.keepAlive);
  }
  RequestParser p(Limits{});
  parseValid(p, "GET / HTTP/1.0\r\n\r\n");
  CHECK(p.head().versionMinor == 0);
}

TEST_CASE("request parser: upgrade only when the request has no body") {
  const std::string ws =
      "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
      "Sec-WebSocket-Version: 13\r\n";
  SUBCASE("no body: upgrade, and the frames after the head are not the parser's") {
    RequestParser p(Limits{});
    parseValid(p, ws + "\r\n\x81\x05hello");
    CHECK(p.headBytes() == ws.size() + 2);
    CHECK(p.head().upgrade);
    CHECK(p.head().framing == Framing::None);
    CHECK(p.bodyComplete());
  }
  SUBCASE("Upgrade without Connection: upgrade is not an upgrade") {
    RequestParser p(Limits{});
    parseValid(p, "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n");
    CHECK_FALSE(p.head().upgrade);
  }
  SUBCASE("with Content-Length: no upgrade") {
    RequestParser p(Limits{});
    parseValid(p, ws + "Content-Length: 5\r\n\r\nhello");
    CHECK_FALSE(p.head().upgrade);
    CHECK(p.head().framing == Framing::Length);
  }
  SUBCASE("chunked: no upgrade") {
    RequestParser p(Limits{});
    parseValid(p, ws + "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    CHECK_FALSE(p.head().upgrade);
    CHECK(p.head().framing == Framing::Chunked);
  }
}

TEST_CASE("request parser: Expect: 100-continue") {
  RequestParser p(Limits{});
  parseValid(p, "PUT /f HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n");
  CHECK(p.head().expectContinue);
  CHECK(p.head().methodCode == HTTP_PUT);
  RequestParser q(Limits{});
  parseValid(q, "PUT /f HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n");
  CHECK_FALSE(q.head().expectContinue);
}

TEST_CASE("request parser: other valid shapes") {
  struct Case {
    const char* wire;
    const char* method;
    const char* target;
  };
  const Case cases[] = {
      // RFC 9112 §2.2: an empty line before the request line is ignored.
      {"\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", "GET", "/"},
      {"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", "OPTIONS", "*"},
      {"DELETE /x HTTP/1.1\r\nHost: h\r\n\r\n", "DELETE", "/x"},
      {"HEAD /x HTTP/1.1\r\nHost: h\r\n\r\n", "HEAD", "/x"},
      {"PATCH /x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", "PATCH", "/x"},
      {"GET /a/b;c?d=e#f HTTP/1.1\r\nHost: h\r\n\r\n", "GET", "/a/b;c?d=e#f"},
      // RFC 9112 §3.2.2: absolute-form is accepted and forwarded as origin-form.
      {"GET http://example.com/a?b HTTP/1.1\r\nHost: h\r\n\r\n", "GET", "/a?b"},
      // obs-text (RFC 9110 §5.5) in a value is allowed.
      {"GET / HTTP/1.1\r\nHost: h\r\nX-Latin: caf\xe9\r\n\r\n", "GET", "/"},
      {"GET / HTTP/1.1\r\nHost: h\r\nX-Tchars!#$%&'*+-.^_`|~: v\r\n\r\n", "GET", "/"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.wire);
    RequestParser p(Limits{});
    parseValid(p, c.wire);
    CHECK(p.head().method == c.method);
    CHECK(p.head().target == c.target);
  }
}

TEST_CASE("request parser: reset() makes the parser ready for the next request") {
  RequestParser p(Limits{});
  REQUIRE(p.parseHead("POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n") == Status::Complete);
  CHECK(feedPieces(p, "hi", 2).complete);
  p.reset();
  CHECK_FALSE(p.bodyComplete());
  CHECK(p.bodyBytes() == 0);
  REQUIRE(p.parseHead("GET /b HTTP/1.0\r\n\r\n") == Status::Complete);
  CHECK(p.head().target == "/b");
  CHECK(p.head().headers.empty());
  CHECK(p.head().framing == Framing::None);
  CHECK_FALSE(p.head().keepAlive);
  // And after an error too.
  p.reset();
  REQUIRE(p.parseHead("GET / HTTP/1.1\r\nHost: h\r\n\r\n") == Status::Complete);
  p.reset();
  REQUIRE(p.parseHead("GET / HTTP/1.1\n") == Status::Error);
  p.reset();
  REQUIRE(p.parseHead("GET /c HTTP/1.1\r\nHost: h\r\n\r\n") == Status::Complete);
  CHECK(p.head().target == "/c");
}

namespace {

struct Hostile {
  std::string what;
  std::string wire;
  int status;
  Limits limits{};
};

Limits maxBody(uint64_t n) {
  Limits l;
  l.maxBody = n;
  return l;
}

const std::string kHost = "Host: h\r\n";

// Every way of refusing a head, with its exact status. Each is a whole head
// (ends with the empty line), so the one-read answer is not Incomplete.
std::vector<Hostile> hostileHeads() {
  const std::string get = "GET / HTTP/1.1\r\n";
  const std::string post = "POST / HTTP/1.1\r\n" + kHost;
  return {
      // Framing, RFC 9112 §6.3.
      {"Content-Length with Transfer-Encoding",
       post + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
      {"Transfer-Encoding with Content-Length",
       post + "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", 400},
      {"two equal Content-Lengths", post + "Content-Length: 5\r\nContent-Length: 5\r\n\r\n", 400},
      {"two different Content-Lengths", post + "Content-Length: 5\r\nContent-Length: 6\r\n\r\n", 400},
      {"Content-Length list", post + "Content-Length: 5, 5\r\n\r\n", 400},
      {"Content-Length with +", post + "Content-Length: +5\r\n\r\n", 400},
      {"Content-Length with -", post + "Content-Length: -5\r\n\r\n", 400},
      {"Content-Length with inner space", post + "Content-Length: 1 5\r\n\r\n", 400},
      {"Content-Length in hex", post + "Content-Length: 0x5\r\n\r\n", 400},
      {"Content-Length hex digit", post + "Content-Length: a\r\n\r\n", 400},
      {"Content-Length empty", post + "Content-Length:\r\n\r\n", 400},
      {"Content-Length 20 digits", post + "Content-Length: 99999999999999999999\r\n\r\n", 400},
      {"chunked twice", post + "Transfer-Encoding: chunked, chunked\r\n\r\n", 400},
      {"chunked in two fields", post + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
       400},
      {"Transfer-Encoding in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
      // Line syntax, RFC 9112 §2.2, §5.
      {"obs-fold with space", get + kHost + "X-A: 1\r\n continued\r\n\r\n", 400},
      {"obs-fold with tab", get + kHost + "X-A: 1\r\n\tcontinued\r\n\r\n", 400},
      {"space before the first header", get + " Host: h\r\n\r\n", 400},
      {"bare CR in a value", get + kHost + "X-A: a\rb\r\n\r\n", 400},
      {"bare CR in the request line", "GET /\r HTTP/1.1\r\n" + kHost + "\r\n", 400},
      {"bare CR ending the head", get + kHost + "\r\r\n", 400},
      {"bare LF everywhere", "GET / HTTP/1.1\nHost: h\n\n", 400},
      {"bare LF after a header", get + "Host: h\n\r\n", 400},
      {"bare LF ending the head", get + kHost + "\n", 400},
      {"NUL in a value", get + kHost + std::string("X-A: a\0b\r\n\r\n", 12), 400},
      {"NUL in a name", get + kHost + std::string("X\0A: b\r\n\r\n", 10), 400},
      {"NUL in the target", std::string("GET /\0 HTTP/1.1\r\n", 17) + kHost + "\r\n", 400},
      {"DEL in a value", get + kHost + "X-A: a\177b\r\n\r\n", 400},
      {"control byte in a value", get + kHost + "X-A: a\001b\r\n\r\n", 400},
      {"space before colon", get + "Host : h\r\n\r\n", 400},
      {"tab before colon", get + "Host\t: h\r\n\r\n", 400},
      {"invalid name character", get + kHost + "X(A): b\r\n\r\n", 400},
      {"obs-text in a name", get + kHost + "X-\xe9: b\r\n\r\n", 400},
      {"empty name", get + kHost + ": b\r\n\r\n", 400},
      {"no colon", get + kHost + "NoColon\r\n\r\n", 400},
      {"five empty lines before the request line", "\r\n\r\n\r\n\r\n\r\n" + get + kHost + "\r\n", 400},
      // Request line, RFC 9112 §3.
      {"HTTP/0.9 (no version)", "GET /\r\n\r\n", 400},
      {"empty version", "GET / \r\n\r\n", 400},
      {"lower-case version", "GET / http/1.1\r\n" + kHost + "\r\n", 400},
      {"version with three digits", "GET / HTTP/1.10\r\n" + kHost + "\r\n", 400},
      {"two spaces after the method", "GET  / HTTP/1.1\r\n" + kHost + "\r\n", 400},
      {"space in the target", "GET /a b HTTP/1.1\r\n" + kHost + "\r\n", 400},
      {"trailing space", "GET / HTTP/1.1 \r\n" + kHost + "\r\n", 400},
      {"tab as separator", "GET\t/ HTTP/1.1\r\n" + kHost + "\r\n", 400},
      {"leading space", " GET / HTTP/1.1\r\n" + kHost + "\r\n", 400},
      {"unknown method", "FOO / HTTP/1.1\r\n" + kHost + "\r\n", 400},
      {"lower-case method", "get / HTTP/1.1\r\n" + kHost + "\r\n", 400},
      {"obs-text in the target", "GET /caf\xe9 HTTP/1.1\r\n" + kHost + "\r\n", 400},
      {"absolute-form with userinfo", "GET http://user@example.com/ HTTP/1.1\r\n" + kHost + "\r\n", 400},
      {"absolute-form without authority", "GET http:///x HTTP/1.1\r\n" + kHost + "\r\n", 400},
      {"absolute-form of another scheme", "GET ftp://example.com/ HTTP/1.1\r\n" + kHost + "\r\n", 400},
      {"authority-form target", "GET example.com:80 HTTP/1.1\r\n" + kHost + "\r\n", 400},
      {"asterisk-form on GET", "GET * HTTP/1.1\r\n" + kHost + "\r\n", 400},
      {"missing Host in HTTP/1.1", get + "X-A: b\r\n\r\n", 400},
      {"repeated Host", get + kHost + "host: h\r\n\r\n", 400},
      // Limits and what is not implemented.
      {"Content-Length above max_body_bytes", post + "Content-Length: 101\r\n\r\n", 413, maxBody(100)},
      {"gzip", post + "Transfer-Encoding: gzip\r\n\r\n", 501},
      {"gzip, chunked", post + "Transfer-Encoding: gzip, chunked\r\n\r\n", 501},
      {"gzip in a second field", post + "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n", 501},
      // RFC 9112 §6.3: chunked not last leaves the length unknowable.
      {"chunked, gzip", post + "Transfer-Encoding: chunked, gzip\r\n\r\n", 400},
      {"chunked then gzip in a second field",
       post + "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n", 400},
      {"empty Transfer-Encoding", post + "Transfer-Encoding: \r\n\r\n", 400},
      {"Transfer-Encoding of commas", post + "Transfer-Encoding: , ,\r\n\r\n", 400},
      {"CONNECT", "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 501},
      {"HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505},
      {"HTTP/2.0", "GET / HTTP/2.0\r\n" + kHost + "\r\n", 505},
      {"HTTP/1.2", "GET / HTTP/1.2\r\n" + kHost + "\r\n", 505},
      {"HTTP/0.9 with a version", "GET / HTTP/0.9\r\n\r\n", 505},
      {"HTTP/3.0", "GET / HTTP/3.0\r\n" + kHost + "\r\n", 505},
      {"Expect other than 100-continue", get + kHost + "Expect: something\r\n\r\n", 417},
      {"Expect list", get + kHost + "Expect: 100-continue, x\r\n\r\n", 417},
      {"two Expects", get + kHost + "Expect: 100-continue\r\nExpect: 100-continue\r\n\r\n", 417},
  };
}

}  // namespace

TEST_CASE("request parser: hostile heads, each refused with its exact status in any split") {
  for (const auto& c : hostileHeads()) {
    CAPTURE(c.what);
    CAPTURE(c.wire);
    HeadOutcome got = parseEveryWay(c.wire, c.limits);
    CHECK(got.status == Status::Error);
    CHECK(got.errorStatus == c.status);
    RequestParser p(c.limits);
    if (p.parseHead(c.wire) == Status::Error) CHECK_FALSE(p.error().reason.empty());
  }
}

TEST_CASE("request parser: a head breaking two rules gets one status however the reads split") {
  // Which rule is reported must not depend on where reads happen to end:
  // one byte stream, one answer (and one audit reason).
  Limits l;
  l.maxRequestLine = 64;
  l.maxHeaderBytes = 256;
  Limits longLines;  // max_request_line above max_header_bytes, as a config may have it
  longLines.maxRequestLine = 8192;
  longLines.maxHeaderBytes = 256;
  struct Case {
    std::string what;
    std::string wire;
    Limits limits;
  };
  const Case cases[] = {
      {"NUL once the request line is over its limit",
       "GET /" + std::string(70, 'a') + std::string("\0 HTTP/1.1\r\n", 12) + kHost + "\r\n", l},
      {"request line over its limit, ended by a bare LF",
       "GET /" + std::string(70, 'a') + " HTTP/1.1\n" + kHost + "\r\n", l},
      {"NUL, then the request line goes over its limit", std::string("GET /\0", 6) + std::string(70, 'a'), l},
      {"header line over max_header_bytes, ended by a bare LF",
       "GET / HTTP/1.1\r\n" + kHost + "X: " + std::string(300, 'a') + "\n\r\n", l},
      {"NUL, then the head goes over max_header_bytes",
       "GET / HTTP/1.1\r\n" + kHost + std::string("X: \0", 4) + std::string(300, 'a') + "\r\n\r\n", l},
      {"request line within its limit but over max_header_bytes",
       "GET /" + std::string(300, 'a') + " HTTP/1.1\r\n" + kHost + "\r\n", longLines},
  };
  for (const auto& c : cases) {
    CAPTURE(c.what);
    HeadOutcome got = parseEveryWay(c.wire, c.limits);
    CHECK(got.status == Status::Error);
  }
}

TEST_CASE("request parser: an error is reported as soon as the bad byte arrives") {
  // Bytes that can never become valid fail before the line ends, so a
  // client cannot hold a parse open on them.
  RequestParser p(Limits{});
  CHECK(p.parseHead("GET /") == Status::Incomplete);
  CHECK(p.parseHead(std::string_view("GET /\0", 6)) == Status::Error);
  CHECK(p.error().status == 400);
  RequestParser q(Limits{});
  CHECK(q.parseHead("GET /\rx") == Status::Error);
  CHECK(q.error().status == 400);
}

namespace {

// A request line of exactly `n` bytes (CRLF not counted).
std::string requestLineOf(size_t n) {
  const std::string prefix = "GET /";
  const std::string suffix = " HTTP/1.1";
  REQUIRE(n >= prefix.size() + suffix.size());
  return prefix + std::string(n - prefix.size() - suffix.size(), 'a') + suffix;
}

// A head of exactly `n` bytes, final CRLF included.
std::string headOf(size_t n) {
  const std::string start = "GET / HTTP/1.1\r\nHost: h\r\nX-Pad: ";
  const std::string end = "\r\n\r\n";
  REQUIRE(n >= start.size() + end.size() + 1);
  return start + std::string(n - start.size() - end.size(), 'p') + end;
}

std::string headWithFields(size_t n) {
  std::string s = "GET / HTTP/1.1\r\nHost: h\r\n";
  for (size_t i = 1; i < n; ++i) s += "X-" + std::to_string(i) + ": v\r\n";
  return s + "\r\n";
}

}  // namespace

TEST_CASE("request parser: limits at the boundary, in any split") {
  SUBCASE("max_request_line: exactly the limit is fine, one more is 414") {
    Limits l;
    l.maxRequestLine = 64;
    l.maxHeaderBytes = 1024;
    HeadOutcome ok = parseEveryWay(requestLineOf(64) + "\r\n" + kHost + "\r\n", l);
    CHECK(ok.status == Status::Complete);
    HeadOutcome over = parseEveryWay(requestLineOf(65) + "\r\n" + kHost + "\r\n", l);
    CHECK(over.status == Status::Error);
    CHECK(over.errorStatus == 414);
  }
  SUBCASE("max_request_line: a long line is refused before it ends") {
    Limits l;
    l.maxRequestLine = 64;
    RequestParser p(l);
    CHECK(p.parseHead(requestLineOf(65)) == Status::Error);
    CHECK(p.error().status == 414);
  }
  SUBCASE("max_headers: exactly the limit is fine, one more is 431") {
    Limits l;
    l.maxHeaders = 5;
    HeadOutcome ok = parseEveryWay(headWithFields(5), l);
    CHECK(ok.status == Status::Complete);
    HeadOutcome over = parseEveryWay(headWithFields(6), l);
    CHECK(over.status == Status::Error);
    CHECK(over.errorStatus == 431);
  }
  SUBCASE("max_header_bytes: exactly the limit is fine, one more is 431") {
    Limits l;
    l.maxHeaderBytes = 256;
    std::string exact = headOf(256);
    REQUIRE(exact.size() == 256);
    HeadOutcome ok = parseEveryWay(exact, l);
    CHECK(ok.status == Status::Complete);
    CHECK(ok.headBytes == 256);
    HeadOutcome over = parseEveryWay(headOf(257), l);
    CHECK(over.status == Status::Error);
    CHECK(over.errorStatus == 431);
  }
  SUBCASE("max_header_bytes: a head that never ends is refused once past the limit") {
    Limits l;
    l.maxHeaderBytes = 256;
    RequestParser p(l);
    std::string endless = "GET / HTTP/1.1\r\nHost: h\r\n";
    while (endless.size() <= 256) endless += "X-A: b\r\n";
    CHECK(p.parseHead(endless) == Status::Error);
    CHECK(p.error().status == 431);
  }
  SUBCASE("max_body_bytes and Content-Length: exactly the limit is fine, one more is 413") {
    HeadOutcome ok = parseEveryWay("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n", maxBody(100));
    CHECK(ok.status == Status::Complete);
    HeadOutcome over =
        parseEveryWay("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 101\r\n\r\n", maxBody(100));
    CHECK(over.errorStatus == 413);
  }
  SUBCASE("max_body_bytes and chunked: exactly the limit is fine, one more is 413") {
    const std::string exact = std::string(kChunkedHead) + "32\r\n" + std::string(50, 'x') + "\r\n" +
                              "32\r\n" + std::string(50, 'y') + "\r\n0\r\n\r\n";
    BodyOutcome ok = feedEveryWay(exact, maxBody(100));
    CHECK(ok.complete);
    CHECK_FALSE(ok.error);
    CHECK(ok.decoded.size() == 100);
    const std::string over = std::string(kChunkedHead) + "32\r\n" + std::string(50, 'x') + "\r\n" + "33\r\n" +
                             std::string(51, 'y') + "\r\n0\r\n\r\n";
    BodyOutcome bad = feedEveryWay(over, maxBody(100));
    CHECK(bad.error);
    CHECK(bad.errorStatus == 413);
    CHECK_FALSE(bad.complete);
  }
  SUBCASE("max_chunk_line: a chunk-size line of exactly the limit is fine, one more is 400") {
    Limits l;
    l.maxChunkLine = 16;
    const std::string ext = "5;" + std::string(14, 'e');  // 16 bytes
    BodyOutcome ok = feedEveryWay(std::string(kChunkedHead) + ext + "\r\nhello\r\n0\r\n\r\n", l);
    CHECK(ok.complete);
    CHECK(ok.decoded == "hello");
    BodyOutcome bad = feedEveryWay(std::string(kChunkedHead) + ext + "e\r\nhello\r\n0\r\n\r\n", l);
    CHECK(bad.error);
    CHECK(bad.errorStatus == 400);
  }
  SUBCASE("max_chunk_line: an endless extension is refused before it ends") {
    Limits l;
    l.maxChunkLine = 16;
    RequestParser p(l);
    REQUIRE(p.parseHead(kChunkedHead) == Status::Complete);
    auto r = p.feedBody("5;" + std::string(100, 'e'), [](std::string_view) {});
    CHECK(r.error);
    CHECK(p.error().status == 400);
  }
}

namespace {

struct HostileBody {
  std::string what;
  std::string body;
  int status;
  Limits limits{};
};

std::vector<HostileBody> hostileChunkedBodies() {
  Limits fewTrailers;
  fewTrailers.maxHeaders = 2;
  return {
      {"chunk size not hex", "zz\r\nhello\r\n0\r\n\r\n", 400},
      {"empty chunk size", "\r\nhello\r\n0\r\n\r\n", 400},
      {"negative chunk size", "-5\r\nhello\r\n0\r\n\r\n", 400},
      {"chunk size with 0x", "0x5\r\nhello\r\n0\r\n\r\n", 400},
      {"chunk size with +", "+5\r\nhello\r\n0\r\n\r\n", 400},
      {"space after the size without an extension", "5 \r\nhello\r\n0\r\n\r\n", 400},
      {"16 hex digits", "0000000000000005\r\nhello\r\n0\r\n\r\n", 400},
      {"chunk size overflowing 64 bits", "fffffffffffffffff\r\n", 400},
      {"bare LF after the size", "5\nhello\r\n0\r\n\r\n", 400},
      {"bare CR after the size", "5\rhello\r\n0\r\n\r\n", 400},
      {"NUL in an extension", std::string("5;a\0b\r\nhello\r\n0\r\n\r\n", 19), 400},
      {"LF inside an extension", "5;a\nb\r\nhello\r\n0\r\n\r\n", 400},
      {"data longer than its size", "5\r\nhelloXX\r\n0\r\n\r\n", 400},
      {"data followed by a bare LF", "5\r\nhello\n0\r\n\r\n", 400},
      {"data followed by CR and not LF", "5\r\nhello\rX0\r\n\r\n", 400},
      {"trailer with obs-fold", "0\r\nX-T: 1\r\n  fold\r\n\r\n", 400},
      {"trailer without colon", "0\r\nnocolon\r\n\r\n", 400},
      {"trailer with empty name", "0\r\n: v\r\n\r\n", 400},
      {"trailer ending with a bare LF", "0\r\nX-T: 1\n\r\n", 400},
      {"last chunk ending with a bare LF", "0\r\n\n", 400},
      {"too many trailer fields", "0\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", 400, fewTrailers},
      {"body above max_body_bytes", "b\r\nhello world\r\n0\r\n\r\n", 413, maxBody(10)},
  };
}

}  // namespace

TEST_CASE("request parser: hostile chunked bodies, each refused with its exact status in any split") {
  for (const auto& c : hostileChunkedBodies()) {
    CAPTURE(c.what);
    CAPTURE(c.body);
    BodyOutcome got = feedEveryWay(std::string(kChunkedHead) + c.body, c.limits);
    CHECK(got.error);
    CHECK(got.errorStatus == c.status);
    CHECK_FALSE(got.complete);
  }
}

TEST_CASE("request parser: a chunked body over max_body_bytes with bad framing after it gets one status") {
  // 20 bytes of data against a limit of 16, then no CRLF after the data.
  const std::string wire = std::string(kChunkedHead) + "14\r\n" + std::string(20, 'a') + "XX\r\n0\r\n\r\n";
  BodyOutcome got = feedEveryWay(wire, maxBody(16));
  CHECK(got.error);
}

TEST_CASE("request parser: reason phrases") {
  CHECK(usher::http::reasonPhrase(400) == "Bad Request");
  CHECK(usher::http::reasonPhrase(413) == "Content Too Large");
  CHECK(usher::http::reasonPhrase(414) == "URI Too Long");
  CHECK(usher::http::reasonPhrase(417) == "Expectation Failed");
  CHECK(usher::http::reasonPhrase(431) == "Request Header Fields Too Large");
  CHECK(usher::http::reasonPhrase(501) == "Not Implemented");
  CHECK(usher::http::reasonPhrase(505) == "HTTP Version Not Supported");
  CHECK(usher::http::reasonPhrase(299) == "Unknown");
}
