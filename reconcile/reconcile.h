// One reconcile run: lock, read (map, state, env files, unit status), plan,
// then (unless --dry-run) write env files and the state file atomically and
// ask systemd to enable/start/restart/stop/disable. Everything outside the
// process that a run touches is reached through Environment, so tests can
// run the whole thing against temp dirs and a fake manager.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/usermap.h"
#include "reconcile/config.h"
#include "reconcile/plan.h"
#include "reconcile/ports.h"
#include "reconcile/systemd.h"
#include "reconcile/vm.h"

namespace usher::reconcile {

// Exit codes (documented in --help and the README).
constexpr int kExitOk = 0;         // every mapped user is provisioned, nothing failed
constexpr int kExitPartial = 1;    // some users (or map lines) failed; the others were done
constexpr int kExitCannotRun = 2;  // nothing was done: bad config, lock held, no map, no bus...

struct Options {
  bool dryRun = false;
  bool noWait = false;     // the lock: fail at once instead of waiting lock_wait
  std::string busAddress;  // "" = the system bus
};

struct Environment {
  OsUserLookup lookup;
  PortBusy busy;
  std::function<std::unique_ptr<SystemdManager>(std::string& error)> connect;
  std::function<Clock::time_point()> now;
  ProviderRunner providers;  // VM providers (docs/vm-provider.md)
};

// getpwnam, bind() probes on backend_address, sd-bus to systemd.
Environment systemEnvironment(const Config& config, const Options& options);

struct Outcome {
  std::string status;  // unchanged, planned, changed, failed
  std::string error;
};

struct Report {
  bool dryRun = false;
  int exitCode = kExitOk;
  std::string startedAt;
  double durationMs = 0;
  double lockWaitMs = 0;
  // Where the time went: reading map/state/env files, asking systemd for
  // unit status, planning, applying (files and systemd jobs).
  double readMs = 0;
  double observeMs = 0;
  double planMs = 0;
  double applyMs = 0;
  std::vector<MapError> mapErrors;
  std::vector<std::string> errors;    // run-level problems
  std::vector<std::string> warnings;  // e.g. skipped entries of the state file
  std::optional<Plan> plan;
  std::vector<Outcome> users;     // parallel to plan->users
  std::vector<Outcome> removals;  // parallel to plan->removals
  VmReport vm;
  bool reloaded = false;
  bool stateWritten = false;
  size_t envFilesWritten = 0;
  uint64_t mutatingCalls = 0;
};

Report run(const Config& config, const Options& options, const Environment& env);

// usher-reconcile --purge USER [--vm-profile NAME]: destroys the VM of a user
// who is no longer mapped, its persistent data volume included, and drops
// the user's VM entry from the state file. Refused (exit 2) while the user is
// still mapped. Returns the exit code; `out` gets the provider's reply and
// what was done, as the --json document.
int purge(const Config& config, const Options& options, const Environment& env, const std::string& osUser,
          const std::string& profileName, nlohmann::ordered_json& out);

// The --json document (README, "usher-reconcile").
nlohmann::ordered_json toJson(const Report& report, const Config& config);
// A few human lines, one per user that changes or fails.
std::string toText(const Report& report);

}  // namespace usher::reconcile
