// libFuzzer target for the strict HTTP/1.1 request parser: checks properties,
// not only that nothing crashes.
//
// Input layout: byte 0 seeds the split points; byte 1 picks max_request_line,
// max_header_bytes, max_headers and max_chunk_line; byte 2 picks max_body and
// the largest read; the rest is what a client sent. Every input is parsed
// twice, in one read and in reads of pseudo-random sizes, and:
//   - both give the same status, error status, headBytes, head and (without
//     an error) the same decoded body and the same bytes consumed;
//   - error statuses are only 400, 413, 414, 417, 431, 501, 505 (body: 400, 413);
//   - a complete head took at most the input, and the body decoded from the
//     rest is no longer than the rest;
//   - a complete head re-serialised (method SP target SP HTTP/1.x CRLF,
//     fields, CRLF) parses again to the same head (round trip);
//   - a head without framing is a complete message; a Content-Length body
//     decodes to exactly Content-Length bytes.
// A violation prints what differs and traps, so libFuzzer saves the input.
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

#include "dispatch/http/request_parser.h"

namespace {

using usher::http::Framing;
using usher::http::Limits;
using usher::http::RequestHead;
using usher::http::RequestParser;
using Status = RequestParser::Status;

[[noreturn]] void violated(const char* property, const std::string& detail = "") {
  std::fprintf(stderr, "PROPERTY VIOLATED: %s\n%s\n", property, detail.c_str());
  __builtin_trap();
}

void require(bool ok, const char* property, const std::string& detail = "") {
  if (!ok) violated(property, detail);
}

// Read sizes: one read of everything, or pseudo-random sizes in [1, maxRead].
class Reads {
 public:
  static Reads whole() { return Reads(0, 0); }
  Reads(uint32_t seed, size_t maxRead) : state_(seed | 1), maxRead_(maxRead) {}

  size_t next() {
    if (maxRead_ == 0) return SIZE_MAX;
    state_ ^= state_ << 13;  // xorshift32
    state_ ^= state_ >> 17;
    state_ ^= state_ << 5;
    return 1 + state_ % maxRead_;
  }

 private:
  uint32_t state_;
  size_t maxRead_;
};

std::string describe(const RequestHead& h) {
  std::string s = h.method + " " + h.target + " HTTP/" + std::to_string(h.versionMajor) + "." +
                  std::to_string(h.versionMinor) + "\n";
  for (const auto& hdr : h.headers) s += "[" + hdr.name + "]=[" + hdr.value + "]\n";
  s += "framing=" + std::to_string(static_cast<int>(h.framing)) +
       " contentLength=" + std::to_string(h.contentLength) + " keepAlive=" + std::to_string(h.keepAlive) +
       " upgrade=" + std::to_string(h.upgrade) + " expectContinue=" + std::to_string(h.expectContinue) +
       " methodCode=" + std::to_string(h.methodCode);
  return s;
}

std::string reserialize(const RequestHead& h) {
  std::string s = h.method + " " + h.target + " HTTP/" + std::to_string(h.versionMajor) + "." +
                  std::to_string(h.versionMinor) + "\r\n";
  for (const auto& hdr : h.headers) s += hdr.name + ": " + hdr.value + "\r\n";
  return s + "\r\n";
}

struct Run {
  Status status = Status::Incomplete;
  int errorStatus = 0;
  size_t headBytes = 0;
  std::string head;
  bool completeAfterHead = false;  // bodyComplete() right after parseHead
  RequestHead parsed;
  // Body, when the head was complete.
  bool bodyError = false;
  int bodyErrorStatus = 0;
  bool bodyComplete = false;
  size_t bodyConsumed = 0;
  std::string decoded;
};

std::string summary(const Run& r) {
  return "status=" + std::to_string(static_cast<int>(r.status)) + " error=" + std::to_string(r.errorStatus) +
         " headBytes=" + std::to_string(r.headBytes) + " bodyError=" + std::to_string(r.bodyError) + "/" +
         std::to_string(r.bodyErrorStatus) + " bodyComplete=" + std::to_string(r.bodyComplete) +
         " consumed=" + std::to_string(r.bodyConsumed) + " decoded=" + std::to_string(r.decoded.size()) +
         "\n" + r.head;
}

Run run(std::string_view wire, const Limits& limits, Reads reads) {
  Run r;
  RequestParser p(limits);
  // The head: parseHead sees everything received so far, one read more each time.
  size_t have = 0;
  do {
    size_t step = reads.next();
    have = step >= wire.size() - have ? wire.size() : have + step;
    r.status = p.parseHead(wire.substr(0, have));
  } while (r.status == Status::Incomplete && have < wire.size());

  if (r.status == Status::Error) {
    r.errorStatus = p.error().status;
    require(!p.error().reason.empty(), "an error has a reason");
    return r;
  }
  if (r.status != Status::Complete) return r;
  r.headBytes = p.headBytes();
  r.head = describe(p.head());
  r.parsed = p.head();
  r.completeAfterHead = p.bodyComplete();

  // The body: what follows the head, in reads of the same kind.
  std::string_view rest = wire.substr(std::min(r.headBytes, wire.size()));
  RequestParser::BodySink sink = [&](std::string_view d) { r.decoded.append(d); };
  while (r.bodyConsumed < rest.size()) {
    auto b = p.feedBody(rest.substr(r.bodyConsumed, reads.next()), sink);
    r.bodyConsumed += b.consumed;
    if (b.error) {
      r.bodyError = true;
      r.bodyErrorStatus = p.error().status;
      break;
    }
    if (b.complete || b.consumed == 0) break;
  }
  r.bodyComplete = !r.bodyError && p.bodyComplete();
  return r;
}

Limits limitsFrom(uint8_t a, uint8_t b) {
  static constexpr size_t kRequestLine[] = {16, 64, 256, 8192};
  static constexpr size_t kHeaderBytes[] = {48, 256, 1024, 32768};
  static constexpr size_t kHeaders[] = {1, 3, 8, 100};
  static constexpr size_t kChunkLine[] = {4, 16, 64, 4096};
  static constexpr uint64_t kBody[] = {0, 1, 16, 1000};
  Limits l;
  l.maxRequestLine = kRequestLine[a & 3];
  l.maxHeaderBytes = kHeaderBytes[(a >> 2) & 3];
  l.maxHeaders = kHeaders[(a >> 4) & 3];
  l.maxChunkLine = kChunkLine[(a >> 6) & 3];
  l.maxBody = kBody[b & 3];
  return l;
}

bool headErrorStatus(int s) {
  return s == 400 || s == 413 || s == 414 || s == 417 || s == 431 || s == 501 || s == 505;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 3) return 0;
  const Limits limits = limitsFrom(data[1], data[2]);
  const size_t maxRead = 1 + (data[2] >> 2);  // 1..64
  const std::string_view wire(reinterpret_cast<const char*>(data) + 3, size - 3);

