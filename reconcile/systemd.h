// What usher-reconcile needs from the service manager, as an interface: the
// real one speaks D-Bus to systemd (sdbus_manager.h); unit tests plug in a
// fake. Every call that changes something in systemd goes through one of the
// non-virtual mutators below, which count it, so "a second run with nothing
// to do makes no mutating call" is a number a test can check.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace usher::reconcile {

struct UnitStatus {
  std::string loadState;      // loaded, not-found, masked, error, bad-setting
  std::string activeState;    // active, reloading, inactive, failed, activating, deactivating
  std::string subState;       // running, dead, auto-restart, ...
  // Whether some loaded unit wants or requires it: "enabled" as the running
  // manager sees it. Cheap to ask, unlike UnitFileState, which systemd
  // computes from disk on every call (milliseconds per unit).
  bool wanted = false;
  // enabled, disabled, static, masked, ...: read only where a decision needs
  // it (units not wanted, and units of removed users); "" when not read.
  std::string unitFileState;
  // Read for the units that are not running (they are about to be started)
  // and for one running unit, which stands for the template and its drop-ins.
  bool needDaemonReload = false;
  // CLOCK_REALTIME µs of the last entry into "active"; 0: never, or not read
  // (only read where ObserveRequest::activeSinceToo asks).
  uint64_t activeEnterUsec = 0;

  bool running() const {
    return activeState == "active" || activeState == "activating" || activeState == "reloading";
  }
};

using UnitStatusMap = std::unordered_map<std::string, UnitStatus>;

struct ObserveRequest {
  std::vector<std::string> units;
  // Also read UnitFileState of these (removed users: disable or not).
  std::vector<std::string> fileStateToo;
  // Also read ActiveEnterTimestamp of these (their env file may be newer
  // than the running instance).
  std::vector<std::string> activeSinceToo;
};

enum class JobKind { Start, Restart, Stop };
const char* toString(JobKind kind);

struct JobRequest {
  JobKind kind = JobKind::Start;
  std::string unit;
};

struct JobOutcome {
  bool ok = false;
  std::string result;  // systemd's job result ("done", "failed", "timeout", ...) or our error
};

class SystemdManager {
public:
  virtual ~SystemdManager() = default;

  // Status of each unit (loading it if systemd has not yet). nullopt and
  // `error` set when the manager cannot be asked at all.
  virtual std::optional<UnitStatusMap> observe(const ObserveRequest& request,
                                               std::string& error) = 0;

  // Mutators: each counts one mutating call per D-Bus method it sends.
  bool reload(std::string& error);
  // `changed` tells whether any symlink was created or removed (then the
  // caller reloads, as `systemctl enable` does, so `wanted` follows).
  bool enableUnitFiles(const std::vector<std::string>& units, bool& changed, std::string& error);
  bool disableUnitFiles(const std::vector<std::string>& units, bool& changed, std::string& error);
  // Queues every job ("replace" mode) at once and waits for each to finish,
  // at most `timeout` per job. One outcome per request, in order.
  std::vector<JobOutcome> runJobs(const std::vector<JobRequest>& jobs,
                                  std::chrono::milliseconds timeout);

  uint64_t mutatingCalls() const { return mutatingCalls_; }

protected:
  virtual bool doReload(std::string& error) = 0;
  virtual bool doEnableUnitFiles(const std::vector<std::string>& units, bool& changed,
                                 std::string& error) = 0;
  virtual bool doDisableUnitFiles(const std::vector<std::string>& units, bool& changed,
                                  std::string& error) = 0;
  virtual std::vector<JobOutcome> doRunJobs(const std::vector<JobRequest>& jobs,
                                            std::chrono::milliseconds timeout) = 0;

private:
  uint64_t mutatingCalls_ = 0;
};

}  // namespace usher::reconcile
