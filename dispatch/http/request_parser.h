// Strict HTTP/1.1 request parsing (RFC 9112) for untrusted clients.
//
// Two layers: a byte-level scan that refuses everything RFC 9112 lets a
// server refuse and http-parser 2.9 tolerates (obs-fold, bare CR or LF,
// NUL, whitespace before ':', HTTP/0.9 and HTTP/2 prefaces, oversize lines),
// then http-parser itself for the request line, headers and body framing.
// Knows nothing of sockets: bytes in, a head or an error out; body bytes in,
// decoded body bytes out. Both may be fed split at any byte.
#pragma once

#include <http_parser.h>

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace usher::http {

struct Header {
  std::string name;
  std::string value;
};

struct Limits {
  size_t maxRequestLine = 8192;
  size_t maxHeaderBytes = 32768;  // whole head, request line included
  size_t maxHeaders = 100;
  size_t maxChunkLine = 4096;     // one chunk-size line, extensions included
  uint64_t maxBody = 0;           // 0: unlimited
};

enum class Framing { None, Length, Chunked };

struct RequestHead {
  std::string method;
  http_method methodCode = HTTP_GET;
  std::string target;
  unsigned versionMajor = 1;
  unsigned versionMinor = 1;
  std::vector<Header> headers;  // in arrival order, names as sent
  Framing framing = Framing::None;
  uint64_t contentLength = 0;   // when framing == Length
  bool keepAlive = true;        // per http_should_keep_alive
  bool upgrade = false;         // Upgrade + Connection: upgrade, no body
  bool expectContinue = false;  // Expect: 100-continue

  // First header with this name (case-insensitive), or nullptr.
  const Header* find(std::string_view name) const;
  size_t count(std::string_view name) const;
};

struct ParseError {
  int status = 400;     // 400, 413, 414, 431, 501 or 505
  std::string reason;   // short, for the audit line ("bare LF in header")
};

class RequestParser {
public:
  explicit RequestParser(const Limits& limits);
  RequestParser(const RequestParser&) = delete;
  RequestParser& operator=(const RequestParser&) = delete;

  enum class Status { Incomplete, Complete, Error };

  // Looks for a complete head at the start of `buffered` (everything received
  // so far for this request). Complete: `head()` is filled and `headBytes()`
  // says how many bytes it took. Incomplete: call again with more bytes.
  // Error: `error()` says why; the connection must be closed after answering.
  Status parseHead(std::string_view buffered);

  const RequestHead& head() const { return head_; }
  RequestHead& head() { return head_; }
  size_t headBytes() const { return headBytes_; }
  const ParseError& error() const { return error_; }

  // Feeds body bytes that followed the head. Decoded body data is passed to
  // `sink` (possibly several times). Returns bytes consumed; stops right after
  // the end of the message, so what follows (a pipelined request) is left.
  using BodySink = std::function<void(std::string_view)>;
  struct BodyResult {
    size_t consumed = 0;
    bool complete = false;
    bool error = false;
  };
  BodyResult feedBody(std::string_view data, const BodySink& sink);
  bool bodyComplete() const { return messageComplete_; }
  uint64_t bodyBytes() const { return bodyBytes_; }

  // Ready for the next request on the same connection.
  void reset();

private:
  static int onUrl(http_parser* p, const char* at, size_t len);
  static int onHeaderField(http_parser* p, const char* at, size_t len);
  static int onHeaderValue(http_parser* p, const char* at, size_t len);
  static int onHeadersComplete(http_parser* p);
  static int onBody(http_parser* p, const char* at, size_t len);
  static int onMessageComplete(http_parser* p);
  static int onChunkHeader(http_parser* p);

  Status fail(int status, std::string reason);
  bool scanHead(std::string_view buffered, size_t& headLen);
  bool scanRequestLine(std::string_view line);
  bool scanLine(std::string_view line, size_t& headLen);
  bool checkFraming();
  bool absoluteToOrigin();
  size_t scanChunked(std::string_view data, bool& bad);

  Limits limits_;
  http_parser parser_{};
  http_parser_settings settings_{};
  RequestHead head_;
  ParseError error_;
  size_t headBytes_ = 0;
  bool headDone_ = false;
  bool messageComplete_ = false;
  bool lastWasValue_ = false;
  uint64_t bodyBytes_ = 0;
  const BodySink* sink_ = nullptr;
  size_t scanPos_ = 0;    // head bytes already checked
  size_t lineStart_ = 0;  // where the line being scanned starts
  size_t scanLines_ = 0;  // lines checked: request line + header lines
  bool sawCr_ = false;    // the last byte checked was a CR
  // Chunked-framing scanner (bounds chunk extensions, which http-parser skips unbounded).
  enum class ChunkScan { Size, Data, DataCr, DataLf, Trailer, Done } chunkScan_ = ChunkScan::Size;
  std::string chunkLine_;
  uint64_t chunkRemaining_ = 0;
  size_t trailerLines_ = 0;
};

// The reason phrase Usher sends for a status code.
std::string_view reasonPhrase(int status);

}  // namespace usher::http
