#include "reconcile/reconcile.h"

#include <dirent.h>
#include <pwd.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <set>
#include <thread>

#include <spdlog/spdlog.h>

#include "common/atomic_file.h"
#include "common/logfmt.h"
#include "common/statefile.h"
#include "reconcile/envfile.h"
#include "reconcile/sdbus_manager.h"

namespace usher::reconcile {

namespace {

using std::chrono::steady_clock;

double msSince(steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(steady_clock::now() - t0).count();
}

std::string dirOf(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

std::string baseOf(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// mkdir -p; false and `error` set on failure.
bool makeDirs(const std::string& dir, std::string& error) {
  if (dir.empty() || dir == "/" || dir == ".") return true;
  struct stat st {};
  if (::stat(dir.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode)) return true;
    error = dir + " exists and is not a directory";
    return false;
  }
  if (!makeDirs(dirOf(dir), error)) return false;
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
    error = "cannot create " + dir + ": " + std::strerror(errno);
    return false;
  }
  return true;
}

// Held for the whole run; the kernel drops it when the process dies, however
// it dies, so a SIGKILLed run never leaves a stale lock behind.
class RunLock {
public:
  RunLock() = default;
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;
  ~RunLock() {
    if (fd_ >= 0) ::close(fd_);
  }

  bool acquire(const std::string& path, std::chrono::milliseconds wait, std::string& error,
               double& waitedMs) {
    auto t0 = steady_clock::now();
    if (!makeDirs(dirOf(path), error)) return false;
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd_ < 0) {
      error = "cannot open lock file " + path + ": " + std::strerror(errno);
      return false;
    }
    auto deadline = t0 + wait;
    bool announced = false;
    for (;;) {
      if (::flock(fd_, LOCK_EX | LOCK_NB) == 0) break;
      if (errno != EWOULDBLOCK && errno != EINTR) {
        error = "cannot lock " + path + ": " + std::strerror(errno);
        return false;
      }
      if (steady_clock::now() >= deadline) {
        error = wait.count() == 0
                    ? "another usher-reconcile run holds " + path + " (not waiting: --no-wait or lock_wait = 0)"
                    : "another usher-reconcile run still holds " + path + " after lock_wait";
        return false;
      }
      if (!announced) {
        spdlog::info(LogLine("lock_wait").kv("lock_file", path).str());
        announced = true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    waitedMs = msSince(t0);
    return true;
  }

private:
  int fd_ = -1;
};

// Temp files a killed run left next to its targets (writeFileAtomically's
// ".<name>.tmp.XXXXXX"): garbage, never read, removed under the lock.
void removeStaleTempFiles(const std::string& dir, const std::function<bool(std::string_view)>& ours) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return;
  while (dirent* e = ::readdir(d)) {
    std::string_view name = e->d_name;
    if (!name.starts_with('.') || name.find(".tmp.") == std::string_view::npos || !ours(name)) {
      continue;
    }
    std::string path = dir + "/" + std::string(name);
    if (::unlink(path.c_str()) == 0) {
      spdlog::info(LogLine("stale_temp_removed").kv("path", path).str());
    }
  }
  ::closedir(d);
}

// Reads one env file; false only on a real read error (a missing file is
// simply absent from `out`).
bool readEnvFile(const std::string& path, const std::string& osUser,
                 std::unordered_map<std::string, EnvFileSeen>& out, std::string& error) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    if (errno == ENOENT) return true;
    error = "cannot read " + path + ": " + std::strerror(errno);
    return false;
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > 65536) {
    ::close(fd);
    error = path + " is not a regular file of at most 64 KiB";
    return false;
  }
  std::string text(static_cast<size_t>(st.st_size), '\0');
  size_t got = 0;
  while (got < text.size()) {
    ssize_t n = ::read(fd, text.data() + got, text.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  text.resize(got);
  auto modified = Clock::time_point(std::chrono::duration_cast<Clock::duration>(
      std::chrono::seconds(st.st_mtim.tv_sec) + std::chrono::nanoseconds(st.st_mtim.tv_nsec)));
  out[osUser] = EnvFileSeen{std::move(text), modified};
  return true;
}

std::vector<std::string> envFilesInDir(const std::string& dir) {
  std::vector<std::string> users;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return users;
  while (dirent* e = ::readdir(d)) {
    std::string_view name = e->d_name;
    if (!name.ends_with(".env")) continue;
    name.remove_suffix(4);
    if (validOsUser(name)) users.emplace_back(name);
  }
  ::closedir(d);
  return users;
}

std::string joinActions(const UserPlan& u) {
  std::string out;
  auto add = [&](const char* a) {
    if (!out.empty()) out += ",";
    out += a;
  };
  if (u.envText) add("write_env");
  if (u.enable) add("enable");
  if (u.action != UnitAction::None) add(toString(u.action));
  return out;
}

std::vector<std::string> actionList(const UserPlan& u) {
  std::vector<std::string> out;
  if (u.envText) out.emplace_back("write_env");
  if (u.enable) out.emplace_back("enable");
  if (u.action != UnitAction::None) out.emplace_back(toString(u.action));
  return out;
}

std::vector<std::string> actionList(const RemovalPlan& r) {
  std::vector<std::string> out;
  if (r.stop) out.emplace_back("stop");
  if (r.disable) out.emplace_back("disable");
  return out;
}

int finish(Report& report, steady_clock::time_point t0, int code) {
  report.exitCode = code;
  report.durationMs = msSince(t0);
  return code;
}

}  // namespace

namespace {

// The manager of a run with no unit to look at: nothing is asked, nothing done.
class NoUnitsManager final : public SystemdManager {
public:
  std::optional<UnitStatusMap> observe(const ObserveRequest&, std::string&) override { return UnitStatusMap{}; }

protected:
  bool doReload(std::string&) override { return true; }
  bool doEnableUnitFiles(const std::vector<std::string>&, bool& changed, std::string&) override {
    changed = false;
    return true;
  }
  bool doDisableUnitFiles(const std::vector<std::string>&, bool& changed, std::string&) override {
    changed = false;
    return true;
  }
  std::vector<JobOutcome> doRunJobs(const std::vector<JobRequest>& jobs, std::chrono::milliseconds) override {
    return std::vector<JobOutcome>(jobs.size(), JobOutcome{false, "no systemd connection"});
  }
};

// getpwnam for every mapped user reads the whole passwd file each time:
// quadratic in the number of users. One enumeration up front answers them
// all; names it did not list (NSS sources that do not enumerate, such as
// some LDAP set-ups) still go to getpwnam.
OsUserLookup enumeratingOsUserLookup() {
  struct Cache {
    bool filled = false;
    std::unordered_map<std::string, OsUserInfo> users;
    OsUserLookup fallback = systemOsUserLookup();
  };
  auto cache = std::make_shared<Cache>();
  return [cache](const std::string& name) -> std::optional<OsUserInfo> {
    if (!cache->filled) {
      cache->filled = true;
      ::setpwent();
      while (passwd* pw = ::getpwent()) {
        cache->users.emplace(pw->pw_name,
                             OsUserInfo{pw->pw_uid, pw->pw_gid, pw->pw_dir ? pw->pw_dir : ""});
      }
      ::endpwent();
    }
    if (auto it = cache->users.find(name); it != cache->users.end()) return it->second;
    return cache->fallback(name);
  };
}

}  // namespace

Environment systemEnvironment(const Config& config, const Options& options) {
  Environment env;
  env.lookup = enumeratingOsUserLookup();
  env.busy = listenerProbe(config.backendAddress);
  std::string address = options.busAddress;
  env.providers = processProviderRunner();
  env.connect = [address](std::string& error) -> std::unique_ptr<SystemdManager> {
    return SdBusManager::connect(address, error);
  };
  env.now = [] { return Clock::now(); };
  return env;
}

Report run(const Config& config, const Options& options, const Environment& env) {
  Report report;
  report.dryRun = options.dryRun;
  auto t0 = steady_clock::now();
  Clock::time_point now = env.now();
  report.startedAt = formatUtc(now);
  auto cannotRun = [&](std::string why) {
    spdlog::error(LogLine("reconcile_failed").kv("error", why).str());
    report.errors.push_back(std::move(why));
    finish(report, t0, kExitCannotRun);
    return report;
  };

  // A dry run changes nothing, so it neither takes nor creates the lock.
  RunLock lock;
  if (!options.dryRun) {
    std::string error;
    auto wait = options.noWait ? std::chrono::milliseconds(0) : config.lockWait;
    if (!lock.acquire(config.lockFile, wait, error, report.lockWaitMs)) return cannotRun(error);
    // A later env() call may differ: take "now" under the lock.
    now = env.now();
    report.startedAt = formatUtc(now);
  }

  auto phase = steady_clock::now();
  auto endPhase = [&phase](double& into) {
    into += msSince(phase);
    phase = steady_clock::now();
  };

  // The map. A map that cannot be read at all stops the run: acting on it
  // would stop every instance.
  UserMapOptions mapOptions;
  mapOptions.minUid = config.minUid;
  mapOptions.lookup = env.lookup;
  auto map = UserMap::load(config.mapFile, mapOptions, report.mapErrors);
  if (!map) {
    std::string why = report.mapErrors.empty() ? "cannot read " + config.mapFile
                                               : report.mapErrors.front().message;
    report.mapErrors.clear();
    return cannotRun(why);
  }
  for (const auto& e : report.mapErrors) {
    spdlog::warn(LogLine("map_error").kv("file", config.mapFile).kv("line", e.line)
                     .kv("error", e.message).str());
  }

  // The state file. Missing: a first run (env files are adopted). Unusable:
  // stop, since ports would be handed out again.
  State state;
  bool firstRun = false;
  struct stat st {};
  std::optional<Clock::time_point> stateModified;
  if (::stat(config.stateFile.c_str(), &st) != 0 && errno == ENOENT) {
    firstRun = true;
  } else {
    stateModified = Clock::time_point(std::chrono::duration_cast<Clock::duration>(
        std::chrono::seconds(st.st_mtim.tv_sec) + std::chrono::nanoseconds(st.st_mtim.tv_nsec)));
    std::vector<std::string> problems;
    auto loaded = State::load(config.stateFile, problems);
    if (!loaded) {
      return cannotRun("state file " + config.stateFile + " unusable: " +
                       (problems.empty() ? std::string("unreadable") : problems.front()));
    }
    state = std::move(*loaded);
    for (auto& p : problems) {
      spdlog::warn(LogLine("state_warning").kv("file", config.stateFile).kv("msg", p).str());
      report.warnings.push_back(std::move(p));
    }
  }

  // Env files: every mapped user's; on a first run every file in env_dir.
  PlanInputs in;
  in.config = &config;
  in.map = &*map;
  in.state = &state;
  in.firstRun = firstRun;
  in.busy = env.busy;
  in.now = now;
  std::unordered_map<std::string, std::string> envReadErrors;
  std::vector<std::string> envOnlyUsers;  // first run: users with an env file
  {
    std::set<std::string> names;
    for (const auto& e : map->entries()) {
      if (e.backend == BackendKind::Unit) names.insert(e.osUser);
    }
    if (firstRun) {
      envOnlyUsers = envFilesInDir(config.envDir);
      names.insert(envOnlyUsers.begin(), envOnlyUsers.end());
    }
    for (const auto& name : names) {
      std::string error;
      if (!readEnvFile(envFilePath(config.envDir, name), name, in.envFiles, error)) {
        envReadErrors[name] = error;
      }
    }
  }

  endPhase(report.readMs);

  // systemd: status of every unit concerned; a daemon reload first when
  // unit files changed on disk (and only then).
  std::string error;
  ObserveRequest request;
  request.units = unitsToObserve(config, *map, state, envOnlyUsers);
  request.fileStateToo = unitsOfUnmappedUsers(config, *map, state, envOnlyUsers);
  // A host with only VM users (or none) has nothing to ask systemd: it need
  // not even run one (a hypervisor-only host, or a test machine).
  std::unique_ptr<SystemdManager> systemd =
      request.units.empty() && request.fileStateToo.empty() ? std::make_unique<NoUnitsManager>() : env.connect(error);
  if (!systemd) return cannotRun(error);
  // A run writes the state file before env files, so an env file newer than
  // the state file was written (by a run that may have been killed before
  // restarting, or by hand) after the last completed state change: only
  // those instances can be running on an older version of it.
  for (const auto& [name, seen] : in.envFiles) {
    if (!stateModified || seen.modified >= *stateModified) {
      request.activeSinceToo.push_back(config.unitFor(name));
    }
  }
  auto observed = systemd->observe(request, error);
  if (!observed) return cannotRun(error);
  bool needReload = std::any_of(observed->begin(), observed->end(),
                                [](const auto& kv) { return kv.second.needDaemonReload; });
  if (needReload && !options.dryRun) {
    spdlog::info(LogLine("daemon_reload").kv("reason", "unit files changed on disk").str());
    if (!systemd->reload(error)) return cannotRun(error);
    report.reloaded = true;
    observed = systemd->observe(request, error);
    if (!observed) return cannotRun(error);
  }
  in.units = std::move(*observed);
  endPhase(report.observeMs);

  report.plan = computePlan(in);
  Plan& plan = *report.plan;
  for (UserPlan& u : plan.users) {
    auto it = envReadErrors.find(u.osUser);
    if (it == envReadErrors.end()) continue;
    u.error = it->second;
    u.envText.reset();
    u.enable = false;
    u.action = UnitAction::None;
  }
  report.users.assign(plan.users.size(), Outcome{});
  report.removals.assign(plan.removals.size(), Outcome{});
  endPhase(report.planMs);

  if (options.dryRun) {
    for (size_t i = 0; i < plan.users.size(); ++i) {
      const UserPlan& u = plan.users[i];
      report.users[i] = u.error.empty() ? Outcome{u.changes() ? "planned" : "unchanged", ""}
                                        : Outcome{"failed", u.error};
    }
    for (size_t i = 0; i < plan.removals.size(); ++i) report.removals[i] = Outcome{"planned", ""};
    report.mutatingCalls = systemd->mutatingCalls();
    State vmState = plan.newState;
    report.vm = reconcileVms(config, *map, state, vmState, true, env.providers);
    bool partial = !report.mapErrors.empty() || plan.failedCount() > 0 || report.vm.failures() > 0;
    finish(report, t0, partial ? kExitPartial : kExitOk);
    return report;
  }

  // Files first, the state file before env files: a run killed at any point
  // has recorded every port it handed out, and an env file newer than the
  // state file marks an instance that may still need its restart.
  std::vector<bool> failed(plan.users.size(), false);
  for (size_t i = 0; i < plan.users.size(); ++i) failed[i] = !plan.users[i].error.empty();

  removeStaleTempFiles(config.envDir,
                       [](std::string_view name) { return name.find(".env.tmp.") != std::string_view::npos; });
  std::string stateTempPrefix = "." + baseOf(config.stateFile) + ".tmp.";
  removeStaleTempFiles(dirOf(config.stateFile),
                       [&](std::string_view name) { return name.starts_with(stateTempPrefix); });

  // The state file, atomically; a failure is a run-level error (the previous
  // file stays as it was).
  auto writeState = [&](State toWrite) {
    toWrite.generatedAt = formatUtc(now);
    std::string werr;
    if (!makeDirs(dirOf(config.stateFile), werr) ||
        !writeFileAtomically(config.stateFile, toWrite.toJson().dump(2) + "\n", 0644, werr)) {
      spdlog::error(LogLine("state_write_failed").kv("file", config.stateFile).kv("error", werr).str());
      report.errors.push_back(werr);
    } else {
      report.stateWritten = true;
    }
  };
  if (plan.stateChanged) writeState(plan.newState);

  bool wantEnvDir = std::any_of(plan.users.begin(), plan.users.end(),
                                [](const UserPlan& u) { return u.envText.has_value(); });
  std::string envDirError;
  if (wantEnvDir && !makeDirs(config.envDir, envDirError)) {
    report.errors.push_back(envDirError);
  }
  for (size_t i = 0; i < plan.users.size(); ++i) {
    UserPlan& u = plan.users[i];
    if (failed[i] || !u.envText) continue;
    std::string werr;
    if (!envDirError.empty()) {
      werr = envDirError;
    } else if (writeFileAtomically(envFilePath(config.envDir, u.osUser), *u.envText, 0644, werr)) {
      ++report.envFilesWritten;
      continue;
    }
    failed[i] = true;
    report.users[i].error = werr;
  }

  // Enable (new users) and disable (removed users), each in one call; if that
  // fails, one call per unit names the culprit. Then one daemon reload if any
  // symlink changed, as `systemctl enable` does, so that systemd's own view
  // (WantedBy) matches the disk and the next run has nothing to do.
  bool symlinksChanged = false;
  auto unitFiles = [&](bool enable, const std::vector<std::string>& names,
                       const std::function<void(size_t, const std::string&)>& failOne) {
    if (names.empty()) return;
    bool changed = false;
    std::string ferr;
    bool ok = enable ? systemd->enableUnitFiles(names, changed, ferr)
                     : systemd->disableUnitFiles(names, changed, ferr);
    symlinksChanged = symlinksChanged || changed;
    if (ok) return;
    for (size_t k = 0; k < names.size(); ++k) {
      std::string one;
      bool oneChanged = false;
      bool oneOk = enable ? systemd->enableUnitFiles({names[k]}, oneChanged, one)
                          : systemd->disableUnitFiles({names[k]}, oneChanged, one);
      symlinksChanged = symlinksChanged || oneChanged;
      if (!oneOk) failOne(k, one);
    }
  };
  std::vector<size_t> toEnable;
  std::vector<std::string> enableNames;
  for (size_t i = 0; i < plan.users.size(); ++i) {
    if (failed[i] || !plan.users[i].enable) continue;
    toEnable.push_back(i);
    enableNames.push_back(plan.users[i].unit);
  }
  unitFiles(true, enableNames, [&](size_t k, const std::string& why) {
    failed[toEnable[k]] = true;
    report.users[toEnable[k]].error = why;
  });
  std::vector<bool> removalFailed(plan.removals.size(), false);
  std::vector<size_t> toDisable;
  std::vector<std::string> disableNames;
  for (size_t i = 0; i < plan.removals.size(); ++i) {
    if (!plan.removals[i].disable) continue;
    toDisable.push_back(i);
    disableNames.push_back(plan.removals[i].unit);
  }
  unitFiles(false, disableNames, [&](size_t k, const std::string& why) {
    removalFailed[toDisable[k]] = true;
    report.removals[toDisable[k]].error = why;
  });
  if (symlinksChanged) {
    std::string rerr;
    if (systemd->reload(rerr)) {
      report.reloaded = true;
    } else {
      spdlog::warn(LogLine("daemon_reload_failed").kv("error", rerr).str());
      report.errors.push_back(rerr);
    }
  }

  // Every start, restart and stop at once; then wait for each.
  std::vector<JobRequest> jobs;
  std::vector<std::pair<bool, size_t>> owners;  // (is removal, index)
  for (size_t i = 0; i < plan.users.size(); ++i) {
    const UserPlan& u = plan.users[i];
    if (failed[i] || u.action == UnitAction::None) continue;
    jobs.push_back({u.action == UnitAction::Restart ? JobKind::Restart : JobKind::Start, u.unit});
    owners.emplace_back(false, i);
  }
  for (size_t i = 0; i < plan.removals.size(); ++i) {
    if (!plan.removals[i].stop) continue;
    jobs.push_back({JobKind::Stop, plan.removals[i].unit});
    owners.emplace_back(true, i);
  }
  std::vector<JobOutcome> outcomes = systemd->runJobs(jobs, config.jobTimeout);
  for (size_t j = 0; j < outcomes.size(); ++j) {
    if (outcomes[j].ok) continue;
    auto [isRemoval, i] = owners[j];
    std::string why = std::string(toString(jobs[j].kind)) + " " + jobs[j].unit + ": " + outcomes[j].result;
    if (isRemoval) {
      removalFailed[i] = true;
      report.removals[i].error = why;
    } else {
      failed[i] = true;
      report.users[i].error = why;
    }
  }

  // Every env file written by this run has been acted on: the state file's
  // time says so (see activeSinceToo above). A run killed before this line
  // leaves env files newer than the state file, and the next run checks them.
  if (report.envFilesWritten > 0 && ::utimensat(AT_FDCWD, config.stateFile.c_str(), nullptr, 0) != 0) {
    spdlog::warn(LogLine("state_touch_failed").kv("file", config.stateFile)
                     .kv("error", std::strerror(errno)).str());
  }

  // VMs, after the units: a slow hypervisor never delays anyone's instance.
  // The state file is written again when a VM's address was recorded or a
  // removed user's VM entry dropped.
  {
    State vmState = plan.newState;
    report.vm = reconcileVms(config, *map, state, vmState, false, env.providers);
    if (!sameState(vmState, plan.newState)) {
      writeState(vmState);
      plan.newState = std::move(vmState);
      plan.stateChanged = true;
    }
  }

  size_t changed = 0;
  size_t failures = report.vm.failures();
  for (size_t i = 0; i < plan.users.size(); ++i) {
    const UserPlan& u = plan.users[i];
    Outcome& o = report.users[i];
    if (failed[i]) {
      if (o.error.empty()) o.error = u.error;
      o.status = "failed";
      ++failures;
      spdlog::warn(LogLine("user_failed").kv("os_user", u.osUser).kv("unit", u.unit)
                       .kv("error", o.error).str());
    } else if (u.changes()) {
      o.status = "changed";
      ++changed;
      spdlog::info(LogLine("user_provisioned").kv("os_user", u.osUser).kv("unit", u.unit)
                       .kv("port", static_cast<unsigned>(*u.port)).kv("port_source", toString(u.portSource))
                       .kv("actions", joinActions(u)).str());
    } else {
      o.status = "unchanged";
      spdlog::debug(LogLine("user_unchanged").kv("os_user", u.osUser).str());
    }
  }
  for (size_t i = 0; i < plan.removals.size(); ++i) {
    const RemovalPlan& r = plan.removals[i];
    Outcome& o = report.removals[i];
    o.status = removalFailed[i] ? "failed" : "changed";
    if (removalFailed[i]) ++failures;
    spdlog::info(LogLine(removalFailed[i] ? "user_removal_failed" : "user_removed")
                     .kv("os_user", r.osUser).kv("unit", r.unit)
                     .kv("port_reserved", static_cast<unsigned>(r.port))
                     .kv("stopped", r.stop && !removalFailed[i]).kv("error", o.error).str());
  }
  for (const auto& e : plan.expired) {
    spdlog::info(LogLine("reservation_expired").kv("os_user", e.osUser)
                     .kv("port", static_cast<unsigned>(e.port)).kv("since", e.since).str());
  }
  report.mutatingCalls = systemd->mutatingCalls();
  endPhase(report.applyMs);
  bool partial = !report.mapErrors.empty() || failures > 0 || !report.errors.empty();
  finish(report, t0, partial ? kExitPartial : kExitOk);
  spdlog::info(LogLine("reconcile_done").kv("exit_code", report.exitCode)
                   .kv("users", static_cast<uint64_t>(plan.users.size()))
                   .kv("changed", static_cast<uint64_t>(changed))
                   .kv("failed", static_cast<uint64_t>(failures))
                   .kv("removed", static_cast<uint64_t>(plan.removals.size()))
                   .kv("map_errors", static_cast<uint64_t>(report.mapErrors.size()))
                   .kv("mutating_calls", report.mutatingCalls)
                   .kv("duration_ms", report.durationMs).str());
  return report;
}

nlohmann::ordered_json toJson(const Report& report, const Config& config) {
  using json = nlohmann::ordered_json;
  json doc = {
      {"usher_reconcile", 1},
      {"dry_run", report.dryRun},
      {"exit_code", report.exitCode},
      {"started_at", report.startedAt},
      {"duration_ms", report.durationMs},
      {"lock_wait_ms", report.lockWaitMs},
      {"timings_ms",
       {{"read", report.readMs},
        {"observe", report.observeMs},
        {"plan", report.planMs},
        {"apply", report.applyMs}}},
      {"config",
       {{"map_file", config.mapFile},
        {"state_file", config.stateFile},
        {"env_dir", config.envDir},
        {"unit_template", config.unitTemplate + ".service"},
        {"port_range", std::to_string(config.portFirst) + "-" + std::to_string(config.portLast)}}},
      {"errors", report.errors},
      {"warnings", report.warnings},
  };
  json mapErrors = json::array();
  for (const auto& e : report.mapErrors) mapErrors.push_back({{"line", e.line}, {"message", e.message}});
  doc["map_errors"] = std::move(mapErrors);

  json users = json::array();
  json removed = json::array();
  json reserved = json::array();
  json expired = json::array();
  json skipped = json::array();
  size_t counts[4] = {0, 0, 0, 0};  // unchanged, planned/changed, failed, removed
  bool stateChanged = false;
  bool reload = false;
  if (report.plan) {
    const Plan& plan = *report.plan;
    stateChanged = plan.stateChanged;
    // A dry run's reload is due when unit files changed on disk or when it
    // would enable or disable an instance (a real run reloads after that).
    reload = plan.reload ||
             std::any_of(plan.users.begin(), plan.users.end(), [](const UserPlan& u) { return u.enable; }) ||
             std::any_of(plan.removals.begin(), plan.removals.end(),
                         [](const RemovalPlan& r) { return r.disable; });
    for (size_t i = 0; i < plan.users.size(); ++i) {
      const UserPlan& u = plan.users[i];
      const Outcome& o = report.users[i];
      json j = {{"os_user", u.osUser},
                {"sso_names", u.ssoNames},
                {"line", u.line},
                {"unit", u.unit},
                {"port", u.port ? json(*u.port) : json(nullptr)},
                {"port_source", u.port ? json(toString(u.portSource)) : json(nullptr)},
                {"env_file", u.envText ? (u.envExists ? "update" : "create") : "unchanged"},
                {"unit_file_state", u.observed.unitFileState},
                {"active_state", u.observed.activeState},
                {"actions", actionList(u)},
                {"reason", u.reason},
                {"status", o.status}};
      if (!o.error.empty()) j["error"] = o.error;
      users.push_back(std::move(j));
      if (o.status == "unchanged") ++counts[0];
      else if (o.status == "failed") ++counts[2];
      else ++counts[1];
    }
    for (size_t i = 0; i < plan.removals.size(); ++i) {
      const RemovalPlan& r = plan.removals[i];
      const Outcome& o = report.removals[i];
      json j = {{"os_user", r.osUser},   {"unit", r.unit},
                {"port", r.port},        {"newly_removed", r.newlyRemoved},
                {"actions", actionList(r)}, {"active_state", r.observed.activeState},
                {"status", o.status}};
      if (!o.error.empty()) j["error"] = o.error;
      removed.push_back(std::move(j));
      ++counts[3];
      if (o.status == "failed") ++counts[2];
    }
    std::vector<const Reservation*> held;
    for (const auto& [name, r] : plan.newState.reservations()) held.push_back(&r);
    std::sort(held.begin(), held.end(),
              [](const Reservation* a, const Reservation* b) { return a->osUser < b->osUser; });
    for (const Reservation* r : held) {
      json j = {{"os_user", r->osUser}, {"port", r->port}, {"since", r->since}};
      if (auto since = parseUtc(r->since)) j["expires"] = formatUtc(*since + config.portReservation);
      reserved.push_back(std::move(j));
    }
    for (const auto& e : plan.expired) {
      expired.push_back({{"os_user", e.osUser}, {"port", e.port}, {"since", e.since}});
    }
    for (const auto& s : plan.skipped) skipped.push_back({{"os_user", s.osUser}, {"reason", s.reason}});
  }
  doc["users"] = std::move(users);
  doc["removed"] = std::move(removed);
  doc["reserved"] = std::move(reserved);
  doc["expired"] = std::move(expired);
  doc["skipped"] = std::move(skipped);
  json vmUsers = json::array();
  for (const auto& u : report.vm.users) {
    json j = {{"os_user", u.osUser}, {"sso_names", u.ssoNames}, {"line", u.line},
              {"profile", u.profile}, {"vm", u.vmName}, {"verb", u.verb},
              {"status", u.status}};
    if (!u.address.empty()) {
      j["address"] = u.address;
      j["port"] = u.port;
      j["created"] = u.created;
      j["started"] = u.started;
    }
    if (!u.observed.empty()) j["observed_state"] = u.observed;
    if (!u.verb.empty()) j["provider_ms"] = u.ms;
    if (!u.reason.empty()) j["reason"] = u.reason;
    if (!u.error.empty()) j["error"] = u.error;
    vmUsers.push_back(std::move(j));
  }
  json vmRemoved = json::array();
  for (const auto& r : report.vm.removals) {
    json j = {{"os_user", r.osUser}, {"profile", r.profile}, {"vm", r.vmName},
              {"action", r.verb},    {"status", r.status},   {"data_kept", r.dataKept}};
    if (!r.reason.empty()) j["reason"] = r.reason;
    if (!r.error.empty()) j["error"] = r.error;
    vmRemoved.push_back(std::move(j));
  }
  doc["vms"] = {{"users", std::move(vmUsers)}, {"removed", std::move(vmRemoved)}};
  doc["state_file"] = {{"changed", stateChanged}, {"written", report.stateWritten}};
  doc["env_files_written"] = report.envFilesWritten;
  // daemon_reload: done (or, in a dry run, due) because unit files changed on
  // disk, or because this run enabled or disabled instances.
  doc["systemd"] = {{"daemon_reload", report.dryRun ? reload : report.reloaded},
                    {"mutating_calls", report.mutatingCalls}};
  doc["summary"] = {{"users", report.plan ? report.plan->users.size() : 0},
                    {"unchanged", counts[0]},
                    {report.dryRun ? "planned" : "changed", counts[1]},
                    {"failed", counts[2]},
                    {"removed", counts[3]},
                    {"map_errors", report.mapErrors.size()}};
  return doc;
}

std::string toText(const Report& report) {
  std::string out;
  for (const auto& e : report.errors) out += "error: " + e + "\n";
  for (const auto& e : report.mapErrors) {
    out += "map line " + std::to_string(e.line) + ": " + e.message + "\n";
  }
  if (!report.plan) return out;
  const Plan& plan = *report.plan;
  size_t unchanged = 0;
  for (size_t i = 0; i < plan.users.size(); ++i) {
    const UserPlan& u = plan.users[i];
    const Outcome& o = report.users[i];
    if (o.status == "unchanged") {
      ++unchanged;
      continue;
    }
    out += o.status + " " + u.osUser;
    if (u.port) out += " port " + std::to_string(*u.port) + " (" + toString(u.portSource) + ")";
    std::string actions = joinActions(u);
    if (!actions.empty()) out += " " + actions;
    if (!o.error.empty()) out += ": " + o.error;
    out += "\n";
  }
  for (size_t i = 0; i < plan.removals.size(); ++i) {
    const RemovalPlan& r = plan.removals[i];
    const Outcome& o = report.removals[i];
    out += o.status + " removed " + r.osUser + " port " + std::to_string(r.port) + " reserved";
    for (const auto& a : actionList(r)) out += " " + a;
    if (!o.error.empty()) out += ": " + o.error;
    out += "\n";
  }
  for (const auto& u : report.vm.users) {
    if (u.status == "unchanged") continue;
    out += u.status + " vm " + u.osUser + " (" + u.vmName + ", profile " + u.profile + ")";
    if (!u.address.empty()) out += " at " + u.address + ":" + std::to_string(u.port);
    if (u.created) out += " created";
    else if (u.started) out += " started";
    if (!u.observed.empty()) out += " now " + u.observed;
    if (!u.error.empty()) out += ": " + u.error;
    out += "\n";
  }
  for (const auto& r : report.vm.removals) {
    out += r.status + " removed vm " + r.osUser + " (" + r.vmName + ") " + r.verb;
    if (r.status == "changed") out += r.dataKept ? ", data kept" : ", data deleted";
    if (!r.error.empty()) out += ": " + r.error;
    out += "\n";
  }
  out += std::to_string(plan.users.size()) + " mapped, " + std::to_string(unchanged) +
         " unchanged, " + std::to_string(plan.removals.size()) + " removed, " +
         std::to_string(report.mutatingCalls) + " mutating systemd calls" +
         (report.vm.users.empty() && report.vm.removals.empty()
              ? std::string()
              : ", " + std::to_string(report.vm.users.size()) + " VM users") +
         (report.dryRun ? " (dry run)" : "") + "\n";
  return out;
}

int purge(const Config& config, const Options& options, const Environment& env, const std::string& osUser,
          const std::string& profileName, nlohmann::ordered_json& out) {
  out = {{"usher_reconcile", 1}, {"purge", osUser}, {"vm", vmNameFor(osUser)}};
  auto refuse = [&](int code, const std::string& why) {
    out["status"] = "failed";
    out["error"] = why;
    spdlog::error(LogLine("purge_failed").kv("os_user", osUser).kv("error", why).str());
    return code;
  };
  if (!validOsUser(osUser)) return refuse(kExitCannotRun, "invalid OS user name");
  RunLock lock;
  double waited = 0;
  std::string error;
  if (!options.dryRun &&
      !lock.acquire(config.lockFile, options.noWait ? std::chrono::milliseconds(0) : config.lockWait, error, waited))
    return refuse(kExitCannotRun, error);

  // Never the VM of someone who is still mapped: the next run would make a
  // new one, and their data would be gone without anyone asking for it.
  std::vector<MapError> mapErrors;
  UserMapOptions mapOptions;
  mapOptions.minUid = config.minUid;
  auto map = UserMap::load(config.mapFile, mapOptions, mapErrors);
  if (!map) return refuse(kExitCannotRun, "cannot read the map " + config.mapFile + ": purge needs to know who is mapped");
  for (const auto& e : map->entries())
    if (e.osUser == osUser)
      return refuse(kExitCannotRun, osUser + " is still mapped (" + config.mapFile + " line " + std::to_string(e.line) +
                                        "): remove the line and reconcile first");

  std::vector<std::string> problems;
  std::optional<State> state;
  struct stat st{};
  if (::stat(config.stateFile.c_str(), &st) == 0) {
    state = State::load(config.stateFile, problems);
    if (!state) return refuse(kExitCannotRun, "state file " + config.stateFile + " unusable");
  }
  std::string name = profileName;
  if (name.empty()) {
    const Backend* b = state ? state->find(osUser) : nullptr;
    name = recordedVmProfile(b ? b->vm : nlohmann::json(), "default");
  }
  auto p = config.vm.find(name);
  if (p == config.vm.end()) return refuse(kExitCannotRun, "no [vm." + name + "] profile in the configuration");
  out["profile"] = name;
  if (options.dryRun) {
    out["status"] = "planned";
    return kExitOk;
  }

  auto replies = env.providers({ProviderCall{osUser, "destroy", &p->second, true}}, 1);
  const ProviderReply& r = replies.at(0);
  if (!r.ok) {
    out["reason"] = r.reason;
    return refuse(kExitPartial, r.message);
  }
  if (r.reply.value("state", "") != "absent") {
    out["reason"] = "provider_reply";
    return refuse(kExitPartial, "provider answered destroy without state \"absent\"");
  }
  out["status"] = "changed";
  out["data_kept"] = r.reply.value("data_kept", false);
  if (state && state->find(osUser) && state->find(osUser)->kind == BackendKind::Vm) {
    state->erase(osUser);
    state->generatedAt = formatUtc(env.now());
    std::string werr;
    if (!writeFileAtomically(config.stateFile, state->toJson().dump(2) + "\n", 0644, werr))
      return refuse(kExitPartial, "VM destroyed, but the state file could not be written: " + werr);
  }
  spdlog::info(LogLine("vm_purged").kv("os_user", osUser).kv("vm", vmNameFor(osUser)).kv("profile", name)
                   .kv("data_kept", out["data_kept"].get<bool>()).str());
  return kExitOk;
}

}  // namespace usher::reconcile
