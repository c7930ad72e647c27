#include "reconcile/sdbus_manager.h"

#include <time.h>

#include <cstring>
#include <functional>
#include <unordered_map>

namespace usher::reconcile {

namespace {

constexpr const char* kService = "org.freedesktop.systemd1";
constexpr const char* kManagerPath = "/org/freedesktop/systemd1";
constexpr const char* kManagerIface = "org.freedesktop.systemd1.Manager";
constexpr const char* kUnitIface = "org.freedesktop.systemd1.Unit";
constexpr const char* kUnitPathPrefix = "/org/freedesktop/systemd1/unit";

// dbus-daemon caps the replies one connection may have pending (system.conf
// max_replies_per_connection); stay well under it while still pipelining.
constexpr size_t kMaxInFlight = 64;

// sd_bus_error owns strings; this frees them on every path.
struct BusError {
  sd_bus_error e = SD_BUS_ERROR_NULL;
  BusError() = default;
  BusError(const BusError&) = delete;
  BusError& operator=(const BusError&) = delete;
  ~BusError() { sd_bus_error_free(&e); }
  std::string text(int r) const {
    if (e.message != nullptr) return std::string(e.name ? e.name : "") + ": " + e.message;
    return std::strerror(r < 0 ? -r : r);
  }
};

std::string replyError(sd_bus_message* reply) {
  const sd_bus_error* e = sd_bus_message_get_error(reply);
  if (e == nullptr) return "error reply";
  return std::string(e->name ? e->name : "") + ": " + (e->message ? e->message : "");
}

uint64_t monotonicUsec() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000 + static_cast<uint64_t>(ts.tv_nsec) / 1000;
}

// Runs the bus until `done()` or the absolute monotonic deadline; false on
// a bus failure (error set) or when the deadline passed.
bool pump(sd_bus* bus, const std::function<bool()>& done, uint64_t deadline, std::string& error,
          bool& timedOut) {
  timedOut = false;
  while (!done()) {
    int r = sd_bus_process(bus, nullptr);
    if (r < 0) {
      error = std::string("bus: ") + std::strerror(-r);
      return false;
    }
    if (r > 0) continue;
    uint64_t now = monotonicUsec();
    if (now >= deadline) {
      timedOut = true;
      return false;
    }
    r = sd_bus_wait(bus, deadline - now);
    if (r < 0 && r != -EINTR) {
      error = std::string("bus wait: ") + std::strerror(-r);
      return false;
    }
  }
  return true;
}

// Sends `count` method calls made by `build`, at most kMaxInFlight at a time,
// and hands each reply (or error reply) to `onReply`. The slots die with this
// function, so no callback can outlive the state it points at.
class Pipeline {
public:
  using Build = std::function<int(size_t index, sd_bus_message** call)>;
  using OnReply = std::function<void(size_t index, sd_bus_message* reply)>;

  Pipeline(sd_bus* bus, Build build, OnReply onReply)
      : bus_(bus), build_(std::move(build)), onReply_(std::move(onReply)) {}

  bool run(size_t count, uint64_t timeoutUsec, std::string& error) {
    count_ = count;
    slots_.resize(count);
    calls_.resize(count);
    for (size_t i = 0; i < count; ++i) calls_[i] = Call{this, i};
    uint64_t deadline = monotonicUsec() + timeoutUsec;
    while (answered_ < count_) {
      while (sent_ < count_ && sent_ - answered_ < kMaxInFlight) {
        if (!send(sent_, timeoutUsec, error)) return false;
        ++sent_;
      }
      bool timedOut = false;
      size_t target = std::min(count_, answered_ + 1);
      if (!pump(bus_, [&] { return answered_ >= target; }, deadline, error,
                timedOut)) {
        if (timedOut) error = "no answer from systemd in time";
        return false;
      }
    }
    return true;
  }

private:
  struct Call {
    Pipeline* pipeline = nullptr;
    size_t index = 0;
  };

  static int trampoline(sd_bus_message* reply, void* userdata, sd_bus_error* /*ret*/) {
    auto* call = static_cast<Call*>(userdata);
    call->pipeline->answered(call->index, reply);
    return 0;
  }

  void answered(size_t index, sd_bus_message* reply) {
    ++answered_;
    onReply_(index, reply);
  }

