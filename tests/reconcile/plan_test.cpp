#include "reconcile/plan.h"

#include <doctest.h>

#include <set>
#include <string>
#include <vector>

using namespace usher;
using namespace usher::reconcile;

namespace {

const Clock::time_point kNow = *parseUtc("2026-11-23T15:00:00Z");

UnitStatus loaded(const std::string& active = "inactive", bool enabled = false) {
  UnitStatus s;
  s.loadState = "loaded";
  s.activeState = active;
  s.wanted = enabled;
  s.unitFileState = enabled ? "" : "disabled";  // not read when wanted (as in sdbus_manager)
  return s;
}

// Everything a plan reads, with defaults a test overrides.
struct Scenario {
  Config config;
  std::string mapText;
  State state;
  bool firstRun = false;
  std::unordered_map<std::string, EnvFileSeen> env;
  UnitStatusMap units;
  std::set<uint16_t> busy;

  Scenario() {
    config.portFirst = 3773;
    config.portLast = 3782;
  }
  void envFile(const std::string& user, const std::string& text,
               Clock::time_point modified = kNow - std::chrono::hours(1)) {
    env[user] = EnvFileSeen{text, modified};
  }
  void stateUser(const std::string& user, uint16_t port) {
    state.put(Backend{user, BackendKind::Unit, "127.0.0.1", port, config.unitFor(user), nullptr});
  }
  // A user provisioned by an earlier run: in the state, env file right, running.
  void provisioned(const std::string& user, uint16_t port) {
    stateUser(user, port);
    envFile(user, "T3_PORT=" + std::to_string(port) + "\n");
    units[config.unitFor(user)] = loaded("active", true);
  }
  Plan plan() {
    std::vector<MapError> errors;
    map = UserMap::parse(mapText, {}, errors);
    REQUIRE(errors.empty());
    PlanInputs in;
    in.config = &config;
    in.map = &map;
    in.state = &state;
    in.firstRun = firstRun;
    in.envFiles = env;
    // Units nobody arranged: never started instances of an installed template.
    for (const auto& u : unitsToObserve(config, map, state)) {
      if (!units.count(u)) units[u] = loaded();
    }
    in.units = units;
    in.busy = [this](uint16_t p) { return busy.count(p) > 0; };
    in.now = kNow;
    return computePlan(in);
  }
  UserMap map;
};

// doctest stringifies enums through an ADL toString() that returns const
// char*; compare names instead.
std::string act(UnitAction a) { return toString(a); }
std::string src(PortSource s) { return toString(s); }

const UserPlan& user(const Plan& p, const std::string& name) {
  for (const auto& u : p.users) {
    if (u.osUser == name) return u;
  }
  FAIL("no plan for " << name);
  return p.users.front();
}

}  // namespace

TEST_CASE("plan: a new user gets the first free port, an env file, enable and start") {
  Scenario s;
  s.mapText = "alice=alice\n";
  Plan p = s.plan();
  REQUIRE(p.users.size() == 1);
  const UserPlan& a = p.users[0];
  CHECK(a.port == 3773);
  CHECK(src(a.portSource) == "new");
  CHECK(a.envText == "T3_PORT=3773\n");
  CHECK(a.enable);
  CHECK(act(a.action) == "start");
  CHECK(a.error.empty());
  CHECK(p.stateChanged);
  REQUIRE(p.newState.find("alice") != nullptr);
  CHECK(p.newState.find("alice")->port == 3773);
  CHECK(p.newState.find("alice")->unit == "t3-serve@alice.service");
  CHECK(p.newState.find("alice")->address == "127.0.0.1");
  CHECK(p.removals.empty());
  CHECK_FALSE(p.reload);
}

