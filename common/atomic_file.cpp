#include "common/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace usher {

namespace {

std::string errnoText(int err) { return std::strerror(err); }

// Closes a descriptor on every exit path; release() hands it over when the
// caller must check close() itself.
class Fd {
public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }

private:
  int fd_;
};

bool writeAll(int fd, std::string_view data) {
  while (!data.empty()) {
    // Bounded chunks: Linux caps a single write at ~2 GiB anyway.
    size_t chunk = std::min<size_t>(data.size(), size_t{1} << 30);
    ssize_t n = ::write(fd, data.data(), chunk);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (n == 0) {  // no progress and no errno: do not spin
      errno = EIO;
      return false;
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

}  // namespace

bool writeFileAtomically(const std::string& path, std::string_view content, mode_t mode,
                         std::string& error) {
  auto fail = [&](const std::string& what, int err) {
    error = "cannot write " + path + ": " + what + ": " + errnoText(err);
    return false;
  };

  // The temp file must live in the target's directory: rename() is only
  // atomic within one file system.
  size_t slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  if (base.empty() || base == "." || base == "..") return fail("not a file name", EINVAL);

  // Opened before anything is written, so that after the rename the only
  // step left that can fail is the directory fsync itself.
  Fd dirFd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dirFd.get() < 0) return fail("open directory " + dir, errno);

  std::string tmp = path.substr(0, slash == std::string::npos ? 0 : slash + 1) + "." + base +
                    ".tmp.XXXXXX";
  // mkostemp is mkstemp plus O_CLOEXEC, so no child forked meanwhile inherits it.
  Fd fd(::mkostemp(tmp.data(), O_CLOEXEC));
  if (fd.get() < 0) return fail("create temp file in " + dir, errno);

  auto failAndUnlink = [&](const std::string& what, int err) {
    ::unlink(tmp.c_str());
    return fail(what + " " + tmp, err);
  };
  if (!writeAll(fd.get(), content)) return failAndUnlink("write", errno);
  // fchmod, not the umask-filtered open mode: the caller asked for exactly `mode`.
  if (::fchmod(fd.get(), mode) != 0) return failAndUnlink("chmod", errno);
  if (::fsync(fd.get()) != 0) return failAndUnlink("fsync", errno);
  // close() can report a deferred write error (NFS); such a file must not replace the target.
  if (::close(fd.release()) != 0) return failAndUnlink("close", errno);
  if (::rename(tmp.c_str(), path.c_str()) != 0) return failAndUnlink("rename", errno);

  // Without this the rename itself may not survive a crash. The new content
  // is already in place here and cannot be taken back, so say so.
  if (::fsync(dirFd.get()) != 0) {
    return fail("replaced, but fsync directory " + dir, errno);
  }
  return true;
}

std::optional<std::string> readFile(const std::string& path, std::string& error) {
  auto fail = [&](int err) -> std::optional<std::string> {
    error = "cannot read " + path + ": " + errnoText(err);
    return std::nullopt;
  };
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return fail(errno);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return fail(errno);
  if (S_ISDIR(st.st_mode)) return fail(EISDIR);

  std::string out;
  if (S_ISREG(st.st_mode) && st.st_size > 0) out.reserve(static_cast<size_t>(st.st_size));
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail(errno);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

}  // namespace usher