  bool send(size_t index, uint64_t timeoutUsec, std::string& error) {
    sd_bus_message* raw = nullptr;
    int r = build_(index, &raw);
    BusMessagePtr call(raw);
    if (r < 0) {
      error = std::string("building a D-Bus call: ") + std::strerror(-r);
      return false;
    }
    sd_bus_slot* slot = nullptr;
    r = sd_bus_call_async(bus_, &slot, call.get(), trampoline, &calls_[index], timeoutUsec);
    if (r < 0) {
      error = std::string("sending a D-Bus call: ") + std::strerror(-r);
      return false;
    }
    slots_[index].reset(slot);
    return true;
  }

  sd_bus* bus_;
  Build build_;
  OnReply onReply_;
  size_t count_ = 0;
  size_t sent_ = 0;
  size_t answered_ = 0;
  std::vector<Call> calls_;       // userdata of the slots; outlives them (declared first)
  std::vector<BusSlotPtr> slots_;
};

int appendStrings(sd_bus_message* m, const std::vector<std::string>& items) {
  int r = sd_bus_message_open_container(m, SD_BUS_TYPE_ARRAY, "s");
  if (r < 0) return r;
  for (const auto& s : items) {
    if ((r = sd_bus_message_append_basic(m, SD_BUS_TYPE_STRING, s.c_str())) < 0) return r;
  }
  return sd_bus_message_close_container(m);
}

std::string unitPath(const std::string& unit) {
  char* path = nullptr;
  if (sd_bus_path_encode(kUnitPathPrefix, unit.c_str(), &path) < 0 || path == nullptr) return {};
  std::string out(path);
  std::free(path);
  return out;
}

}  // namespace

std::unique_ptr<SdBusManager> SdBusManager::connect(const std::string& address,
                                                    std::string& error) {
  sd_bus* raw = nullptr;
  int r;
  if (address.empty()) {
    r = sd_bus_open_system(&raw);
    BusPtr bus(raw);
    if (r < 0) {
      error = std::string("cannot connect to the system bus: ") + std::strerror(-r);
      return nullptr;
    }
    return std::unique_ptr<SdBusManager>(new SdBusManager(std::move(bus)));
  }
  r = sd_bus_new(&raw);
  BusPtr bus(raw);
  if (r < 0) {
    error = std::string("sd_bus_new: ") + std::strerror(-r);
    return nullptr;
  }
  if ((r = sd_bus_set_address(bus.get(), address.c_str())) < 0 ||
      (r = sd_bus_set_bus_client(bus.get(), 1)) < 0 || (r = sd_bus_start(bus.get())) < 0) {
    error = "cannot connect to bus " + address + ": " + std::strerror(-r);
    return nullptr;
  }
  return std::unique_ptr<SdBusManager>(new SdBusManager(std::move(bus)));
}

namespace {

// One property of many units, pipelined: Properties.Get on each unit path.
template <typename Store>
bool getEach(sd_bus* bus, const std::vector<std::string>& paths, const std::vector<size_t>& which,
             const char* property, const char* type, Store store, std::string& error) {
  std::string problem;
  Pipeline pipeline(
      bus,
      [&](size_t i, sd_bus_message** call) {
        int r = sd_bus_message_new_method_call(bus, call, kService, paths[which[i]].c_str(),
                                               "org.freedesktop.DBus.Properties", "Get");
        if (r < 0) return r;
        return sd_bus_message_append(*call, "ss", kUnitIface, property);
      },
      [&](size_t i, sd_bus_message* reply) {
        if (sd_bus_message_is_method_error(reply, nullptr)) {
          if (problem.empty()) problem = std::string(property) + ": " + replyError(reply);
          return;
        }
        int r = sd_bus_message_enter_container(reply, SD_BUS_TYPE_VARIANT, type);
        if (r >= 0) r = store(which[i], reply);
        if (r < 0 && problem.empty()) {
          problem = std::string(property) + ": unreadable reply: " + std::strerror(-r);
        }
      });
  if (!pipeline.run(which.size(), 30'000'000, error)) return false;
  if (!problem.empty()) {
    error = "reading unit status: " + problem;
    return false;
  }
  return true;
}

// Load, active and sub state of units [first, last) in one call
// (ListUnitsByNames loads the units systemd has not loaded yet).
bool listUnitsByNames(sd_bus* bus, const std::vector<std::string>& units, size_t first,
                      size_t last, std::vector<UnitStatus>& status, std::string& error) {
  sd_bus_message* raw = nullptr;
  int r = sd_bus_message_new_method_call(bus, &raw, kService, kManagerPath, kManagerIface,
                                         "ListUnitsByNames");
  BusMessagePtr call(raw);
  if (r >= 0) {
    std::vector<std::string> chunk(units.begin() + static_cast<std::ptrdiff_t>(first),
                                   units.begin() + static_cast<std::ptrdiff_t>(last));
    r = appendStrings(call.get(), chunk);
  }
  if (r < 0) {
    error = std::string("ListUnitsByNames: building the call: ") + std::strerror(-r);
    return false;
  }
  BusError e;
  sd_bus_message* rawReply = nullptr;
  r = sd_bus_call(bus, call.get(), 30'000'000, &e.e, &rawReply);
  BusMessagePtr reply(rawReply);
  if (r < 0) {
    error = "ListUnitsByNames: " + e.text(r);
    return false;
  }
  r = sd_bus_message_enter_container(reply.get(), SD_BUS_TYPE_ARRAY, "(ssssssouso)");
  size_t i = first;
  while (r >= 0) {
    const char *name, *description, *load, *active, *sub, *following, *path, *jobType, *jobPath;
    uint32_t jobId = 0;
    r = sd_bus_message_read(reply.get(), "(ssssssouso)", &name, &description, &load, &active,
                            &sub, &following, &path, &jobId, &jobType, &jobPath);
    if (r <= 0) break;
    // One entry per name, in request order.
    if (i < last && units[i] == name) {
      status[i].loadState = load;
      status[i].activeState = active;
      status[i].subState = sub;
    }
    ++i;
  }
  if (r < 0) {
    error = std::string("ListUnitsByNames: unreadable reply: ") + std::strerror(-r);
    return false;
  }
  return true;
}

}  // namespace

