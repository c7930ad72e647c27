#include "common/process_runner.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <optional>

namespace usher {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

struct Running {
  size_t index = 0;
  pid_t pid = -1;
  int pidfd = -1;
  int in = -1;
  int out = -1;
  int err = -1;
  size_t inWritten = 0;
  bool exited = false;
  int waitStatus = 0;
  std::optional<ProcessResult::Outcome> forced;  // timeout or output cap
  Clock::time_point started;
  Clock::time_point deadline;               // SIGTERM at this point
  std::optional<Clock::time_point> killAt;  // SIGKILL at this point
  std::optional<Clock::time_point> exitedAt;
};

void closeFd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

void setNonBlocking(int fd) {
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
}

// Starts spec; on failure fills result and returns nullopt.
std::optional<Running> spawnOne(const ProcessSpec& spec, size_t index, ProcessResult& result) {
  int inPipe[2] = {-1, -1}, outPipe[2] = {-1, -1}, errPipe[2] = {-1, -1};
  auto fail = [&](int e) -> std::optional<Running> {
    for (int* p : {inPipe, outPipe, errPipe}) {
      closeFd(p[0]);
      closeFd(p[1]);
    }
    result.outcome = ProcessResult::Outcome::SpawnFailed;
    result.spawnErrno = e;
    return std::nullopt;
  };
  if (spec.argv.empty()) return fail(EINVAL);
  if (::pipe2(inPipe, O_CLOEXEC) != 0 || ::pipe2(outPipe, O_CLOEXEC) != 0 || ::pipe2(errPipe, O_CLOEXEC) != 0)
    return fail(errno);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, inPipe[0], 0);
  posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1);
  posix_spawn_file_actions_adddup2(&actions, errPipe[1], 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &all);  // SIGPIPE and friends as a fresh process has them
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

  std::vector<char*> argv;
  for (const auto& a : spec.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (const auto& e : childEnvironment()) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  pid_t pid = -1;
  int rc = ::posix_spawn(&pid, argv[0], &actions, &attr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) return fail(rc);

  Running r;
  r.index = index;
  r.pid = pid;
  r.pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  closeFd(inPipe[0]);
  closeFd(outPipe[1]);
  closeFd(errPipe[1]);
  r.in = inPipe[1];
  r.out = outPipe[0];
  r.err = errPipe[0];
  setNonBlocking(r.in);
  setNonBlocking(r.out);
  setNonBlocking(r.err);
  if (spec.input.empty()) closeFd(r.in);
  r.started = Clock::now();
  r.deadline = r.started + spec.timeout;
  return r;
}

void signalGroup(const Running& r, int sig) {
  if (r.pid > 0) ::kill(-r.pid, sig);
}

}  // namespace

const std::vector<std::string>& childEnvironment() {
  static const std::vector<std::string> env = {
      "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
      "LANG=C.UTF-8",
  };
  return env;
}

