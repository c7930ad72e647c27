// A SystemdManager for unit tests: units live in a World the test can read
// and arrange; every call is logged. The acceptance tests use real systemd
// (tests/systemd/); this fake only lets plan and run logic be checked fast.
#pragma once

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "reconcile/systemd.h"

namespace usher::reconcile::testing {

struct World {
  std::map<std::string, UnitStatus> units;  // absent: an instance of the template, never loaded
  std::set<std::string> missing;            // units whose file does not exist
  std::set<std::string> failingJobs;        // jobs on these units end "failed"
  std::vector<std::string> calls;           // "enable a b", "reload", "start a", ...

  UnitStatus& unit(const std::string& name) {
    auto it = units.find(name);
    if (it != units.end()) return it->second;
    UnitStatus s;
    s.loadState = missing.count(name) ? "not-found" : "loaded";
    s.activeState = "inactive";
    s.subState = "dead";
    s.unitFileState = missing.count(name) ? "" : "disabled";
    return units.emplace(name, s).first->second;
  }
  // An instance that is enabled, running since `sinceUsec` (CLOCK_REALTIME).
  void running(const std::string& name, uint64_t sinceUsec = 1) {
    UnitStatus& s = unit(name);
    s.activeState = "active";
    s.subState = "running";
    s.wanted = true;
    s.unitFileState = "enabled";
    s.activeEnterUsec = sinceUsec;
  }
};

class FakeSystemd final : public SystemdManager {
public:
  explicit FakeSystemd(std::shared_ptr<World> world) : world_(std::move(world)) {}

  std::optional<UnitStatusMap> observe(const ObserveRequest& request, std::string&) override {
    UnitStatusMap out;
    for (const auto& u : request.units) out[u] = world_->unit(u);
    // Like the real one: the start time only where it was asked for.
    std::set<std::string> since(request.activeSinceToo.begin(), request.activeSinceToo.end());
    for (auto& [name, s] : out) {
      if (!since.count(name)) s.activeEnterUsec = 0;
    }
    return out;
  }

protected:
  bool doReload(std::string&) override {
    world_->calls.push_back("reload");
    for (auto& [name, s] : world_->units) {
      s.needDaemonReload = false;
      s.wanted = s.unitFileState == "enabled";
    }
    return true;
  }
  bool doEnableUnitFiles(const std::vector<std::string>& units, bool& changed,
                         std::string& error) override {
    return unitFiles("enable", units, true, changed, error);
  }
  bool doDisableUnitFiles(const std::vector<std::string>& units, bool& changed,
                          std::string& error) override {
    return unitFiles("disable", units, false, changed, error);
  }
  std::vector<JobOutcome> doRunJobs(const std::vector<JobRequest>& jobs,
                                    std::chrono::milliseconds) override {
    std::vector<JobOutcome> out;
    for (const auto& j : jobs) {
      world_->calls.push_back(std::string(toString(j.kind)) + " " + j.unit);
      if (world_->failingJobs.count(j.unit)) {
        out.push_back({false, "failed"});
        world_->unit(j.unit).activeState = "failed";
        continue;
      }
      UnitStatus& s = world_->unit(j.unit);
      s.activeState = j.kind == JobKind::Stop ? "inactive" : "active";
      s.activeEnterUsec = 4'000'000'000'000'000ULL;  // later than any file time in the tests
      out.push_back({true, "done"});
    }
    return out;
  }

private:
  bool unitFiles(const char* verb, const std::vector<std::string>& units, bool enable,
                 bool& changed, std::string& error) {
    std::string call = verb;
    for (const auto& u : units) call += " " + u;
    world_->calls.push_back(call);
    for (const auto& u : units) {
      if (world_->missing.count(u)) {
        error = "No such file: " + u;
        return false;
      }
    }
    for (const auto& u : units) {
      UnitStatus& s = world_->unit(u);
      changed = changed || (s.unitFileState == "enabled") != enable;
      s.unitFileState = enable ? "enabled" : "disabled";
    }
    return true;
  }

  std::shared_ptr<World> world_;
};

}  // namespace usher::reconcile::testing