TEST_CASE("plan: nothing to do when everything matches") {
  Scenario s;
  s.mapText = "alice=alice\nbob=bob\n";
  s.provisioned("alice", 3773);
  s.provisioned("bob", 3774);
  Plan p = s.plan();
  for (const auto& u : p.users) {
    CHECK_FALSE(u.changes());
    CHECK(src(u.portSource) == "state");
  }
  CHECK_FALSE(p.stateChanged);
  CHECK(p.removals.empty());
}

TEST_CASE("plan: instance states decide start, nothing, or an error") {
  Scenario s;
  s.mapText = "a=a\nb=b\nc=c\nd=d\ne=e\nf=f\n";
  for (auto [u, port] : {std::pair{"a", 3773}, {"b", 3774}, {"c", 3775}, {"d", 3776}, {"e", 3777}, {"f", 3778}}) {
    s.provisioned(u, static_cast<uint16_t>(port));
  }
  s.units["t3-serve@a.service"].activeState = "failed";
  s.units["t3-serve@b.service"].activeState = "activating";  // auto-restart: coming anyway
  s.units["t3-serve@c.service"] = loaded("inactive", false);
  s.units["t3-serve@c.service"].unitFileState = "static";     // nothing to enable
  s.units["t3-serve@d.service"].loadState = "not-found";
  s.units["t3-serve@e.service"].loadState = "masked";
  s.units["t3-serve@f.service"].needDaemonReload = true;
  Plan p = s.plan();
  CHECK(act(user(p, "a").action) == "start");
  CHECK(user(p, "a").reason == "instance is failed");
  CHECK(act(user(p, "b").action) == "none");
  CHECK(act(user(p, "c").action) == "start");
  CHECK_FALSE(user(p, "c").enable);
  CHECK(user(p, "d").error == "unit t3-serve@d.service not found: is t3-serve@.service installed?");
  CHECK_FALSE(user(p, "d").changes());
  CHECK(user(p, "e").error == "unit t3-serve@e.service is masked");
  CHECK(p.failedCount() == 2);
  CHECK(p.reload);
  // A user whose unit is missing keeps their port in the state.
  CHECK(p.newState.find("d")->port == 3776);
}

TEST_CASE("plan: an env file that says another port is rewritten and the instance restarted") {
  Scenario s;
  s.mapText = "alice=alice\n";
  s.provisioned("alice", 3773);
  s.envFile("alice", "# mine\nT3_PORT=9999\nEXTRA=1\n");
  Plan p = s.plan();
  const UserPlan& a = user(p, "alice");
  CHECK(a.port == 3773);  // never renumbered: the state wins
  CHECK(a.envText == "# mine\nT3_PORT=3773\nEXTRA=1\n");
  CHECK(act(a.action) == "restart");
  CHECK(a.reason == "env file changed");
  CHECK_FALSE(p.stateChanged);
}

TEST_CASE("plan: an env file newer than the running instance means a restart") {
  Scenario s;
  s.mapText = "alice=alice\nbob=bob\n";
  s.provisioned("alice", 3773);
  s.provisioned("bob", 3774);
  auto startedAt = kNow - std::chrono::minutes(30);
  uint64_t usec = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(startedAt.time_since_epoch()).count());
  s.units["t3-serve@alice.service"].activeEnterUsec = usec;
  s.units["t3-serve@bob.service"].activeEnterUsec = usec;
  s.envFile("alice", "T3_PORT=3773\n", kNow - std::chrono::minutes(1));  // written after the start
  s.envFile("bob", "T3_PORT=3774\n", kNow - std::chrono::hours(1));
  Plan p = s.plan();
  CHECK(act(user(p, "alice").action) == "restart");
  CHECK(user(p, "alice").reason == "env file newer than the running instance");
  CHECK_FALSE(user(p, "alice").envText.has_value());
  CHECK(act(user(p, "bob").action) == "none");
}

