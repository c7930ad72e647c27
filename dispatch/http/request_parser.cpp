#include "dispatch/http/request_parser.h"

#include <algorithm>
#include <cstring>

#include "dispatch/http/headers.h"

namespace usher::http {

namespace {

// RFC 9110 §5.6.2 tchar.
bool isTchar(unsigned char c) {
  if (c >= '0' && c <= '9') return true;
  if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return true;
  return std::strchr("!#$%&'*+-.^_`|~", c) != nullptr && c != 0;
}

// RFC 9110 §5.5 field-vchar / SP / HTAB / obs-text. CR, LF and NUL never.
bool isFieldValueByte(unsigned char c) { return c == '\t' || (c >= 0x20 && c != 0x7f); }

bool isHex(unsigned char c) { return std::isxdigit(c) != 0; }

std::string_view trimOws(std::string_view v) {
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
  return v;
}

}  // namespace

const Header* RequestHead::find(std::string_view name) const {
  for (const auto& h : headers)
    if (iequals(h.name, name)) return &h;
  return nullptr;
}

size_t RequestHead::count(std::string_view name) const {
  return static_cast<size_t>(std::count_if(headers.begin(), headers.end(),
                                           [&](const Header& h) { return iequals(h.name, name); }));
}

RequestParser::RequestParser(const Limits& limits) : limits_(limits) {
  settings_.on_url = onUrl;
  settings_.on_header_field = onHeaderField;
  settings_.on_header_value = onHeaderValue;
  settings_.on_headers_complete = onHeadersComplete;
  settings_.on_body = onBody;
  settings_.on_message_complete = onMessageComplete;
  settings_.on_chunk_header = onChunkHeader;
  reset();
}

void RequestParser::reset() {
  http_parser_init(&parser_, HTTP_REQUEST);
  parser_.data = this;
  head_ = RequestHead{};
  error_ = ParseError{};
  headBytes_ = 0;
  headDone_ = false;
  messageComplete_ = false;
  lastWasValue_ = false;
  bodyBytes_ = 0;
  sink_ = nullptr;
  chunkScan_ = ChunkScan::Size;
  chunkLine_.clear();
  chunkRemaining_ = 0;
  trailerLines_ = 0;
  scanPos_ = 0;
  scanLines_ = 0;
  lineStart_ = 0;
  sawCr_ = false;
}

RequestParser::Status RequestParser::fail(int status, std::string reason) {
  error_.status = status;
  error_.reason = std::move(reason);
  return Status::Error;
}

// Byte-level checks of the head, RFC 9112 §2-§5, in one walk over the bytes
// that resumes where the previous read stopped (scanPos_), so a client
// sending one byte at a time costs linear work. Every rule is judged at a
// fixed byte: size limits and forbidden bytes (NUL, bare CR, bare LF) at the
// byte that breaks them, line grammar at the line's LF. So the first rule
// broken, and its status, do not depend on how the bytes were split into
// reads. Returns true with headLen set once the empty line ending the head
// has been seen; false with error_ set (status != 0) on a violation; false
// with status 0 if more bytes are needed.
bool RequestParser::scanHead(std::string_view buf, size_t& headLen) {
  error_.status = 0;
  for (size_t i = scanPos_; i < buf.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(buf[i]);
    bool requestLine = scanLines_ == 0;
    bool lineEnd = c == '\r' || c == '\n';
    // Size first: a byte past a limit is refused whatever it is.
    if (!lineEnd && requestLine && i - lineStart_ + 1 > limits_.maxRequestLine) {
      fail(414, "request line too long");
      return false;
    }
    if (i + 1 > limits_.maxHeaderBytes) {
      fail(requestLine ? 414 : 431, requestLine ? "request line too long" : "request head too large");
      return false;
    }
    if (sawCr_) {
      if (c != '\n') {
        fail(400, "bare CR in request head");
        return false;
      }
      sawCr_ = false;
      scanPos_ = i + 1;
      std::string_view line = buf.substr(lineStart_, i - 1 - lineStart_);
      lineStart_ = i + 1;
      if (!scanLine(line, headLen)) return false;
      if (headLen != 0) return true;
      continue;
    }
    if (c == '\r') {
      sawCr_ = true;
    } else if (c == '\n') {
      fail(400, "bare LF in request head");
      return false;
    } else if (c == 0) {
      fail(400, "NUL in request head");
      return false;
    }
    scanPos_ = i + 1;
  }
  return false;
}

// One complete line of the head (without its CRLF). Sets headLen at the
// empty line that ends the head.
bool RequestParser::scanLine(std::string_view line, size_t& headLen) {
  if (scanLines_ == 0) {
    // RFC 9112 §2.2: a server SHOULD ignore at least one empty line before
    // the request line (left over after a body by some clients). Allow a few.
    if (line.empty()) {
      if (lineStart_ > 8) {
        fail(400, "too many empty lines before request line");
        return false;
      }
      return true;
    }
    if (!scanRequestLine(line)) return false;
    scanLines_ = 1;
    return true;
  }
  if (line.empty()) {
    headLen = lineStart_;
    return true;
  }
  if (line.front() == ' ' || line.front() == '\t') {
    fail(400, "obsolete line folding in header");
    return false;
  }
  if (++scanLines_ - 1 > limits_.maxHeaders) {
    fail(431, "too many header fields");
    return false;
  }
  size_t colon = line.find(':');
  if (colon == std::string_view::npos || colon == 0) {
    fail(400, "malformed header line");
    return false;
  }
  for (size_t i = 0; i < colon; ++i) {
    if (!isTchar(static_cast<unsigned char>(line[i]))) {
      // RFC 9112 §5.1: no whitespace between field name and colon.
      fail(400, line[i] == ' ' || line[i] == '\t' ? "whitespace before colon in header"
                                                  : "invalid character in header name");
      return false;
    }
  }
  for (size_t i = colon + 1; i < line.size(); ++i) {
    if (!isFieldValueByte(static_cast<unsigned char>(line[i]))) {
      fail(400, "invalid character in header value");
      return false;
    }
  }
  return true;
}

// request-line = method SP request-target SP HTTP-version (RFC 9112 §3).
bool RequestParser::scanRequestLine(std::string_view line) {
  size_t sp1 = line.find(' ');
  if (sp1 == std::string_view::npos || sp1 == 0) {
    fail(400, "malformed request line");
    return false;
  }
  std::string_view method = line.substr(0, sp1);
  for (unsigned char c : method) {
    if (!isTchar(c)) {
      fail(400, "invalid method");
      return false;
    }
  }
  size_t sp2 = line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos) {
    fail(400, "HTTP/0.9 request (no version)");
    return false;
  }
  std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  std::string_view version = line.substr(sp2 + 1);
  if (version.find(' ') != std::string_view::npos || target.empty()) {
    fail(400, "malformed request line");
    return false;
  }
  for (unsigned char c : target) {
    if (c <= 0x20 || c >= 0x7f) {
      fail(400, "invalid character in request target");
      return false;
    }
  }
  if (version.size() != 8 || version.substr(0, 5) != "HTTP/" || !std::isdigit(static_cast<unsigned char>(version[5])) ||
      version[6] != '.' || !std::isdigit(static_cast<unsigned char>(version[7]))) {
    fail(400, "malformed HTTP version");
    return false;
  }
  if (method == "PRI" && target == "*" && version == "HTTP/2.0") {
    fail(505, "HTTP/2 connection preface");
    return false;
  }
  if (version != "HTTP/1.1" && version != "HTTP/1.0") {
    fail(505, "HTTP version not supported");
    return false;
  }
  if (method == "CONNECT") {
    fail(501, "CONNECT not supported");
    return false;
  }
  auto startsWithNoCase = [&](std::string_view prefix) {
    return target.size() > prefix.size() && iequals(target.substr(0, prefix.size()), prefix);
  };
  bool absolute = startsWithNoCase("http://") || startsWithNoCase("https://");
  if (target.front() != '/' && !absolute && !(target == "*" && method == "OPTIONS")) {
    fail(400, "request target is neither origin-form nor absolute-form");
    return false;
  }
  return true;
}

