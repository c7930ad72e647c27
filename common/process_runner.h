// Runs commands to completion, several at once, without a shell: stdin fed
// from a string, stdout captured up to a cap, stderr kept (truncated) for
// the log, a fixed minimal environment, each in its own process group, which
// is signalled whole on timeout (SIGTERM, then SIGKILL after a grace
// period) or when stdout runs over the cap. For usher-reconcile's calls to
// VM providers; usher-dispatch has its own, inside its event loop.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>
#include <vector>

namespace usher {

struct ProcessSpec {
  std::vector<std::string> argv;  // argv[0] is an absolute path
  std::string input;              // written to stdin, then stdin is closed
  std::chrono::milliseconds timeout{60'000};
  size_t maxStdout = 1 << 20;
};

struct ProcessResult {
  enum class Outcome {
    Exited,
    Signaled,
    Timeout,
    OutputTooLarge,
    SpawnFailed
  } outcome = Outcome::SpawnFailed;
  int exitStatus = 0;  // Exited
  int signal = 0;      // Signaled
  int spawnErrno = 0;  // SpawnFailed
  std::string out;
  std::string err;  // the first kStderrKeep bytes
  std::chrono::milliseconds duration{0};
};

constexpr size_t kStderrKeep = 4096;
constexpr std::chrono::milliseconds kKillGrace{2000};

// The whole environment of every command Usher runs (mint commands, VM
// providers): a fixed PATH and LANG, nothing of Usher's own.
const std::vector<std::string>& childEnvironment();

// Runs every spec, at most `parallel` at a time; one result per spec, in order.
std::vector<ProcessResult> runProcesses(const std::vector<ProcessSpec>& specs, unsigned parallel);

// "exited with status 3", "killed by signal 9 (Killed)", "timed out after 5s", ...
std::string describe(const ProcessResult& r, const ProcessSpec& spec);

}  // namespace usher