std::optional<UnitStatusMap> SdBusManager::observe(const ObserveRequest& request,
                                                   std::string& error) {
  const std::vector<std::string>& units = request.units;
  std::vector<UnitStatus> status(units.size());
  std::vector<std::string> paths;
  paths.reserve(units.size());
  std::unordered_map<std::string, size_t> index;
  for (size_t i = 0; i < units.size(); ++i) {
    paths.push_back(unitPath(units[i]));
    index.emplace(units[i], i);
    if (paths.back().empty()) {
      error = "cannot encode a D-Bus path for unit " + units[i];
      return std::nullopt;
    }
  }
  constexpr size_t kChunk = 512;
  for (size_t first = 0; first < units.size(); first += kChunk) {
    if (!listUnitsByNames(bus_.get(), units, first, std::min(units.size(), first + kChunk), status,
                          error)) {
      return std::nullopt;
    }
  }

  std::vector<size_t> loaded;
  std::vector<size_t> active;
  std::vector<size_t> notRunning;
  for (size_t i = 0; i < units.size(); ++i) {
    if (status[i].loadState != "loaded") continue;
    loaded.push_back(i);
    if (status[i].activeState == "active") active.push_back(i);
    if (!status[i].running()) notRunning.push_back(i);
  }
  auto readStrv = [&](size_t i, sd_bus_message* m) {
    int r = sd_bus_message_enter_container(m, SD_BUS_TYPE_ARRAY, "s");
    if (r < 0) return r;
    const char* v = nullptr;
    while ((r = sd_bus_message_read_basic(m, SD_BUS_TYPE_STRING, &v)) > 0) status[i].wanted = true;
    return r;
  };
  if (!getEach(bus_.get(), paths, loaded, "WantedBy", "as", readStrv, error)) return std::nullopt;
  std::vector<size_t> notWanted;
  for (size_t i : loaded) {
    if (!status[i].wanted) notWanted.push_back(i);
  }
  if (!getEach(bus_.get(), paths, notWanted, "RequiredBy", "as", readStrv, error)) {
    return std::nullopt;
  }
  auto requested = [&](const std::vector<std::string>& names, auto&& also) {
    std::vector<size_t> out;
    for (const auto& u : names) {
      auto it = index.find(u);
      if (it != index.end() && also(it->second)) out.push_back(it->second);
    }
    return out;
  };

  // UnitFileState costs systemd a walk of the unit directories per call:
  // only where the answer can change a decision.
  std::vector<bool> wantFileState(units.size(), false);
  for (size_t i : loaded) wantFileState[i] = !status[i].wanted;
  for (size_t i : requested(request.fileStateToo,
                            [&](size_t k) { return status[k].loadState == "loaded"; })) {
    wantFileState[i] = true;
  }
  std::vector<size_t> fileState;
  for (size_t i = 0; i < units.size(); ++i) {
    if (wantFileState[i]) fileState.push_back(i);
  }
  // NeedDaemonReload reads the disk too (every drop-in directory): asked for
  // the units about to be started, and for one running unit standing for the
  // template and its shared drop-ins.
  std::vector<size_t> reloadCheck = notRunning;
  if (!active.empty()) reloadCheck.push_back(active.front());
  if (!getEach(bus_.get(), paths, fileState, "UnitFileState", "s",
               [&](size_t i, sd_bus_message* m) {
                 const char* v = nullptr;
                 int r = sd_bus_message_read_basic(m, SD_BUS_TYPE_STRING, &v);
                 if (r >= 0) status[i].unitFileState = v;
                 return r;
               },
               error) ||
      !getEach(bus_.get(), paths, reloadCheck, "NeedDaemonReload", "b",
               [&](size_t i, sd_bus_message* m) {
                 int b = 0;
                 int r = sd_bus_message_read_basic(m, SD_BUS_TYPE_BOOLEAN, &b);
                 status[i].needDaemonReload = b != 0;
                 return r;
               },
               error) ||
      !getEach(bus_.get(), paths,
               requested(request.activeSinceToo,
                         [&](size_t k) { return status[k].activeState == "active"; }),
               "ActiveEnterTimestamp", "t",
               [&](size_t i, sd_bus_message* m) {
                 return sd_bus_message_read_basic(m, SD_BUS_TYPE_UINT64,
                                                  &status[i].activeEnterUsec);
               },
               error)) {
    return std::nullopt;
  }
  UnitStatusMap out;
  out.reserve(units.size());
  for (size_t i = 0; i < units.size(); ++i) out.emplace(units[i], std::move(status[i]));
  return out;
}

