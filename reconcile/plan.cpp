#include "reconcile/plan.h"

#include <time.h>

#include <algorithm>
#include <set>

#include "reconcile/envfile.h"

namespace usher::reconcile {

const char* toString(PortSource source) {
  switch (source) {
    case PortSource::State: return "state";
    case PortSource::Reserved: return "reserved";
    case PortSource::EnvFile: return "env_file";
    case PortSource::New: return "new";
  }
  return "new";
}

const char* toString(UnitAction action) {
  switch (action) {
    case UnitAction::None: return "none";
    case UnitAction::Start: return "start";
    case UnitAction::Restart: return "restart";
  }
  return "none";
}

size_t Plan::failedCount() const {
  return static_cast<size_t>(
      std::count_if(users.begin(), users.end(), [](const UserPlan& u) { return !u.error.empty(); }));
}

std::string formatUtc(Clock::time_point t) {
  time_t secs = Clock::to_time_t(t);
  tm parts{};
  ::gmtime_r(&secs, &parts);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &parts);
  return buf;
}

std::optional<Clock::time_point> parseUtc(const std::string& s) {
  tm parts{};
  const char* end = ::strptime(s.c_str(), "%Y-%m-%dT%H:%M:%SZ", &parts);
  if (end == nullptr || *end != '\0') return std::nullopt;
  time_t secs = ::timegm(&parts);
  if (secs == static_cast<time_t>(-1)) return std::nullopt;
  return Clock::from_time_t(secs);
}

bool sameState(const State& a, const State& b) {
  State ca = a;
  State cb = b;
  ca.generatedAt.clear();
  cb.generatedAt.clear();
  return ca.toJson() == cb.toJson();
}

namespace {

// OS users mapped with backend=unit, once each, in map order; with their SSO
// names (several when the map line says shared=yes).
struct MappedUser {
  std::string osUser;
  std::vector<std::string> ssoNames;
  int line = 0;
};

std::vector<MappedUser> mappedUnitUsers(const UserMap& map, std::vector<SkippedUser>* skipped,
                                        std::set<std::string>* allMapped) {
  std::vector<MappedUser> out;
  std::unordered_map<std::string, size_t> index;
  std::set<std::string> vmSeen;
  for (const MapEntry& e : map.entries()) {
    if (allMapped) allMapped->insert(e.osUser);
    if (e.backend != BackendKind::Unit) {
      if (skipped && vmSeen.insert(e.osUser).second) {
        skipped->push_back({e.osUser, "backend=vm: provisioned by its VM provider (see \"vms\")"});
      }
      continue;
    }
    auto [it, fresh] = index.try_emplace(e.osUser, out.size());
    if (fresh) out.push_back({e.osUser, {}, e.line});
    out[it->second].ssoNames.push_back(e.ssoName);
  }
  return out;
}


void decideUnit(const Config& config, const PlanInputs& in, UserPlan& u) {
  auto it = in.units.find(u.unit);
  if (it == in.units.end()) {
    u.error = "no status read for " + u.unit;
    return;
  }
  u.observed = it->second;
  const UnitStatus& s = u.observed;
  if (s.loadState == "not-found") {
    u.error = "unit " + u.unit + " not found: is " + config.unitTemplate + ".service installed?";
    return;
  }
  if (s.loadState == "masked" || s.unitFileState == "masked" ||
      s.unitFileState == "masked-runtime") {
    u.error = "unit " + u.unit + " is masked";
    return;
  }
  if (s.loadState != "loaded") {
    u.error = "unit " + u.unit + " cannot be loaded (load state " + s.loadState + ")";
    return;
  }
  // Wanted by some target already: enabled. Otherwise only "disabled" can be
  // enabled: static or indirect units have nothing to enable, and asking
  // again every run would never settle.
  u.enable = !s.wanted && s.unitFileState == "disabled";

  bool envChanged = u.envText.has_value();
  if (s.running()) {
    // An env file newer than the running instance also means a restart: a run
    // that was killed between writing the file and restarting is finished here.
    auto envIt = in.envFiles.find(u.osUser);
    bool envNewer = !envChanged && envIt != in.envFiles.end() && s.activeState == "active" &&
                    s.activeEnterUsec > 0 &&
                    std::chrono::duration_cast<std::chrono::microseconds>(
                        envIt->second.modified.time_since_epoch())
                            .count() > static_cast<int64_t>(s.activeEnterUsec);
    if (envChanged || envNewer) {
      u.action = UnitAction::Restart;
      u.reason = envChanged ? "env file changed" : "env file newer than the running instance";
    }
  } else {
    u.action = UnitAction::Start;
    u.reason = "instance is " + (s.activeState.empty() ? std::string("inactive") : s.activeState);
  }
}

}  // namespace

