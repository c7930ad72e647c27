// Owning handles for libevent objects (Envoy source/common/event/libevent.h).
#pragma once

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>

#include <chrono>
#include <memory>

namespace usher::net {

template <auto F>
struct Free {
  template <class T>
  void operator()(T* p) const {
    F(p);
  }
};

using EventBasePtr = std::unique_ptr<event_base, Free<event_base_free>>;
using EventPtr = std::unique_ptr<event, Free<event_free>>;
using BufferEventPtr = std::unique_ptr<bufferevent, Free<bufferevent_free>>;
using EvBufferPtr = std::unique_ptr<evbuffer, Free<evbuffer_free>>;
using ListenerPtr = std::unique_ptr<evconnlistener, Free<evconnlistener_free>>;
using EvHttpPtr = std::unique_ptr<evhttp, Free<evhttp_free>>;

inline timeval toTimeval(std::chrono::milliseconds ms) {
  return timeval{static_cast<time_t>(ms.count() / 1000), static_cast<suseconds_t>((ms.count() % 1000) * 1000)};
}

}  // namespace usher::net