bool SdBusManager::doReload(std::string& error) {
  BusError e;
  sd_bus_message* reply = nullptr;
  int r = sd_bus_call_method(bus_.get(), kService, kManagerPath, kManagerIface, "Reload", &e.e,
                             &reply, "");
  BusMessagePtr owned(reply);
  if (r < 0) {
    error = "Reload: " + e.text(r);
    return false;
  }
  return true;
}

namespace {

bool unitFileCall(sd_bus* bus, const char* method, const std::vector<std::string>& units,
                  bool enable, bool& changed, std::string& error) {
  sd_bus_message* raw = nullptr;
  int r = sd_bus_message_new_method_call(bus, &raw, kService, kManagerPath, kManagerIface, method);
  BusMessagePtr call(raw);
  if (r >= 0) r = appendStrings(call.get(), units);
  // runtime=false: persistent, in /etc; EnableUnitFiles also takes force=false.
  if (r >= 0) r = enable ? sd_bus_message_append(call.get(), "bb", 0, 0)
                         : sd_bus_message_append(call.get(), "b", 0);
  if (r < 0) {
    error = std::string(method) + ": building the call: " + std::strerror(-r);
    return false;
  }
  BusError e;
  sd_bus_message* reply = nullptr;
  r = sd_bus_call(bus, call.get(), 0, &e.e, &reply);
  BusMessagePtr owned(reply);
  if (r < 0) {
    error = std::string(method) + ": " + e.text(r);
    return false;
  }
  // EnableUnitFiles answers (b carries_install_info, a(sss) changes);
  // DisableUnitFiles only a(sss).
  if (enable) {
    int carries = 0;
    if (sd_bus_message_read(reply, "b", &carries) < 0) {
      error = std::string(method) + ": unreadable reply";
      return false;
    }
  }
  r = sd_bus_message_enter_container(reply, SD_BUS_TYPE_ARRAY, "(sss)");
  while (r >= 0) {
    const char *type, *path, *source;
    r = sd_bus_message_read(reply, "(sss)", &type, &path, &source);
    if (r <= 0) break;
    changed = true;
  }
  if (r < 0) {
    error = std::string(method) + ": unreadable reply";
    return false;
  }
  return true;
}

}  // namespace

bool SdBusManager::doEnableUnitFiles(const std::vector<std::string>& units, bool& changed,
                                     std::string& error) {
  return unitFileCall(bus_.get(), "EnableUnitFiles", units, true, changed, error);
}

bool SdBusManager::doDisableUnitFiles(const std::vector<std::string>& units, bool& changed,
                                      std::string& error) {
  return unitFileCall(bus_.get(), "DisableUnitFiles", units, false, changed, error);
}

namespace {

// Matches JobRemoved signals to the jobs we queued. A job can finish before
// its StartUnit reply is processed, so results of unknown jobs are kept until
// the reply names them.
struct JobTracker {
  std::vector<JobOutcome>* outcomes = nullptr;
  std::vector<bool> resolved;
  size_t pendingCount = 0;
  std::unordered_map<std::string, size_t> byPath;         // job path -> request index
  std::unordered_map<std::string, std::string> finished;  // job path -> result, not yet matched

