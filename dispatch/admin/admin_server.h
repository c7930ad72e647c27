// The admin listener: /healthz, /readyz, /metrics, on its own address (never
// the proxy's), served by libevent's evhttp.
#pragma once

#include <functional>
#include <string>

#include "dispatch/admin/metrics.h"
#include "dispatch/net/address.h"
#include "dispatch/net/libevent.h"

namespace usher::dispatch {

class AdminServer {
public:
  AdminServer(event_base* base, const Metrics& metrics, std::function<bool()> ready);
  // Binds; returns false with `error` set on failure.
  bool listen(const net::Address& addr, std::string& error);
  const net::Address& bound() const { return bound_; }

private:
  static void onRequest(evhttp_request* req, void* arg);
  void handle(evhttp_request* req);

  const Metrics& metrics_;
  std::function<bool()> ready_;
  net::EvHttpPtr http_;
  net::Address bound_;
};

}  // namespace usher::dispatch