RequestParser::Status RequestParser::parseHead(std::string_view buffered) {
  size_t headLen = 0;
  if (!scanHead(buffered, headLen)) return error_.status != 0 ? Status::Error : Status::Incomplete;

  std::string_view head = buffered.substr(0, headLen);
  size_t n = http_parser_execute(&parser_, &settings_, head.data(), head.size());
  if (HTTP_PARSER_ERRNO(&parser_) != HPE_OK && HTTP_PARSER_ERRNO(&parser_) != HPE_PAUSED) {
    if (error_.status != 0) return Status::Error;  // set by a callback
    return fail(400, std::string("parse error: ") + http_errno_description(HTTP_PARSER_ERRNO(&parser_)));
  }
  if (!headDone_ || n != headLen) return fail(400, "malformed request head");
  headBytes_ = headLen;
  return Status::Complete;
}

int RequestParser::onUrl(http_parser* p, const char* at, size_t len) {
  static_cast<RequestParser*>(p->data)->head_.target.append(at, len);
  return 0;
}

int RequestParser::onHeaderField(http_parser* p, const char* at, size_t len) {
  auto* self = static_cast<RequestParser*>(p->data);
  // Trailer fields (after a chunked body) never join the head that was
  // already routed and forwarded; they are dropped.
  if (self->headDone_) return 0;
  if (self->lastWasValue_ || self->head_.headers.empty()) {
    self->head_.headers.emplace_back();
    self->lastWasValue_ = false;
  }
  self->head_.headers.back().name.append(at, len);
  return 0;
}

