// Parses backend responses with http-parser. A backend runs its user's code,
// so it is not trusted with framing: Usher re-serialises the head and
// re-frames the body itself, and never forwards a backend's raw framing to a
// client connection that may be shared by other users' requests.
#pragma once

#include <http_parser.h>

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "dispatch/http/request_parser.h"

namespace usher::http {

enum class ResponseFraming { None, Length, Chunked, UntilClose };

struct ResponseHead {
  int status = 0;
  unsigned versionMinor = 1;
  std::string reason;
  std::vector<Header> headers;
  ResponseFraming framing = ResponseFraming::None;
  uint64_t contentLength = 0;
  bool keepAlive = true;  // the backend connection can be reused afterwards
  bool upgrade = false;   // 101 Switching Protocols
};

class ResponseParser {
public:
  struct Callbacks {
    std::function<bool(ResponseHead&)> onHead;        // false aborts
    std::function<void(std::string_view)> onBody;
    std::function<void()> onComplete;                  // message done (also for 1xx)
  };

  ResponseParser(size_t maxHeaders, Callbacks callbacks);
  ResponseParser(const ResponseParser&) = delete;
  ResponseParser& operator=(const ResponseParser&) = delete;

  // Starts a new response; `headRequest` suppresses the body (RFC 9110 §9.3.2).
  void reset(bool headRequest);

  // Returns bytes consumed. Parsing pauses after each complete message
  // (including interim 1xx), so the caller decides what comes next; bytes
  // after a 101 are the upgraded protocol's and are not consumed.
  size_t feed(std::string_view data);
  // The backend closed its side: completes a read-until-close body.
  void feedEof();

  bool failed() const { return !error_.empty(); }
  const std::string& error() const { return error_; }
  bool headSeen() const { return headDone_; }
  bool complete() const { return complete_; }
  const ResponseHead& head() const { return head_; }

private:
  static int onStatus(http_parser* p, const char* at, size_t len);
  static int onHeaderField(http_parser* p, const char* at, size_t len);
  static int onHeaderValue(http_parser* p, const char* at, size_t len);
  static int onHeadersComplete(http_parser* p);
  static int onBody(http_parser* p, const char* at, size_t len);
  static int onMessageComplete(http_parser* p);

  size_t maxHeaders_;
  Callbacks cb_;
  http_parser parser_{};
  http_parser_settings settings_{};
  ResponseHead head_;
  std::string error_;
  bool headRequest_ = false;
  bool headDone_ = false;
  bool complete_ = false;
  bool lastWasValue_ = false;
};

}  // namespace usher::http
