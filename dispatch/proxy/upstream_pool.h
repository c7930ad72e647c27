// Keep-alive connections to backends, pooled per backend address. An idle
// connection is watched: if the backend closes it or sends anything while it
// sits in the pool, it is dropped (a response nobody asked for means the
// connection is out of sync).
#pragma once

#include <chrono>
#include <cstdint>
#include <list>
#include <memory>
#include <string>
#include <unordered_map>

#include "dispatch/net/address.h"
#include "dispatch/net/libevent.h"

namespace usher::dispatch {

struct UpstreamConnection {
  net::BufferEventPtr bev;
  std::string key;        // backend address, "127.0.0.1:3773"
  bool reused = false;    // came out of the pool (may have been closed meanwhile)
  bool connected = false;
  uint64_t requests = 0;
};
using UpstreamPtr = std::unique_ptr<UpstreamConnection>;

class UpstreamPool {
public:
  UpstreamPool(event_base* base, size_t maxIdlePerBackend, std::chrono::milliseconds idleTimeout);
  ~UpstreamPool();
  UpstreamPool(const UpstreamPool&) = delete;
  UpstreamPool& operator=(const UpstreamPool&) = delete;

  // An idle pooled connection to `addr`, or nullptr.
  UpstreamPtr acquire(const std::string& key);
  // A new, connecting, connection. nullptr when no socket could be made.
  UpstreamPtr connect(const net::Address& addr, const std::string& key);
  // Gives a connection back for reuse (its callbacks are taken over). The
  // caller must only do this after a complete response to a complete request.
  void release(UpstreamPtr conn);

  size_t idleCount() const { return idleTotal_; }
  void clear();

private:
  struct Idle {
    UpstreamPtr conn;
    UpstreamPool* pool;
    std::string key;
  };
  static void onIdleEvent(bufferevent* bev, short what, void* arg);
  static void onIdleRead(bufferevent* bev, void* arg);
  void drop(Idle* idle);

  event_base* base_;
  size_t maxIdle_;
  std::chrono::milliseconds idleTimeout_;
  // Most recently released at the back: reuse the warmest connection first.
  std::unordered_map<std::string, std::list<std::unique_ptr<Idle>>> idle_;
  size_t idleTotal_ = 0;
};

}  // namespace usher::dispatch
