#include "dispatch/session/child_process.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/process_runner.h"

namespace usher::dispatch {

namespace {

int pidfdOpen(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

// posix_spawn file actions and attributes, freed on every path.
struct SpawnSetup {
  posix_spawn_file_actions_t actions;
  posix_spawnattr_t attr;
  SpawnSetup() {
    posix_spawn_file_actions_init(&actions);
    posix_spawnattr_init(&attr);
  }
  ~SpawnSetup() {
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
  }
};

}  // namespace

const std::vector<std::string>& ChildProcess::environment() { return childEnvironment(); }

ChildProcess::ChildProcess(event_base* base, std::vector<std::string> argv, std::chrono::milliseconds timeout,
                           size_t maxStdout, Done done)
    : base_(base), argv_(std::move(argv)), timeout_(timeout), maxStdout_(maxStdout), done_(std::move(done)) {}

ChildProcess::~ChildProcess() {
  outEvent_.reset();
  errEvent_.reset();
  exitEvent_.reset();
  timer_.reset();
  deferred_.reset();
  killTimer_.reset();
  if (pid_ > 0 && !exited_) {
    // Only at shutdown or with the mint abandoned: give sudo its grace period
    // to relay SIGTERM (bounded), then SIGKILL, and reap.
    if (!stopping_) {
      ::kill(-pid_, SIGTERM);
      ::kill(pid_, SIGTERM);
    }
    for (int i = 0; i < 50; ++i) {
      if (::waitpid(pid_, nullptr, WNOHANG) == pid_) {
        exited_ = true;
        break;
      }
      ::usleep(10'000);
    }
    if (!exited_) {
      killGroup();
      ::waitpid(pid_, nullptr, 0);
    }
  }
  for (int fd : {outFd_, errFd_, pidfd_})
    if (fd >= 0) ::close(fd);
}

void ChildProcess::start() {
  started_ = std::chrono::steady_clock::now();
  deferred_.reset(event_new(base_, -1, 0, onDeferredDone, this));
  int outPipe[2] = {-1, -1};
  int errPipe[2] = {-1, -1};
  if (argv_.empty() || ::pipe2(outPipe, O_CLOEXEC | O_NONBLOCK) != 0 ||
      ::pipe2(errPipe, O_CLOEXEC | O_NONBLOCK) != 0) {
    result_.outcome = ChildResult::Outcome::SpawnFailed;
    result_.spawnErrno = argv_.empty() ? EINVAL : errno;
    for (int fd : {outPipe[0], outPipe[1], errPipe[0], errPipe[1]})
      if (fd >= 0) ::close(fd);
    event_active(deferred_.get(), EV_TIMEOUT, 0);
    return;
  }
  // stdin: /dev/null, or a pipe already holding the whole input (small, so it
  // fits the pipe's buffer: no writing from the loop) and closed after it.
  int inPipe[2] = {-1, -1};
  if (!input_.empty()) {
    bool ok = input_.size() <= kMaxInput && ::pipe2(inPipe, O_CLOEXEC) == 0;
    int err = errno;
    if (ok && ::write(inPipe[1], input_.data(), input_.size()) != static_cast<ssize_t>(input_.size())) {
      ok = false;
      err = errno;
    }
    if (inPipe[1] >= 0) ::close(inPipe[1]);
    if (!ok) {
      if (inPipe[0] >= 0) ::close(inPipe[0]);
      for (int fd : {outPipe[0], outPipe[1], errPipe[0], errPipe[1]}) ::close(fd);
      result_.outcome = ChildResult::Outcome::SpawnFailed;
      result_.spawnErrno = input_.size() > kMaxInput ? E2BIG : err;
      event_active(deferred_.get(), EV_TIMEOUT, 0);
      return;
    }
  }
  SpawnSetup s;
  if (inPipe[0] >= 0)
    posix_spawn_file_actions_adddup2(&s.actions, inPipe[0], 0);
  else
    posix_spawn_file_actions_addopen(&s.actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&s.actions, outPipe[1], 1);
  posix_spawn_file_actions_adddup2(&s.actions, errPipe[1], 2);
  // Its own process group, so a timeout kills everything it started; default
  // signal dispositions (we ignore SIGPIPE; the child must not inherit that).
  sigset_t none;
  sigemptyset(&none);
  sigset_t defaults;
  sigemptyset(&defaults);
  for (int sig : {SIGPIPE, SIGHUP, SIGINT, SIGTERM, SIGCHLD}) sigaddset(&defaults, sig);
  posix_spawnattr_setsigmask(&s.attr, &none);
  posix_spawnattr_setsigdefault(&s.attr, &defaults);
  posix_spawnattr_setpgroup(&s.attr, 0);
  posix_spawnattr_setflags(&s.attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

  std::vector<char*> argv;
  for (auto& a : argv_) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> envCopy = environment();
  std::vector<char*> envp;
  for (auto& e : envCopy) envp.push_back(e.data());
  envp.push_back(nullptr);

  // posix_spawn (not spawnp): the command is an absolute path or fails as missing.
  int rc = ::posix_spawn(&pid_, argv[0], &s.actions, &s.attr, argv.data(), envp.data());
  ::close(outPipe[1]);
  ::close(errPipe[1]);
  if (inPipe[0] >= 0) ::close(inPipe[0]);
  if (rc != 0) {
    ::close(outPipe[0]);
    ::close(errPipe[0]);
    pid_ = -1;
    result_.outcome = ChildResult::Outcome::SpawnFailed;
    result_.spawnErrno = rc;
    event_active(deferred_.get(), EV_TIMEOUT, 0);
    return;
  }
  outFd_ = outPipe[0];
  errFd_ = errPipe[0];
  pidfd_ = pidfdOpen(pid_);
  outEvent_.reset(event_new(base_, outFd_, EV_READ | EV_PERSIST, onStdout, this));
  errEvent_.reset(event_new(base_, errFd_, EV_READ | EV_PERSIST, onStderr, this));
  event_add(outEvent_.get(), nullptr);
  event_add(errEvent_.get(), nullptr);
  if (pidfd_ >= 0) {
    exitEvent_.reset(event_new(base_, pidfd_, EV_READ, onExit, this));
    event_add(exitEvent_.get(), nullptr);
  }
  timer_.reset(evtimer_new(base_, onTimeout, this));
  timeval tv = net::toTimeval(timeout_);
  evtimer_add(timer_.get(), &tv);
}

void ChildProcess::onStdout(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<ChildProcess*>(arg);
  self->readPipe(self->outFd_, self->outEvent_, self->result_.stdoutData, self->maxStdout_, true);
}

void ChildProcess::onStderr(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<ChildProcess*>(arg);
  self->readPipe(self->errFd_, self->errEvent_, self->result_.stderrData, kStderrKeep, false);
}

void ChildProcess::readPipe(int& fd, net::EventPtr& ev, std::string& into, size_t cap, bool isStdout) {
  char buf[4096];
  while (fd >= 0) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n > 0) {
      size_t room = into.size() < cap ? cap - into.size() : 0;
      into.append(buf, std::min(room, static_cast<size_t>(n)));
      if (isStdout && static_cast<size_t>(n) > room && !forcedOutcome_) {
        forcedOutcome_ = true;
        result_.outcome = ChildResult::Outcome::OutputTooLarge;
        stopGroup();
      }
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    // EOF (or error): this pipe is done.
    ev.reset();
    ::close(fd);
    fd = -1;
  }
  // Without pidfd (old kernels) the exit is noticed once both pipes close.
  if (pidfd_ < 0 && outFd_ < 0 && errFd_ < 0) onExit(-1, 0, this);
  maybeFinish();
}

void ChildProcess::onExit(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<ChildProcess*>(arg);
  int status = 0;
  if (::waitpid(self->pid_, &status, 0) == self->pid_) {
    self->exited_ = true;
    if (!self->forcedOutcome_) {
      if (WIFEXITED(status)) {
        self->result_.outcome = ChildResult::Outcome::Exited;
        self->result_.exitStatus = WEXITSTATUS(status);
      } else if (WIFSIGNALED(status)) {
        self->result_.outcome = ChildResult::Outcome::Signaled;
        self->result_.signal = WTERMSIG(status);
      }
    }
    // Whatever it left running in its group goes with it.
    self->killGroup();
  }
  self->maybeFinish();
}

void ChildProcess::onTimeout(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<ChildProcess*>(arg);
  if (!self->forcedOutcome_) {
    self->forcedOutcome_ = true;
    self->result_.outcome = ChildResult::Outcome::Timeout;
  }
  self->stopGroup();
  // A child that ignores its pipes closing still cannot hold us: close them.
  self->outEvent_.reset();
  self->errEvent_.reset();
  for (int* fd : {&self->outFd_, &self->errFd_}) {
    if (*fd >= 0) ::close(*fd);
    *fd = -1;
  }
  self->maybeFinish();
}

void ChildProcess::stopGroup() {
  if (pid_ <= 0 || exited_ || stopping_) return;
  stopping_ = true;
  ::kill(-pid_, SIGTERM);
  ::kill(pid_, SIGTERM);
  killTimer_.reset(evtimer_new(base_, onKillTimer, this));
  timeval tv = net::toTimeval(kKillGrace);
  evtimer_add(killTimer_.get(), &tv);
}

void ChildProcess::onKillTimer(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<ChildProcess*>(arg);
  if (self->exited_) return;
  self->killGroup();
  if (self->pidfd_ < 0) {
    ::waitpid(self->pid_, nullptr, 0);  // after SIGKILL: prompt
    self->exited_ = true;
    self->maybeFinish();
  }
}

void ChildProcess::killGroup() {
  if (pid_ > 0) ::kill(-pid_, SIGKILL);
}

void ChildProcess::maybeFinish() {
  // Done when the process has exited and both pipes are drained (so all of
  // its output is in), or when a forced outcome (timeout) closed the pipes.
  if (finished_ || !exited_ || outFd_ >= 0 || errFd_ >= 0) return;
  finish();
}

void ChildProcess::onDeferredDone(evutil_socket_t, short, void* arg) { static_cast<ChildProcess*>(arg)->finish(); }

void ChildProcess::finish() {
  if (finished_) return;
  finished_ = true;
  if (timer_) evtimer_del(timer_.get());
  result_.duration =
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - started_);
  // `done_` may destroy this object: nothing after it touches members.
  Done done = std::move(done_);
  ChildResult result = std::move(result_);
  done(result);
}

}  // namespace usher::dispatch