std::vector<std::string> unitsToObserve(const Config& config, const UserMap& map,
                                        const State& state,
                                        const std::vector<std::string>& alsoUsers) {
  std::set<std::string> users(alsoUsers.begin(), alsoUsers.end());
  for (const auto& m : mappedUnitUsers(map, nullptr, nullptr)) users.insert(m.osUser);
  for (const auto& [name, b] : state.backends()) {
    if (b.kind == BackendKind::Unit) users.insert(name);
  }
  for (const auto& [name, r] : state.reservations()) users.insert(name);
  std::vector<std::string> units;
  units.reserve(users.size());
  for (const auto& u : users) units.push_back(config.unitFor(u));
  return units;
}

std::vector<std::string> unitsOfUnmappedUsers(const Config& config, const UserMap& map,
                                              const State& state,
                                              const std::vector<std::string>& alsoUsers) {
  std::set<std::string> mapped;
  for (const MapEntry& e : map.entries()) mapped.insert(e.osUser);
  std::set<std::string> users;
  for (const auto& name : alsoUsers) users.insert(name);
  for (const auto& [name, b] : state.backends()) {
    if (b.kind == BackendKind::Unit) users.insert(name);
  }
  for (const auto& [name, r] : state.reservations()) users.insert(name);
  std::vector<std::string> units;
  for (const auto& u : users) {
    if (mapped.count(u) == 0) units.push_back(config.unitFor(u));
  }
  return units;
}

