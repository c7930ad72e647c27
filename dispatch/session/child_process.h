// Runs a command inside the event loop without blocking it: no shell, a
// fixed minimal environment, stdin from /dev/null (or a short input), its own process group
// (killed whole on timeout or when its output runs over the cap), stdout
// captured up to a cap, stderr kept (truncated) for the log.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "dispatch/net/libevent.h"

namespace usher::dispatch {

struct ChildResult {
  enum class Outcome { Exited, Signaled, Timeout, OutputTooLarge, SpawnFailed } outcome = Outcome::SpawnFailed;
  int exitStatus = 0;    // Exited
  int signal = 0;        // Signaled
  int spawnErrno = 0;    // SpawnFailed (ENOENT: command missing)
  std::string stdoutData;
  std::string stderrData;  // first kStderrKeep bytes
  std::chrono::microseconds duration{0};
};

class ChildProcess {
public:
  static constexpr size_t kStderrKeep = 2048;
  static constexpr std::chrono::milliseconds kKillGrace{500};
  using Done = std::function<void(ChildResult&)>;

  ChildProcess(event_base* base, std::vector<std::string> argv, std::chrono::milliseconds timeout,
               size_t maxStdout, Done done);
  ~ChildProcess();  // kills the process group if still running
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  // What the command reads on stdin (at most kMaxInput bytes); default: /dev/null.
  static constexpr size_t kMaxInput = 32 * 1024;
  void setInput(std::string input) { input_ = std::move(input); }

  // Starts the command; `done` runs later from the loop, exactly once (also
  // when spawning fails).
  void start();

  // The environment every command gets.
  static const std::vector<std::string>& environment();

private:
  static void onStdout(evutil_socket_t, short, void* arg);
  static void onStderr(evutil_socket_t, short, void* arg);
  static void onExit(evutil_socket_t, short, void* arg);
  static void onTimeout(evutil_socket_t, short, void* arg);
  static void onDeferredDone(evutil_socket_t, short, void* arg);
  void readPipe(int& fd, net::EventPtr& ev, std::string& into, size_t cap, bool isStdout);
  // SIGTERM first: sudo relays it to a command running as another user,
  // which we may not signal ourselves; SIGKILL follows after a grace period.
  void stopGroup();
  void killGroup();
  static void onKillTimer(evutil_socket_t, short, void* arg);
  void maybeFinish();
  void finish();

  event_base* base_;
  std::vector<std::string> argv_;
  std::string input_;
  std::chrono::milliseconds timeout_;
  size_t maxStdout_;
  Done done_;
  ChildResult result_;
  pid_t pid_ = -1;
  int pidfd_ = -1;
  int outFd_ = -1;
  int errFd_ = -1;
  bool exited_ = false;
  bool finished_ = false;
  bool forcedOutcome_ = false;  // timeout or output cap decided the outcome
  std::chrono::steady_clock::time_point started_;
  net::EventPtr outEvent_;
  net::EventPtr errEvent_;
  net::EventPtr exitEvent_;
  net::EventPtr timer_;
  net::EventPtr deferred_;
  net::EventPtr killTimer_;
  bool stopping_ = false;
};

}  // namespace usher::dispatch