int RequestParser::onHeaderValue(http_parser* p, const char* at, size_t len) {
  auto* self = static_cast<RequestParser*>(p->data);
  if (self->headDone_) return 0;
  self->lastWasValue_ = true;
  self->head_.headers.back().value.append(at, len);
  return 0;
}

int RequestParser::onHeadersComplete(http_parser* p) {
  auto* self = static_cast<RequestParser*>(p->data);
  auto& h = self->head_;
  for (auto& hdr : h.headers) {
    std::string_view v = trimOws(hdr.value);
    if (v.size() != hdr.value.size()) hdr.value = std::string(v);
  }
  h.methodCode = static_cast<http_method>(p->method);
  h.method = http_method_str(h.methodCode);
  h.versionMajor = p->http_major;
  h.versionMinor = p->http_minor;
  h.keepAlive = http_should_keep_alive(p) != 0;
  self->headDone_ = true;
  if (!self->checkFraming()) return -1;
  if (!self->absoluteToOrigin()) return -1;
  return 0;
}

// RFC 9112 §3.2.2: a server MUST accept absolute-form and use its authority
// as the Host, ignoring the Host field's value; §3.2 still requires exactly
// one Host field in HTTP/1.1 (checked before this). Backends get origin-form.
bool RequestParser::absoluteToOrigin() {
  auto& h = head_;
  if (h.target.front() == '/' || h.target == "*") return true;
  size_t schemeEnd = h.target.find("://") + 3;
  size_t pathStart = h.target.find_first_of("/?", schemeEnd);
  std::string authority =
      h.target.substr(schemeEnd, pathStart == std::string::npos ? std::string::npos : pathStart - schemeEnd);
  // host [":" port]: reg-name, IPv4 or [IPv6]; no userinfo.
  bool ok = !authority.empty() && authority.size() <= 255;
  for (unsigned char c : authority)
    if (!(std::isalnum(c) || c == '.' || c == '-' || c == '_' || c == '~' || c == ':' || c == '[' || c == ']'))
      ok = false;
  if (!ok) {
    fail(400, "invalid authority in absolute-form target");
    return false;
  }
  std::string rest = pathStart == std::string::npos ? "/" : h.target.substr(pathStart);
  if (rest.front() == '?') rest.insert(0, "/");
  h.target = rest;
  for (auto& hdr : h.headers)
    if (iequals(hdr.name, "host")) hdr.value = authority;
  return true;
}