TEST_CASE("plan: a removed user is stopped, disabled, and their port reserved") {
  Scenario s;
  s.mapText = "alice=alice\n";
  s.provisioned("alice", 3773);
  s.provisioned("bob", 3774);
  s.units["t3-serve@bob.service"].unitFileState = "enabled";  // read for removed users
  Plan p = s.plan();
  REQUIRE(p.removals.size() == 1);
  const RemovalPlan& r = p.removals[0];
  CHECK(r.osUser == "bob");
  CHECK(r.port == 3774);
  CHECK(r.newlyRemoved);
  CHECK(r.stop);
  CHECK(r.disable);
  CHECK(p.newState.find("bob") == nullptr);
  REQUIRE(p.newState.findReservation("bob") != nullptr);
  CHECK(p.newState.findReservation("bob")->port == 3774);
  CHECK(p.newState.findReservation("bob")->since == "2026-11-23T15:00:00Z");
  CHECK(p.stateChanged);

  SUBCASE("a newcomer does not get the reserved port") {
    s.mapText = "alice=alice\ncarol=carol\n";
    Plan q = s.plan();
    CHECK(user(q, "carol").port == 3775);
  }
  SUBCASE("port_reservation = 0 holds nothing") {
    s.config.portReservation = std::chrono::seconds(0);
    s.mapText = "alice=alice\ncarol=carol\n";
    Plan q = s.plan();
    CHECK(q.newState.findReservation("bob") == nullptr);
    CHECK(user(q, "carol").port == 3774);
    CHECK(q.removals.size() == 1);
  }
}

TEST_CASE("plan: reservations last port_reservation, then the port is free again") {
  Scenario s;
  s.config.portReservation = std::chrono::hours(24 * 30);
  s.mapText = "carol=carol\ndave=dave\n";
  s.state.reserve({"old", 3773, "2026-10-01T00:00:00Z"});    // 53 days: expired
  s.state.reserve({"recent", 3774, "2026-11-01T00:00:00Z"});  // 22 days: kept
  Plan p = s.plan();
  REQUIRE(p.expired.size() == 1);
  CHECK(p.expired[0].osUser == "old");
  CHECK(p.newState.findReservation("old") == nullptr);
  CHECK(p.newState.findReservation("recent")->port == 3774);
  CHECK(p.newState.findReservation("recent")->since == "2026-11-01T00:00:00Z");
  CHECK(user(p, "carol").port == 3773);
  CHECK(user(p, "dave").port == 3775);
  // The removed user's instance is looked at again while the reservation
  // lasts: here it is stopped and disabled already, so nothing to do.
  CHECK(p.removals.empty());

  SUBCASE("an unreadable date restarts the clock instead of freeing the port") {
    s.state.reserve({"recent", 3774, "yesterday"});
    Plan q = s.plan();
    CHECK(q.newState.findReservation("recent")->since == "2026-11-23T15:00:00Z");
  }
  SUBCASE("a reserved user still running is stopped again") {
    s.units["t3-serve@recent.service"] = loaded("active", true);
    s.units["t3-serve@recent.service"].unitFileState = "enabled";
    Plan q = s.plan();
    REQUIRE(q.removals.size() == 1);
    CHECK(q.removals[0].osUser == "recent");
    CHECK_FALSE(q.removals[0].newlyRemoved);
    CHECK(q.removals[0].stop);
    CHECK(q.removals[0].disable);
  }
}

TEST_CASE("plan: a returning user gets their reserved port back") {
  Scenario s;
  s.mapText = "carol=carol\nbob=bob\n";
  s.state.reserve({"bob", 3777, "2026-11-20T00:00:00Z"});
  s.envFile("bob", "T3_PORT=3777\n");
  Plan p = s.plan();
  CHECK(user(p, "bob").port == 3777);
  CHECK(src(user(p, "bob").portSource) == "reserved");
  CHECK_FALSE(user(p, "bob").envText.has_value());
  CHECK(user(p, "carol").port == 3773);
  CHECK(p.newState.findReservation("bob") == nullptr);
  CHECK(p.newState.find("bob")->port == 3777);
}

