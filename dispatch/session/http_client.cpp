#include "dispatch/session/http_client.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace usher::dispatch {

HttpClient::HttpClient(event_base* base, const net::Address& backend, std::string request,
                       std::chrono::milliseconds timeout, Done done)
    : base_(base),
      backend_(backend),
      request_(std::move(request)),
      timeout_(timeout),
      done_(std::move(done)),
      parser_(200, http::ResponseParser::Callbacks{
                       [this](http::ResponseHead& h) {
                         result_.status = h.status;
                         result_.headers = h.headers;
                         return true;
                       },
                       [this](std::string_view d) {
                         size_t room = kMaxBody - std::min(kMaxBody, result_.body.size());
                         result_.body.append(d.substr(0, room));
                       },
                       nullptr}) {}

HttpClient::~HttpClient() = default;

std::string HttpClient::buildRequest(std::string_view method, std::string_view path, std::string_view host,
                                     const std::vector<std::string>& headers, std::string_view body) {
  std::string r;
  r.append(method).append(" ").append(path).append(" HTTP/1.1\r\nHost: ").append(host).append("\r\n");
  r.append("Connection: close\r\nUser-Agent: usher-dispatch\r\n");
  for (const auto& h : headers) r.append(h).append("\r\n");
  if (!body.empty() || method == "POST" || method == "PUT" || method == "PATCH")
    r.append("Content-Length: ").append(std::to_string(body.size())).append("\r\n");
  r.append("\r\n").append(body);
  return r;
}

void HttpClient::start() {
  deferred_.reset(event_new(base_, -1, 0, onDeferred, this));
  timer_.reset(evtimer_new(base_, onTimeout, this));
  timeval tv = net::toTimeval(timeout_);
  evtimer_add(timer_.get(), &tv);
  int fd = ::socket(backend_.storage.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    fail(std::string("socket: ") + std::strerror(errno));
    return;
  }
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  bev_.reset(bufferevent_socket_new(base_, fd, BEV_OPT_CLOSE_ON_FREE));
  if (!bev_) {
    ::close(fd);
    fail("cannot create connection");
    return;
  }
  bufferevent_setcb(bev_.get(), onRead, nullptr, onEvent, this);
  bufferevent_enable(bev_.get(), EV_READ | EV_WRITE);
  parser_.reset(false);
  evbuffer_add(bufferevent_get_output(bev_.get()), request_.data(), request_.size());
  if (bufferevent_socket_connect(bev_.get(), const_cast<sockaddr*>(backend_.sa()), static_cast<int>(backend_.length)) !=
      0) {
    fail(std::string("connect: ") + std::strerror(errno));
  }
}

void HttpClient::onRead(bufferevent*, void* arg) {
  auto* self = static_cast<HttpClient*>(arg);
  evbuffer* in = bufferevent_get_input(self->bev_.get());
  while (!self->finished_ && evbuffer_get_length(in) > 0) {
    evbuffer_iovec v;
    if (evbuffer_peek(in, -1, nullptr, &v, 1) < 1) break;
    size_t n = self->parser_.feed(std::string_view(static_cast<const char*>(v.iov_base), v.iov_len));
    if (self->parser_.failed()) {
      self->fail(self->parser_.error());
      return;
    }
    evbuffer_drain(in, n);
    if (self->parser_.complete()) {
      if (self->result_.status / 100 == 1) {  // interim: wait for the final answer
        self->parser_.reset(false);
        continue;
      }
      self->result_.ok = true;
      self->finish();
      return;
    }
    if (n == 0) break;
  }
}

void HttpClient::onEvent(bufferevent*, short what, void* arg) {
  auto* self = static_cast<HttpClient*>(arg);
  if (what & BEV_EVENT_CONNECTED) return;
  if (what & BEV_EVENT_EOF) {
    self->parser_.feedEof();
    if (self->parser_.complete() && !self->parser_.failed()) {
      self->result_.ok = true;
      self->finish();
      return;
    }
    self->fail("backend closed the connection before answering");
    return;
  }
  self->fail(std::string("connection error: ") + evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
}

void HttpClient::onTimeout(evutil_socket_t, short, void* arg) { static_cast<HttpClient*>(arg)->fail("timeout"); }

void HttpClient::onDeferred(evutil_socket_t, short, void* arg) { static_cast<HttpClient*>(arg)->finish(); }

void HttpClient::fail(std::string why) {
  if (finished_) return;
  result_.ok = false;
  result_.error = std::move(why);
  // Never call back from inside start(): the caller may not be ready.
  if (deferred_) event_active(deferred_.get(), EV_TIMEOUT, 0);
}

void HttpClient::finish() {
  if (finished_) return;
  finished_ = true;
  if (timer_) evtimer_del(timer_.get());
  bev_.reset();
  Done done = std::move(done_);
  HttpClientResult result = std::move(result_);
  done(result);
}

}  // namespace usher::dispatch