// Message body length, RFC 9112 §6. Anything ambiguous is refused.
bool RequestParser::checkFraming() {
  auto& h = head_;
  size_t clCount = h.count("content-length");
  size_t teCount = h.count("transfer-encoding");
  if (clCount > 0 && teCount > 0) {
    fail(400, "Content-Length with Transfer-Encoding");
    return false;
  }
  if (clCount > 1) {
    fail(400, "repeated Content-Length");
    return false;
  }
  if (h.versionMinor == 1 && h.count("host") != 1) {
    // RFC 9112 §3.2: exactly one Host in HTTP/1.1.
    fail(400, h.count("host") == 0 ? "missing Host" : "repeated Host");
    return false;
  }
  if (clCount == 1) {
    std::string_view v = h.find("content-length")->value;
    if (v.empty() || v.size() > 18 ||
        !std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      fail(400, "invalid Content-Length");
      return false;
    }
    h.contentLength = std::stoull(std::string(v));
    h.framing = Framing::Length;
    if (limits_.maxBody != 0 && h.contentLength > limits_.maxBody) {
      fail(413, "body larger than max_body_bytes");
      return false;
    }
  }
  if (teCount > 0) {
    if (h.versionMinor == 0) {
      // RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message means faulty framing.
      fail(400, "Transfer-Encoding in HTTP/1.0 request");
      return false;
    }
    // Every coding named, across all Transfer-Encoding fields, must be
    // "chunked", exactly once, and last.
    std::vector<std::string_view> codings;
    for (const auto& hdr : h.headers) {
      if (!iequals(hdr.name, "transfer-encoding")) continue;
      std::string_view v = hdr.value;
      size_t pos = 0;
      while (pos <= v.size()) {
        size_t comma = v.find(',', pos);
        std::string_view c = trimOws(v.substr(pos, comma == std::string_view::npos ? v.npos : comma - pos));
        if (!c.empty()) codings.push_back(c);
        if (comma == std::string_view::npos) break;
        pos = comma + 1;
      }
    }
    // RFC 9112 §6.3: chunked anywhere but last leaves the length unknowable
    // (400); a coding we do not implement is 501 (§6.1).
    size_t chunked = static_cast<size_t>(
        std::count_if(codings.begin(), codings.end(), [](std::string_view c) { return iequals(c, "chunked"); }));
    if (codings.empty() || chunked > 1 || (chunked == 1 && !iequals(codings.back(), "chunked"))) {
      fail(400, "malformed Transfer-Encoding");
      return false;
    }
    if (codings.size() != 1) {
      fail(501, "unsupported transfer coding");
      return false;
    }
    if (chunked == 0) {
      fail(501, "unsupported transfer coding");
      return false;
    }
    h.framing = Framing::Chunked;
  }
  const Header* expect = h.find("expect");
  if (expect) {
    if (h.count("expect") != 1 || !iequals(expect->value, "100-continue")) {
      fail(417, "unsupported expectation");
      return false;
    }
    h.expectContinue = true;
  }
  h.upgrade = parser_.upgrade && h.framing == Framing::None;
  return true;
}

int RequestParser::onChunkHeader(http_parser*) { return 0; }

int RequestParser::onBody(http_parser* p, const char* at, size_t len) {
  auto* self = static_cast<RequestParser*>(p->data);
  self->bodyBytes_ += len;
  if (self->limits_.maxBody != 0 && self->bodyBytes_ > self->limits_.maxBody) {
    self->fail(413, "body larger than max_body_bytes");
    return -1;
  }
  if (self->sink_) (*self->sink_)(std::string_view(at, len));
  return 0;
}

int RequestParser::onMessageComplete(http_parser* p) {
  auto* self = static_cast<RequestParser*>(p->data);
  self->messageComplete_ = true;
  // Stop right at the end of this message: what follows is the next request.
  http_parser_pause(p, 1);
  return 0;
}