TEST_CASE("plan: seed env files are adopted; collisions and junk get new ports") {
  Scenario s;
  s.firstRun = true;
  s.mapText = "vbarzin=wizard\nemil.barzin=emo\nx=copycat\ny=junk\nz=newbie\n";
  s.envFile("wizard", "T3_PORT=3773\n");
  s.envFile("emo", "T3_PORT=3774\n");
  s.envFile("copycat", "T3_PORT=3773\n");  // same as wizard: the earlier map line wins
  s.envFile("junk", "T3_PORT=seventy\n");
  s.envFile("departed", "T3_PORT=3775\n");  // not mapped: held for them
  s.envFile("outside", "T3_PORT=40000\n");  // held even outside the range
  Plan p = s.plan();
  CHECK(user(p, "wizard").port == 3773);
  CHECK(src(user(p, "wizard").portSource) == "env_file");
  CHECK_FALSE(user(p, "wizard").envText.has_value());
  CHECK(user(p, "emo").port == 3774);
  CHECK(user(p, "copycat").port == 3776);
  CHECK(user(p, "copycat").envText == "T3_PORT=3776\n");
  CHECK(user(p, "junk").port == 3777);
  CHECK(user(p, "junk").envText == "T3_PORT=3777\n");
  CHECK(user(p, "newbie").port == 3778);
  CHECK(p.newState.findReservation("departed")->port == 3775);
  CHECK(p.newState.findReservation("outside")->port == 40000);

  SUBCASE("not on later runs: then the state file is the truth") {
    s.firstRun = false;
    Plan q = s.plan();
    CHECK(q.newState.findReservation("departed") == nullptr);
  }
}

TEST_CASE("plan: busy ports are skipped; a full range fails only those who need a port") {
  Scenario s;
  s.config.portFirst = 3773;
  s.config.portLast = 3776;
  s.busy = {3774};
  s.mapText = "a=a\nb=b\nc=c\nd=d\ne=e\n";
  s.provisioned("c", 3773);
  Plan p = s.plan();
  CHECK(user(p, "c").port == 3773);
  CHECK(user(p, "a").port == 3775);  // 3773 held by c, 3774 busy
  CHECK(user(p, "b").port == 3776);
  CHECK_FALSE(user(p, "d").port.has_value());
  CHECK(user(p, "d").error == "no free port left in 3773-3776");
  CHECK_FALSE(user(p, "d").changes());
  CHECK(user(p, "e").error == "no free port left in 3773-3776");
  CHECK(p.failedCount() == 2);
  CHECK(p.newState.find("d") == nullptr);
  CHECK(p.newState.size() == 3);
}

TEST_CASE("plan: shared OS users appear once; VM users are left to the VM provider") {
  Scenario s;
  s.mapText = "alice=alice\nops-bot=alice shared=yes\ncarol=carol backend=vm\n";
  s.state.put(Backend{"carol", BackendKind::Vm, "192.168.122.10", 3773, "", {{"name", "usher-carol"}}});
  Plan p = s.plan();
  REQUIRE(p.users.size() == 1);
  CHECK(p.users[0].ssoNames == std::vector<std::string>{"alice", "ops-bot"});
  CHECK(p.users[0].port == 3773);  // the VM's port is on another address
  REQUIRE(p.skipped.size() == 1);
  CHECK(p.skipped[0].osUser == "carol");
  REQUIRE(p.newState.find("carol") != nullptr);
  CHECK(p.newState.find("carol")->address == "192.168.122.10");
  CHECK(p.removals.empty());
}

TEST_CASE("formatUtc / parseUtc") {
  CHECK(formatUtc(kNow) == "2026-11-23T15:00:00Z");
  CHECK(parseUtc("2026-11-23T15:00:00Z") == kNow);
  CHECK_FALSE(parseUtc("2026-11-23 15:00:00").has_value());
  CHECK_FALSE(parseUtc("2026-11-23T15:00:00Zjunk").has_value());
}
