#include "dispatch/net/read_more.h"

#include <event2/buffer.h>
#include <sys/uio.h>

#include <algorithm>

namespace usher::net {

size_t readMore(bufferevent* bev, size_t limit) {
  evbuffer* in = bufferevent_get_input(bev);
  int fd = bufferevent_getfd(bev);
  // libevent reads min(FIONREAD, 4096): less than a full 4 KiB in the buffer
  // means the socket was drained, and a read now would only say EAGAIN (an
  // extra syscall per small WebSocket message).
  if (fd < 0 || evbuffer_get_length(in) < 4096) return 0;
  size_t total = 0;
  // A socket bufferevent keeps the end of its input frozen outside its own
  // read (bufferevent_sock.c unfreezes around evbuffer_read); do the same.
  evbuffer_unfreeze(in, 0);
  while (evbuffer_get_length(in) < limit) {
    size_t want = std::min<size_t>(limit - evbuffer_get_length(in), 64 * 1024);
    evbuffer_iovec v[2];
    int n = evbuffer_reserve_space(in, static_cast<ev_ssize_t>(want), v, 2);
    if (n <= 0) break;
    // evbuffer_iovec has struct iovec's layout on POSIX systems.
    ssize_t r = ::readv(fd, reinterpret_cast<iovec*>(v), n);
    if (r <= 0) {
      evbuffer_commit_space(in, v, 0);
      break;
    }
    size_t left = static_cast<size_t>(r);
    int used = 0;
    for (int i = 0; i < n && left > 0; ++i) {
      v[i].iov_len = std::min(left, v[i].iov_len);
      left -= v[i].iov_len;
      used = i + 1;
    }
    evbuffer_commit_space(in, v, used);
    total += static_cast<size_t>(r);
    if (static_cast<size_t>(r) < want) break;  // drained for now
  }
  evbuffer_freeze(in, 0);
  return total;
}

}  // namespace usher::net
