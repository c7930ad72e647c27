// The plan: what must change so that systemd, the env files and the state
// file match the user map. Computed from what was read (map, state, env
// files, unit status) without touching anything, so --dry-run prints exactly
// what a real run would do and unit tests can check every decision.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/statefile.h"
#include "common/usermap.h"
#include "reconcile/config.h"
#include "reconcile/ports.h"
#include "reconcile/systemd.h"

namespace usher::reconcile {

using Clock = std::chrono::system_clock;

enum class PortSource {
  State,     // already assigned (sticky)
  Reserved,  // a returning user gets back the port held for them
  EnvFile,   // adopted from an existing T3_PORT= (seed deployment)
  New,       // newly allocated from the range
};
const char* toString(PortSource source);

enum class UnitAction { None, Start, Restart };
const char* toString(UnitAction action);

struct EnvFileSeen {
  std::string text;
  Clock::time_point modified;
};

// One mapped OS user with backend=unit.
struct UserPlan {
  std::string osUser;
  std::vector<std::string> ssoNames;
  int line = 0;  // first map line naming the user
  std::string unit;
  std::optional<uint16_t> port;
  PortSource portSource = PortSource::New;
  bool envExists = false;
  std::optional<std::string> envText;  // content to write; nullopt: the file is right
  bool enable = false;
  UnitAction action = UnitAction::None;
  std::string reason;  // why the action, for people reading the plan
  UnitStatus observed;
  std::string error;  // set: this user cannot be (fully) provisioned

  bool changes() const { return envText.has_value() || enable || action != UnitAction::None; }
};

// A user who is no longer mapped and whose instance must stop.
struct RemovalPlan {
  std::string osUser;
  std::string unit;
  uint16_t port = 0;
  bool newlyRemoved = false;  // removed from the map since the last run
  bool stop = false;
  bool disable = false;
  UnitStatus observed;
};

struct SkippedUser {
  std::string osUser;
  std::string reason;
};

struct Plan {
  std::vector<UserPlan> users;        // map order
  std::vector<RemovalPlan> removals;  // newly removed, or still running/enabled
  std::vector<Reservation> expired;   // reservations dropped by this run
  std::vector<SkippedUser> skipped;   // mapped, but not handled here (backend=vm)
  State newState;                     // generatedAt left empty
  bool stateChanged = false;
  bool reload = false;  // some unit's files changed on disk since systemd read them

  size_t failedCount() const;
};

struct PlanInputs {
  const Config* config = nullptr;
  const UserMap* map = nullptr;
  const State* state = nullptr;  // as read; empty when there was none
  // No state file existed: env files of users who are not mapped are adopted
  // as reservations (a seed deployment's removed users keep their numbers).
  bool firstRun = false;
  std::unordered_map<std::string, EnvFileSeen> envFiles;  // os user -> existing env file
  UnitStatusMap units;                                    // unit name -> observed status
  PortBusy busy;
  Clock::time_point now;
};

// The units whose status the plan needs: every mapped user's, every user's
// in the state file, every reserved user's, and those of `alsoUsers` (on a
// first run, the users who have an env file).
std::vector<std::string> unitsToObserve(const Config& config, const UserMap& map,
                                        const State& state,
                                        const std::vector<std::string>& alsoUsers = {});
// Of those, the units of users who are not mapped: their unit file state
// decides whether to disable them.
std::vector<std::string> unitsOfUnmappedUsers(const Config& config, const UserMap& map,
                                              const State& state,
                                              const std::vector<std::string>& alsoUsers = {});

Plan computePlan(const PlanInputs& in);

// The same users, reservations and versions, whatever generatedAt says.
bool sameState(const State& a, const State& b);

// "2026-11-23T15:00:00Z"
std::string formatUtc(Clock::time_point t);
std::optional<Clock::time_point> parseUtc(const std::string& s);

}  // namespace usher::reconcile