  const Run one = run(wire, limits, Reads::whole());
  const Run split = run(wire, limits, Reads(data[0] | (uint32_t{data[2]} << 8), maxRead));
  const std::string both = "one read:    " + summary(one) + "\nsplit reads: " + summary(split);

  // Whatever the reads, the same answer.
  require(split.status == one.status, "same status in any split", both);
  require(split.errorStatus == one.errorStatus, "same error status in any split", both);
  require(split.headBytes == one.headBytes, "same headBytes in any split", both);
  require(split.head == one.head, "same head in any split", both);
  require(split.bodyError == one.bodyError, "same body error in any split", both);
  require(split.bodyErrorStatus == one.bodyErrorStatus, "same body error status in any split", both);
  if (!one.bodyError) {
    // Before an error, how much body was streamed out depends on the reads.
    require(split.decoded == one.decoded, "same decoded body in any split", both);
    require(split.bodyConsumed == one.bodyConsumed, "same body bytes consumed in any split", both);
    require(split.bodyComplete == one.bodyComplete, "same completeness in any split", both);
  }

  if (one.status == Status::Error)
    require(headErrorStatus(one.errorStatus), "head error status is allowed", both);
  if (one.bodyError)
    require(one.bodyErrorStatus == 400 || one.bodyErrorStatus == 413, "body error status is allowed", both);
  if (one.status != Status::Complete) return 0;

  require(one.headBytes > 0 && one.headBytes <= wire.size(), "headBytes within the input", both);
  const size_t rest = wire.size() - one.headBytes;
  require(one.decoded.size() <= rest && split.decoded.size() <= rest, "body no longer than its input", both);
  require(one.bodyConsumed <= rest, "consumed no more than given", both);
  if (one.parsed.framing == Framing::None)
    require(one.completeAfterHead, "no framing: complete after the head", both);
  if (one.parsed.framing == Framing::Length && one.bodyComplete) {
    require(one.decoded.size() == one.parsed.contentLength && one.bodyConsumed == one.parsed.contentLength,
            "Content-Length body is exactly Content-Length bytes", both);
  }

  // Round trip: the head as Usher would write it parses to the same head.
  // Re-serialising may add a space after each colon, so the head-size limit
  // is lifted; the others stay.
  const std::string again = reserialize(one.parsed);
  Limits relaxed = limits;
  relaxed.maxHeaderBytes = again.size() + 1;
  RequestParser p(relaxed);
  const Status s = p.parseHead(again);
  require(s == Status::Complete, "re-serialised head parses",
          again + "\nerror " + std::to_string(p.error().status) + " " + p.error().reason);
  require(p.headBytes() == again.size(), "re-serialised head is all head", again);
  require(describe(p.head()) == one.head, "re-serialised head parses to the same head",
          one.head + "\n---\n" + describe(p.head()));
  return 0;
}