Plan computePlan(const PlanInputs& in) {
  const Config& config = *in.config;
  const State& old = *in.state;
  Plan plan;
  std::set<std::string> allMapped;
  std::vector<MappedUser> mapped = mappedUnitUsers(*in.map, &plan.skipped, &allMapped);
  PortAllocator ports(config.portFirst, config.portLast, in.busy);

  plan.users.reserve(mapped.size());
  for (auto& m : mapped) {
    UserPlan u;
    u.osUser = m.osUser;
    u.ssoNames = std::move(m.ssoNames);
    u.line = m.line;
    u.unit = config.unitFor(u.osUser);
    u.envExists = in.envFiles.count(u.osUser) > 0;
    plan.users.push_back(std::move(u));
  }

  std::unordered_map<std::string, size_t> userIndex;
  for (size_t i = 0; i < plan.users.size(); ++i) userIndex.emplace(plan.users[i].osUser, i);

  // 1. Sticky: ports already in the state file stay where they are.
  for (UserPlan& u : plan.users) {
    const Backend* b = old.find(u.osUser);
    if (b == nullptr || b->kind != BackendKind::Unit) continue;
    if (ports.claim(b->port, u.osUser)) {
      u.port = b->port;
      u.portSource = PortSource::State;
    }
  }

  // 2. Reservations: kept for users still away, given back to returning ones,
  //    dropped once older than port_reservation.
  std::vector<Reservation> keptReservations;
  for (const auto& [name, r] : old.reservations()) {
    auto since = parseUtc(r.since);
    // An unreadable date restarts the clock rather than freeing the port.
    Reservation kept = r;
    if (!since) kept.since = formatUtc(in.now);
    bool expired = since && in.now - *since >= config.portReservation;
    auto byName = userIndex.find(name);
    if (byName != userIndex.end()) {
      UserPlan* returning = &plan.users[byName->second];
      if (!returning->port && !expired && ports.claim(r.port, name)) {
        returning->port = r.port;
        returning->portSource = PortSource::Reserved;
      }
      continue;  // mapped again: no longer a reservation either way
    }
    if (allMapped.count(name) > 0) continue;  // mapped with backend=vm now
    if (expired) {
      plan.expired.push_back(r);
      continue;
    }
    if (ports.claim(r.port, name)) keptReservations.push_back(std::move(kept));
  }

  // 2b. Users removed from the map by this run: their ports are held from
  //     now on (port_reservation = 0: not at all), before anyone new gets one.
  //     Unless another user already holds that port (a damaged state file).
  std::set<std::string> newlyRemoved;
  for (const auto& [name, b] : old.backends()) {
    if (b.kind != BackendKind::Unit || allMapped.count(name) > 0) continue;
    newlyRemoved.insert(name);
    if (config.portReservation.count() > 0 && ports.claim(b.port, name)) {
      keptReservations.push_back({name, b.port, formatUtc(in.now)});
    }
  }

  // 3. Adoption: an existing env file's T3_PORT, unless someone holds it.
  for (UserPlan& u : plan.users) {
    if (u.port) continue;
    auto env = in.envFiles.find(u.osUser);
    if (env == in.envFiles.end()) continue;
    auto port = readT3Port(env->second.text);
    if (port && ports.claim(*port, u.osUser)) {
      u.port = *port;
      u.portSource = PortSource::EnvFile;
    }
  }

  // 4. First run only: env files of users who are not mapped hold their
  //    ports as reservations from now on.
  if (in.firstRun) {
    std::vector<std::string> names;
    for (const auto& [name, env] : in.envFiles) names.push_back(name);
    std::sort(names.begin(), names.end());  // deterministic when two files collide
    for (const auto& name : names) {
      if (allMapped.count(name) > 0 || old.findReservation(name) != nullptr) continue;
      auto port = readT3Port(in.envFiles.at(name).text);
      if (port && ports.claim(*port, name)) {
        keptReservations.push_back({name, *port, formatUtc(in.now)});
      }
    }
  }

  // 5. Everyone else gets the lowest free port of the range.
  for (UserPlan& u : plan.users) {
    if (u.port) continue;
    auto port = ports.allocate(u.osUser);
    if (!port) {
      u.error = "no free port left in " + std::to_string(config.portFirst) + "-" +
                std::to_string(config.portLast);
      continue;
    }
    u.port = *port;
    u.portSource = PortSource::New;
  }

  // Env files and units of the users who have a port.
  for (UserPlan& u : plan.users) {
    if (!u.port) continue;
    auto env = in.envFiles.find(u.osUser);
    std::string_view existing = env == in.envFiles.end() ? "" : std::string_view(env->second.text);
    if (env == in.envFiles.end() || readT3Port(existing) != u.port) {
      u.envText = withT3Port(existing, *u.port);
    }
    decideUnit(config, in, u);
  }

  // Every user who is not mapped but whose port is held must have no running
  // or enabled instance: the map is the whole truth for the host. Checking
  // the held ones each run also retries a stop that failed or timed out.
  std::set<std::string> toCheck(newlyRemoved);
  for (const auto& r : keptReservations) toCheck.insert(r.osUser);
  for (const auto& name : toCheck) {
    RemovalPlan r;
    r.osUser = name;
    r.unit = config.unitFor(name);
    r.newlyRemoved = newlyRemoved.count(name) > 0;
    if (const Backend* b = old.find(name)) r.port = b->port;
    for (const auto& kept : keptReservations) {
      if (kept.osUser == name) r.port = kept.port;
    }
    if (auto it = in.units.find(r.unit); it != in.units.end()) {
      r.observed = it->second;
      if (r.observed.loadState != "not-found") {
        r.stop = r.observed.activeState != "inactive" && r.observed.activeState != "failed" &&
                 !r.observed.activeState.empty();
        r.disable = r.observed.unitFileState == "enabled" ||
                    (r.observed.unitFileState.empty() && r.observed.wanted);
      }
    }
    if (r.newlyRemoved || r.stop || r.disable) plan.removals.push_back(std::move(r));
  }

  std::set<std::string> mappedAsUnit;
  for (const UserPlan& u : plan.users) mappedAsUnit.insert(u.osUser);
  // The state file: mapped users with a port, VM entries as they were, and
  // the entry of a user now mapped with backend=vm as it was.
  for (const UserPlan& u : plan.users) {
    if (!u.port) continue;
    Backend b;
    b.osUser = u.osUser;
    b.kind = BackendKind::Unit;
    b.address = config.backendAddress;
    b.port = *u.port;
    b.unit = u.unit;
    plan.newState.put(std::move(b));
  }
  for (const auto& [name, b] : old.backends()) {
    if (plan.newState.find(name) != nullptr || newlyRemoved.count(name) > 0) continue;
    if (mappedAsUnit.count(name) == 0) plan.newState.put(b);
  }
  for (auto& r : keptReservations) plan.newState.reserve(std::move(r));

  plan.stateChanged = !sameState(old, plan.newState);
  for (const auto& [unit, status] : in.units) {
    if (status.needDaemonReload) plan.reload = true;
  }
  return plan;
}

}  // namespace usher::reconcile