  void resolve(size_t index, bool ok, std::string result) {
    if (resolved[index]) return;
    resolved[index] = true;
    (*outcomes)[index] = JobOutcome{ok, std::move(result)};
    --pendingCount;
  }

  void queued(size_t index, const std::string& path) {
    if (auto it = finished.find(path); it != finished.end()) {
      resolve(index, it->second == "done", it->second);
      finished.erase(it);
      return;
    }
    byPath.emplace(path, index);
  }

  void removed(const std::string& path, const std::string& result) {
    if (auto it = byPath.find(path); it != byPath.end()) {
      resolve(it->second, result == "done", result);
      byPath.erase(it);
      return;
    }
    finished.emplace(path, result);
  }

  static int onJobRemoved(sd_bus_message* m, void* userdata, sd_bus_error* /*ret*/) {
    auto* self = static_cast<JobTracker*>(userdata);
    uint32_t id = 0;
    const char* path = nullptr;
    const char* unit = nullptr;
    const char* result = nullptr;
    if (sd_bus_message_read(m, "uoss", &id, &path, &unit, &result) < 0) return 0;
    self->removed(path, result);
    return 0;
  }
};

}  // namespace

std::vector<JobOutcome> SdBusManager::doRunJobs(const std::vector<JobRequest>& jobs,
                                                std::chrono::milliseconds timeout) {
  std::vector<JobOutcome> outcomes(jobs.size());
  JobTracker tracker;
  tracker.outcomes = &outcomes;
  tracker.resolved.assign(jobs.size(), false);
  tracker.pendingCount = jobs.size();
  auto failAll = [&](const std::string& why) {
    for (size_t i = 0; i < jobs.size(); ++i) tracker.resolve(i, false, why);
    return outcomes;
  };

  // Subscribed before the first job is queued, so no JobRemoved can be missed.
  // systemd sends a job's JobRemoved to the client that queued it.
  sd_bus_slot* rawSlot = nullptr;
  int r = sd_bus_match_signal(bus_.get(), &rawSlot, kService, kManagerPath, kManagerIface,
                              "JobRemoved", JobTracker::onJobRemoved, &tracker);
  BusSlotPtr match(rawSlot);
  if (r < 0) return failAll(std::string("cannot watch job results: ") + std::strerror(-r));

  auto timeoutUsec = static_cast<uint64_t>(timeout.count()) * 1000;
  // Jobs go in waves of kMaxInFlight: queue a wave, wait for every job of it
  // to finish, then the next. Queueing a thousand starts at once made
  // systemd 252 leave a window of calls unanswered for minutes (seen in
  // bench/reconcile); waves keep both sides bounded and cost little, since
  // the jobs of a wave still run in parallel.
  for (size_t first = 0; first < jobs.size(); first += kMaxInFlight) {
    size_t count = std::min(kMaxInFlight, jobs.size() - first);
    Pipeline pipeline(
        bus_.get(),
        [&](size_t k, sd_bus_message** call) {
          const JobRequest& job = jobs[first + k];
          const char* method = job.kind == JobKind::Start     ? "StartUnit"
                               : job.kind == JobKind::Restart ? "RestartUnit"
                                                              : "StopUnit";
          int rr = sd_bus_message_new_method_call(bus_.get(), call, kService, kManagerPath,
                                                  kManagerIface, method);
          if (rr < 0) return rr;
          return sd_bus_message_append(*call, "ss", job.unit.c_str(), "replace");
        },
        [&](size_t k, sd_bus_message* reply) {
          if (sd_bus_message_is_method_error(reply, nullptr)) {
            tracker.resolve(first + k, false, replyError(reply));
            return;
          }
          const char* path = nullptr;
          if (sd_bus_message_read(reply, "o", &path) < 0) {
            tracker.resolve(first + k, false, "unreadable job reply");
            return;
          }
          tracker.queued(first + k, path);
        });
    std::string error;
    if (!pipeline.run(count, timeoutUsec, error)) return failAll(error);
    bool timedOut = false;
    uint64_t deadline = monotonicUsec() + timeoutUsec;
    size_t waveDone = jobs.size() - first - count;  // pending count once this wave is done
    if (!pump(bus_.get(), [&] { return tracker.pendingCount == waveDone; }, deadline, error,
              timedOut)) {
      return failAll(timedOut ? "job did not finish within job_timeout" : error);
    }
  }
  return outcomes;
}

}  // namespace usher::reconcile
