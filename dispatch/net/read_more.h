// Larger socket reads than libevent 2.1 does by itself.
#pragma once

#include <event2/bufferevent.h>

#include <cstddef>

namespace usher::net {

// libevent 2.1 reads at most 4 KiB per read callback (EVBUFFER_MAX_READ is a
// compile-time 4096; 2.2 made it configurable). For bulk transfers that costs
// a syscall and an epoll round per 4 KiB. This tops the bufferevent's input
// up from its socket in reads of up to 64 KiB while the input holds less than
// `limit` bytes, when libevent's own read came back full (4 KiB). EOF and errors are left for libevent's own read to report:
// the socket stays readable, so the next event delivers them. Returns bytes
// read.
size_t readMore(bufferevent* bev, size_t limit);

}  // namespace usher::net