std::vector<ProcessResult> runProcesses(const std::vector<ProcessSpec>& specs, unsigned parallel) {
  std::vector<ProcessResult> results(specs.size());
  std::vector<Running> running;
  size_t next = 0;
  parallel = std::max(1u, parallel);
  // A write to a provider that closed its stdin must not kill us.
  struct sigaction ignore {
  }, previous{};
  ignore.sa_handler = SIG_IGN;
  ::sigaction(SIGPIPE, &ignore, &previous);

  while (next < specs.size() || !running.empty()) {
    while (running.size() < parallel && next < specs.size()) {
      auto r = spawnOne(specs[next], next, results[next]);
      if (r) running.push_back(*r);
      ++next;
    }
    if (running.empty()) continue;

    std::vector<pollfd> fds;
    std::vector<std::pair<size_t, int*>> owners;  // (running index, which fd)
    auto now = Clock::now();
    milliseconds wait{1000};
    for (size_t i = 0; i < running.size(); ++i) {
      Running& r = running[i];
      if (r.in >= 0) {
        fds.push_back({r.in, POLLOUT, 0});
        owners.emplace_back(i, &r.in);
      }
      if (r.out >= 0) {
        fds.push_back({r.out, POLLIN, 0});
        owners.emplace_back(i, &r.out);
      }
      if (r.err >= 0) {
        fds.push_back({r.err, POLLIN, 0});
        owners.emplace_back(i, &r.err);
      }
      if (!r.exited && r.pidfd >= 0) {
        fds.push_back({r.pidfd, POLLIN, 0});
        owners.emplace_back(i, &r.pidfd);
      }
      auto until = [&](Clock::time_point t) {
        wait = std::min(wait, std::max(milliseconds(0),
                                       std::chrono::duration_cast<milliseconds>(t - now) + milliseconds(1)));
      };
      if (!r.forced) until(r.deadline);
      if (r.killAt) until(*r.killAt);
      if (r.exitedAt) until(*r.exitedAt + milliseconds(500));
      if (r.pidfd < 0 && !r.exited) wait = std::min(wait, milliseconds(50));  // no pidfd: poll waitpid
    }
    ::poll(fds.data(), fds.size(), static_cast<int>(wait.count()));

    for (size_t k = 0; k < fds.size(); ++k) {
      if (fds[k].revents == 0) continue;
      auto [i, which] = owners[k];
      Running& r = running[i];
      const ProcessSpec& spec = specs[r.index];
      ProcessResult& res = results[r.index];
      if (which == &r.in) {
        ssize_t n = ::write(r.in, spec.input.data() + r.inWritten, spec.input.size() - r.inWritten);
        if (n > 0) r.inWritten += static_cast<size_t>(n);
        if (n < 0 && errno != EAGAIN && errno != EINTR) closeFd(r.in);  // EPIPE: it does not want more
        if (r.inWritten >= spec.input.size()) closeFd(r.in);
      } else if (which == &r.out || which == &r.err) {
        char buf[16384];
        ssize_t n = ::read(*which, buf, sizeof buf);
        if (n > 0) {
          if (which == &r.out) {
            res.out.append(buf, static_cast<size_t>(n));
            if (res.out.size() > spec.maxStdout && !r.forced) {
              r.forced = ProcessResult::Outcome::OutputTooLarge;
              signalGroup(r, SIGTERM);
              r.killAt = Clock::now() + kKillGrace;
            }
          } else if (res.err.size() < kStderrKeep) {
            res.err.append(buf, std::min(static_cast<size_t>(n), kStderrKeep - res.err.size()));
          }
        } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
          closeFd(*which);
        }
      }
    }

    now = Clock::now();
    for (Running& r : running) {
      if (!r.exited) {
        int status = 0;
        pid_t w = ::waitpid(r.pid, &status, WNOHANG);
        if (w == r.pid) {
          r.exited = true;
          r.waitStatus = status;
          r.exitedAt = now;
          closeFd(r.pidfd);
        }
      }
      if (!r.forced && now >= r.deadline) {
        r.forced = ProcessResult::Outcome::Timeout;
        signalGroup(r, SIGTERM);
        r.killAt = now + kKillGrace;
      }
      if (r.killAt && now >= *r.killAt) {
        signalGroup(r, SIGKILL);
        r.killAt.reset();
      }
      // Exited, but something it started still holds the pipes: give it a
      // moment, then kill the group and stop reading.
      if (r.exited && r.exitedAt && now >= *r.exitedAt + milliseconds(500) && (r.out >= 0 || r.err >= 0)) {
        signalGroup(r, SIGKILL);
        closeFd(r.out);
        closeFd(r.err);
      }
    }

    // Finished: exited and both output pipes drained.
    for (size_t i = 0; i < running.size();) {
      Running& r = running[i];
      if (!(r.exited && r.out < 0 && r.err < 0)) {
        ++i;
        continue;
      }
      closeFd(r.in);
      ProcessResult& res = results[r.index];
      res.duration = std::chrono::duration_cast<milliseconds>(Clock::now() - r.started);
      if (r.forced) {
        res.outcome = *r.forced;
        signalGroup(r, SIGKILL);  // leftovers of the group
      } else if (WIFEXITED(r.waitStatus)) {
        res.outcome = ProcessResult::Outcome::Exited;
        res.exitStatus = WEXITSTATUS(r.waitStatus);
      } else {
        res.outcome = ProcessResult::Outcome::Signaled;
        res.signal = WTERMSIG(r.waitStatus);
      }
      running.erase(running.begin() + static_cast<std::ptrdiff_t>(i));
    }
  }
  ::sigaction(SIGPIPE, &previous, nullptr);
  return results;
}

std::string describe(const ProcessResult& r, const ProcessSpec& spec) {
  switch (r.outcome) {
    case ProcessResult::Outcome::Exited:
      return "exited with status " + std::to_string(r.exitStatus);
    case ProcessResult::Outcome::Signaled:
      return "killed by signal " + std::to_string(r.signal) + " (" + ::strsignal(r.signal) + ")";
    case ProcessResult::Outcome::Timeout: {
      char secs[32];
      std::snprintf(secs, sizeof secs, "%g", static_cast<double>(spec.timeout.count()) / 1000.0);
      return "timed out after " + std::string(secs) + "s (killed)";
    }
    case ProcessResult::Outcome::OutputTooLarge:
      return "printed more than " + std::to_string(spec.maxStdout) + " bytes (killed)";
    case ProcessResult::Outcome::SpawnFailed:
      return "could not be started: " + std::string(std::strerror(r.spawnErrno));
  }
  return "failed";
}

}  // namespace usher
