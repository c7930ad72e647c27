#include "dispatch/net/file_watch.h"

#include <sys/inotify.h>
#include <unistd.h>

#include <cstring>

namespace usher::dispatch {

FileWatch::FileWatch(event_base* base, std::vector<std::string> paths, std::chrono::milliseconds debounce,
                     std::function<void(size_t)> onChange)
    : debounce_(debounce), onChange_(std::move(onChange)) {
  fd_ = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (fd_ < 0) return;
  for (auto& p : paths) {
    Watched w;
    w.path = p;
    auto slash = p.rfind('/');
    w.dir = slash == std::string::npos ? "." : slash == 0 ? "/" : p.substr(0, slash);
    w.name = slash == std::string::npos ? p : p.substr(slash + 1);
    w.wd = inotify_add_watch(fd_, w.dir.c_str(),
                             IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | IN_MODIFY |
                                 IN_ATTRIB);
    files_.push_back(std::move(w));
  }
  readEvent_.reset(event_new(base, fd_, EV_READ | EV_PERSIST, onReadable, this));
  debounceTimer_.reset(evtimer_new(base, onDebounce, this));
  event_add(readEvent_.get(), nullptr);
}

FileWatch::~FileWatch() {
  readEvent_.reset();
  if (fd_ >= 0) ::close(fd_);
}

void FileWatch::onReadable(evutil_socket_t, short, void* arg) { static_cast<FileWatch*>(arg)->readEvents(); }

void FileWatch::readEvents() {
  alignas(inotify_event) char buf[8192];
  bool any = false;
  while (true) {
    ssize_t n = ::read(fd_, buf, sizeof buf);
    if (n <= 0) break;
    for (char* p = buf; p < buf + n;) {
      auto* ev = reinterpret_cast<inotify_event*>(p);
      p += sizeof(inotify_event) + ev->len;
      if (ev->len == 0) continue;
      for (auto& w : files_) {
        if (w.wd == ev->wd && w.name == ev->name) {
          w.pending = true;
          any = true;
        }
      }
    }
  }
  if (any) {
    // Editors and tools write in several steps; wait for them to settle.
    timeval tv = net::toTimeval(debounce_);
    evtimer_add(debounceTimer_.get(), &tv);
  }
}

void FileWatch::onDebounce(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<FileWatch*>(arg);
  for (size_t i = 0; i < self->files_.size(); ++i) {
    if (self->files_[i].pending) {
      self->files_[i].pending = false;
      self->onChange_(i);
    }
  }
}

}  // namespace usher::dispatch
