// One HTTP/1.1 request from the dispatcher itself to a backend (the mint
// exchange and the session check), on a connection of its own that is closed
// afterwards. The response body is kept up to a cap.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "dispatch/http/response_parser.h"
#include "dispatch/net/address.h"
#include "dispatch/net/libevent.h"

namespace usher::dispatch {

struct HttpClientResult {
  bool ok = false;       // a complete response arrived
  std::string error;     // why not
  int status = 0;
  std::vector<http::Header> headers;
  std::string body;
};

class HttpClient {
public:
  using Done = std::function<void(HttpClientResult&)>;
  static constexpr size_t kMaxBody = 64 * 1024;

  HttpClient(event_base* base, const net::Address& backend, std::string request, std::chrono::milliseconds timeout,
             Done done);
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  void start();

  // "METHOD path HTTP/1.1" with Host, Connection: close and the given extra
  // header lines ("Name: value"), then the body with its Content-Length.
  static std::string buildRequest(std::string_view method, std::string_view path, std::string_view host,
                                  const std::vector<std::string>& headers, std::string_view body);

private:
  static void onRead(bufferevent*, void* arg);
  static void onEvent(bufferevent*, short, void* arg);
  static void onTimeout(evutil_socket_t, short, void* arg);
  static void onDeferred(evutil_socket_t, short, void* arg);
  void fail(std::string why);
  void finish();

  event_base* base_;
  net::Address backend_;
  std::string request_;
  std::chrono::milliseconds timeout_;
  Done done_;
  HttpClientResult result_;
  http::ResponseParser parser_;
  net::BufferEventPtr bev_;
  net::EventPtr timer_;
  net::EventPtr deferred_;
  bool finished_ = false;
};

}  // namespace usher::dispatch