// Strict scan of chunked framing (RFC 9112 §7.1) before http-parser sees it:
// http-parser skips chunk extensions without a bound and accepts some bytes in
// them that RFC 9112 does not. Returns how many bytes of `data` belong to this
// message (stops at its end). On a violation, error_ is set, `bad` is true
// and the count is that of the valid bytes before it, which still go to
// http-parser first: then a rule broken earlier in the stream (the body
// limit) wins over a later one, however the reads were split.
size_t RequestParser::scanChunked(std::string_view data, bool& bad) {
  size_t i = 0;
  while (i < data.size()) {
    switch (chunkScan_) {
      case ChunkScan::Size:
      case ChunkScan::Trailer: {
        bool trailer = chunkScan_ == ChunkScan::Trailer;
        const size_t lineBegin = i;
        size_t lf = data.find('\n', i);
        size_t end = lf == std::string_view::npos ? data.size() : lf + 1;
        for (size_t j = i; j < end; ++j) {
          unsigned char c = static_cast<unsigned char>(data[j]);
          if (c == '\n') {
            if (chunkLine_.empty() || chunkLine_.back() != '\r') {
              fail(400, "bare LF in chunked framing");
              bad = true;
            return lineBegin;
            }
            chunkLine_.pop_back();
            break;
          }
          if (!chunkLine_.empty() && chunkLine_.back() == '\r') {
            fail(400, "bare CR in chunked framing");
            bad = true;
            return lineBegin;
          }
          if (c == 0 || (c < 0x20 && c != '\t' && c != '\r') || c == 0x7f) {
            fail(400, "invalid byte in chunked framing");
            bad = true;
            return lineBegin;
          }
          chunkLine_.push_back(static_cast<char>(c));
          if (chunkLine_.size() > limits_.maxChunkLine + 1) {
            fail(400, trailer ? "trailer line too long" : "chunk size line too long");
            bad = true;
            return lineBegin;
          }
        }
        i = end;
        if (lf == std::string_view::npos) return i;  // line continues in the next read
        std::string_view line = chunkLine_;
        if (trailer) {
          if (line.empty()) {
            chunkScan_ = ChunkScan::Done;
            chunkLine_.clear();
            return i;
          }
          if (++trailerLines_ > limits_.maxHeaders || line.front() == ' ' || line.front() == '\t' ||
              line.find(':') == std::string_view::npos || line.front() == ':') {
            fail(400, "malformed trailer");
            bad = true;
            return lineBegin;
          }
          chunkLine_.clear();
          break;
        }
        size_t digits = 0;
        while (digits < line.size() && isHex(static_cast<unsigned char>(line[digits]))) ++digits;
        if (digits == 0 || digits > 15) {
          fail(400, "invalid chunk size");
          bad = true;
            return lineBegin;
        }
        if (digits < line.size()) {
          // chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS value ] )
          std::string_view ext = trimOws(line.substr(digits));
          if (ext.empty() || ext.front() != ';') {
            fail(400, "invalid chunk size");
            bad = true;
            return lineBegin;
          }
        }
        chunkRemaining_ = std::stoull(std::string(line.substr(0, digits)), nullptr, 16);
        chunkLine_.clear();
        chunkScan_ = chunkRemaining_ == 0 ? ChunkScan::Trailer : ChunkScan::Data;
        break;
      }
      case ChunkScan::Data: {
        uint64_t take = std::min<uint64_t>(chunkRemaining_, data.size() - i);
        i += take;
        chunkRemaining_ -= take;
        if (chunkRemaining_ == 0) chunkScan_ = ChunkScan::DataCr;
        break;
      }
      case ChunkScan::DataCr:
        if (data[i] != '\r') {
          fail(400, "chunk data not followed by CRLF");
          bad = true;
          return i;
        }
        ++i;
        chunkScan_ = ChunkScan::DataLf;
        break;
      case ChunkScan::DataLf:
        if (data[i] != '\n') {
          fail(400, "chunk data not followed by CRLF");
          bad = true;
          return i;
        }
        ++i;
        chunkScan_ = ChunkScan::Size;
        break;
      case ChunkScan::Done:
        return i;
    }
  }
  return i;
}

RequestParser::BodyResult RequestParser::feedBody(std::string_view data, const BodySink& sink) {
  BodyResult r;
  if (messageComplete_ || data.empty()) {
    r.complete = messageComplete_;
    return r;
  }
  std::string_view mine = data;
  bool scanBad = false;
  if (head_.framing == Framing::Chunked) mine = data.substr(0, scanChunked(data, scanBad));
  sink_ = &sink;
  size_t n = mine.empty() ? 0 : http_parser_execute(&parser_, &settings_, mine.data(), mine.size());
  sink_ = nullptr;
  auto err = HTTP_PARSER_ERRNO(&parser_);
  if (err != HPE_OK && err != HPE_PAUSED) {
    // A callback's verdict (413) replaces the scan's, which lies further on.
    if (error_.status == 0) fail(400, std::string("bad body framing: ") + http_errno_description(err));
    r.error = true;
    return r;
  }
  if (scanBad) {
    r.error = true;
    return r;
  }
  r.consumed = n;
  r.complete = messageComplete_;
  return r;
}

std::string_view reasonPhrase(int status) {
  switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 103: return "Early Hints";
    case 200: return "OK";
    case 204: return "No Content";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 417: return "Expectation Failed";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
  }
}

}  // namespace usher::http
