#include "dispatch/proxy/upstream_pool.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

namespace usher::dispatch {

UpstreamPool::UpstreamPool(event_base* base, size_t maxIdlePerBackend, std::chrono::milliseconds idleTimeout)
    : base_(base), maxIdle_(maxIdlePerBackend), idleTimeout_(idleTimeout) {}

UpstreamPool::~UpstreamPool() { clear(); }

void UpstreamPool::clear() {
  idle_.clear();
  idleTotal_ = 0;
}

UpstreamPtr UpstreamPool::acquire(const std::string& key) {
  auto it = idle_.find(key);
  if (it == idle_.end() || it->second.empty()) return nullptr;
  std::unique_ptr<Idle> idle = std::move(it->second.back());
  it->second.pop_back();
  if (it->second.empty()) idle_.erase(it);
  --idleTotal_;
  UpstreamPtr conn = std::move(idle->conn);
  bufferevent_setcb(conn->bev.get(), nullptr, nullptr, nullptr, nullptr);
  bufferevent_set_timeouts(conn->bev.get(), nullptr, nullptr);
  conn->reused = true;
  return conn;
}

UpstreamPtr UpstreamPool::connect(const net::Address& addr, const std::string& key) {
  int fd = ::socket(addr.storage.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return nullptr;
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  auto conn = std::make_unique<UpstreamConnection>();
  conn->bev.reset(bufferevent_socket_new(base_, fd, BEV_OPT_CLOSE_ON_FREE));
  if (!conn->bev) {
    ::close(fd);
    return nullptr;
  }
  conn->key = key;
  // Connection errors (refused, unreachable) are reported through the event
  // callback the owner installs, like any other error.
  if (bufferevent_socket_connect(conn->bev.get(), const_cast<sockaddr*>(addr.sa()), static_cast<int>(addr.length)) != 0) {
    return nullptr;
  }
  return conn;
}

void UpstreamPool::release(UpstreamPtr conn) {
  if (!conn || maxIdle_ == 0) return;
  auto& list = idle_[conn->key];
  if (list.size() >= maxIdle_) {
    // Full: close the oldest rather than refuse the warmest.
    list.pop_front();
    --idleTotal_;
  }
  auto idle = std::make_unique<Idle>();
  idle->pool = this;
  idle->key = conn->key;
  bufferevent* bev = conn->bev.get();
  idle->conn = std::move(conn);
  bufferevent_setcb(bev, onIdleRead, nullptr, onIdleEvent, idle.get());
  timeval tv = net::toTimeval(idleTimeout_);
  bufferevent_set_timeouts(bev, &tv, nullptr);
  bufferevent_setwatermark(bev, EV_READ, 0, 0);
  bufferevent_enable(bev, EV_READ);
  list.push_back(std::move(idle));
  ++idleTotal_;
}

void UpstreamPool::onIdleRead(bufferevent*, void* arg) {
  auto* idle = static_cast<Idle*>(arg);
  idle->pool->drop(idle);
}

void UpstreamPool::onIdleEvent(bufferevent*, short, void* arg) {
  auto* idle = static_cast<Idle*>(arg);
  idle->pool->drop(idle);
}

void UpstreamPool::drop(Idle* idle) {
  auto it = idle_.find(idle->key);
  if (it == idle_.end()) return;
  auto& list = it->second;
  for (auto li = list.begin(); li != list.end(); ++li) {
    if (li->get() == idle) {
      list.erase(li);  // frees the bufferevent; safe inside its own callback
      --idleTotal_;
      break;
    }
  }
  if (list.empty()) idle_.erase(it);
}

}  // namespace usher::dispatch
