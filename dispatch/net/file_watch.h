// Watches files for replacement or change with inotify. It watches their
// directories, not the files: tools (and usher-reconcile) replace files by
// rename, which a watch on the old inode would never see.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "dispatch/net/libevent.h"

namespace usher::dispatch {

class FileWatch {
public:
  // `onChange(index)` is called with the index into `paths` of a changed
  // file, at most once per debounce period per file.
  FileWatch(event_base* base, std::vector<std::string> paths, std::chrono::milliseconds debounce,
            std::function<void(size_t)> onChange);
  ~FileWatch();
  FileWatch(const FileWatch&) = delete;
  FileWatch& operator=(const FileWatch&) = delete;

  bool ok() const { return fd_ >= 0; }

private:
  static void onReadable(evutil_socket_t, short, void* arg);
  static void onDebounce(evutil_socket_t, short, void* arg);
  void readEvents();

  struct Watched {
    std::string path;
    std::string dir;
    std::string name;
    int wd = -1;
    bool pending = false;
  };
  int fd_ = -1;
  std::vector<Watched> files_;
  std::chrono::milliseconds debounce_;
  std::function<void(size_t)> onChange_;
  net::EventPtr readEvent_;
  net::EventPtr debounceTimer_;
};

}  // namespace usher::dispatch
