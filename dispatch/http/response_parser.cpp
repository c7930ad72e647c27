#include "dispatch/http/response_parser.h"

#include <algorithm>

#include "dispatch/http/headers.h"

namespace usher::http {

ResponseParser::ResponseParser(size_t maxHeaders, Callbacks callbacks)
    : maxHeaders_(maxHeaders), cb_(std::move(callbacks)) {
  settings_.on_status = onStatus;
  settings_.on_header_field = onHeaderField;
  settings_.on_header_value = onHeaderValue;
  settings_.on_headers_complete = onHeadersComplete;
  settings_.on_body = onBody;
  settings_.on_message_complete = onMessageComplete;
  reset(false);
}

void ResponseParser::reset(bool headRequest) {
  http_parser_init(&parser_, HTTP_RESPONSE);
  parser_.data = this;
  head_ = ResponseHead{};
  error_.clear();
  headRequest_ = headRequest;
  headDone_ = false;
  complete_ = false;
  lastWasValue_ = false;
}

size_t ResponseParser::feed(std::string_view data) {
  if (complete_ || failed() || data.empty()) return 0;
  size_t n = http_parser_execute(&parser_, &settings_, data.data(), data.size());
  auto err = HTTP_PARSER_ERRNO(&parser_);
  if (err != HPE_OK && err != HPE_PAUSED && error_.empty()) {
    error_ = std::string("invalid response: ") + http_errno_description(err);
  }
  // Notified outside http-parser's callbacks so the owner may reset us.
  if (complete_ && !failed() && cb_.onComplete) cb_.onComplete();
  return n;
}

void ResponseParser::feedEof() {
  if (complete_ || failed()) return;
  http_parser_execute(&parser_, &settings_, nullptr, 0);
  if (!complete_ && error_.empty()) error_ = "backend closed the connection mid-response";
  if (complete_ && !failed() && cb_.onComplete) cb_.onComplete();
}

int ResponseParser::onStatus(http_parser* p, const char* at, size_t len) {
  static_cast<ResponseParser*>(p->data)->head_.reason.append(at, len);
  return 0;
}

int ResponseParser::onHeaderField(http_parser* p, const char* at, size_t len) {
  auto* self = static_cast<ResponseParser*>(p->data);
  if (self->headDone_) return 0;  // trailers are dropped, never merged into the head
  if (self->lastWasValue_ || self->head_.headers.empty()) {
    if (self->head_.headers.size() >= self->maxHeaders_) {
      self->error_ = "too many header fields in response";
      return -1;
    }
    self->head_.headers.emplace_back();
    self->lastWasValue_ = false;
  }
  self->head_.headers.back().name.append(at, len);
  return 0;
}

int ResponseParser::onHeaderValue(http_parser* p, const char* at, size_t len) {
  auto* self = static_cast<ResponseParser*>(p->data);
  if (self->headDone_) return 0;
  self->lastWasValue_ = true;
  self->head_.headers.back().value.append(at, len);
  return 0;
}

int ResponseParser::onHeadersComplete(http_parser* p) {
  auto* self = static_cast<ResponseParser*>(p->data);
  auto& h = self->head_;
  for (auto& hdr : h.headers) {
    auto& v = hdr.value;
    while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.pop_back();
    // A value with CR or LF would split the line when re-serialised.
    if (v.find_first_of("\r\n") != std::string::npos || hdr.name.find_first_of("\r\n: ") != std::string::npos) {
      self->error_ = "invalid header in response";
      return -1;
    }
  }
  h.status = p->status_code;
  h.versionMinor = p->http_minor;
  size_t cl = std::count_if(h.headers.begin(), h.headers.end(),
                            [](const Header& x) { return iequals(x.name, "content-length"); });
  bool chunked = (p->flags & F_CHUNKED) != 0;
  bool te = std::any_of(h.headers.begin(), h.headers.end(),
                        [](const Header& x) { return iequals(x.name, "transfer-encoding"); });
  if (cl > 1 || (cl == 1 && te)) {
    self->error_ = "ambiguous response framing";
    return -1;
  }
  bool noBody = self->headRequest_ || h.status / 100 == 1 || h.status == 204 || h.status == 304;
  if (noBody) {
    h.framing = ResponseFraming::None;
  } else if (chunked) {
    h.framing = ResponseFraming::Chunked;
  } else if (te) {
    // RFC 9112 §6.3: a response with a transfer coding other than chunked is
    // delimited by the connection closing.
    h.framing = ResponseFraming::UntilClose;
  } else if (cl == 1) {
    h.framing = ResponseFraming::Length;
    h.contentLength = p->content_length;
  } else {
    h.framing = ResponseFraming::UntilClose;
  }
  h.upgrade = h.status == 101;
  h.keepAlive = http_should_keep_alive(p) != 0 && h.framing != ResponseFraming::UntilClose;
  self->headDone_ = true;
  if (self->cb_.onHead && !self->cb_.onHead(h)) {
    if (self->error_.empty()) self->error_ = "response refused";
    return -1;
  }
  // 1: tell http-parser there is no body (HEAD; 1xx, 204, 304 whatever
  // framing they name, RFC 9110 §15.3.5, §15.4.5).
  return noBody ? 1 : 0;
}

int ResponseParser::onBody(http_parser* p, const char* at, size_t len) {
  auto* self = static_cast<ResponseParser*>(p->data);
  if (self->cb_.onBody) self->cb_.onBody(std::string_view(at, len));
  return 0;
}

int ResponseParser::onMessageComplete(http_parser* p) {
  auto* self = static_cast<ResponseParser*>(p->data);
  self->complete_ = true;
  http_parser_pause(p, 1);
  return 0;
}

}  // namespace usher::http
