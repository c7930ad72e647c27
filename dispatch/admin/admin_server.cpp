#include "dispatch/admin/admin_server.h"

#include <sys/socket.h>

#include <cstring>
#include <string_view>

namespace usher::dispatch {

AdminServer::AdminServer(event_base* base, const Metrics& metrics, std::function<bool()> ready)
    : metrics_(metrics), ready_(std::move(ready)), http_(evhttp_new(base)) {
  evhttp_set_gencb(http_.get(), onRequest, this);
  evhttp_set_allowed_methods(http_.get(), EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
  evhttp_set_max_headers_size(http_.get(), 8192);
  evhttp_set_max_body_size(http_.get(), 0);
  evhttp_set_timeout(http_.get(), 10);
}

bool AdminServer::listen(const net::Address& addr, std::string& error) {
  std::string ip = addr.ip();
  evhttp_bound_socket* sock = evhttp_bind_socket_with_handle(http_.get(), ip.c_str(), addr.port());
  if (!sock) {
    error = std::string("cannot bind admin listener ") + addr.str() + ": " + std::strerror(errno);
    return false;
  }
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  getsockname(evhttp_bound_socket_get_fd(sock), reinterpret_cast<sockaddr*>(&ss), &len);
  bound_ = net::fromSockaddr(reinterpret_cast<sockaddr*>(&ss), len);
  return true;
}

void AdminServer::onRequest(evhttp_request* req, void* arg) { static_cast<AdminServer*>(arg)->handle(req); }

void AdminServer::handle(evhttp_request* req) {
  const evhttp_uri* uri = evhttp_request_get_evhttp_uri(req);
  const char* p = uri ? evhttp_uri_get_path(uri) : nullptr;
  std::string_view path = p ? p : "";
  evkeyvalq* headers = evhttp_request_get_output_headers(req);
  evbuffer* body = evbuffer_new();
  int code = 200;
  const char* reason = "OK";
  if (path == "/healthz") {
    evhttp_add_header(headers, "Content-Type", "text/plain; charset=utf-8");
    evbuffer_add_printf(body, "ok\n");
  } else if (path == "/readyz") {
    evhttp_add_header(headers, "Content-Type", "text/plain; charset=utf-8");
    if (ready_()) {
      evbuffer_add_printf(body, "ready\n");
    } else {
      code = 503;
      reason = "Service Unavailable";
      evbuffer_add_printf(body, "not ready: user map or state file not loaded, or shutting down\n");
    }
  } else if (path == "/metrics") {
    evhttp_add_header(headers, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
    std::string text = metrics_.render();
    evbuffer_add(body, text.data(), text.size());
  } else {
    code = 404;
    reason = "Not Found";
    evhttp_add_header(headers, "Content-Type", "text/plain; charset=utf-8");
    evbuffer_add_printf(body, "not found; try /healthz, /readyz or /metrics\n");
  }
  evhttp_add_header(headers, "Cache-Control", "no-store");
  evhttp_send_reply(req, code, reason, body);
  evbuffer_free(body);
}

}  // namespace usher::dispatch
