#include "reconcile/reconcile.h"

#include <doctest.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <spdlog/spdlog.h>

#include "common/atomic_file.h"
#include "tests/reconcile/fake_systemd.h"

using namespace usher;
using namespace usher::reconcile;
using usher::reconcile::testing::FakeSystemd;
using usher::reconcile::testing::World;
namespace fs = std::filesystem;

namespace {

// A host in a temp dir: map, state, env dir and lock there; users and
// systemd faked.
struct Host {
  fs::path dir;
  Config config;
  std::shared_ptr<World> world = std::make_shared<World>();
  std::set<std::string> accounts = {"alice", "bob", "carol", "dave"};
  bool connectFails = false;

  Host() {
    char tmpl[] = "/tmp/usher-reconcile-test.XXXXXX";
    dir = ::mkdtemp(tmpl);
    config.mapFile = (dir / "map").string();
    config.stateFile = (dir / "lib" / "state.json").string();
    config.envDir = (dir / "env").string();
    config.lockFile = (dir / "run" / "reconcile.lock").string();
    config.portFirst = 3773;
    config.portLast = 3782;
  }
  ~Host() {
    fs::remove_all(dir);
    spdlog::set_level(previousLevel);
  }
  // run() logs what it does; the checks here read the Report instead.
  spdlog::level::level_enum previousLevel = [] {
    auto level = spdlog::get_level();
    spdlog::set_level(spdlog::level::off);
    return level;
  }();

  void write(const fs::path& p, const std::string& text) {
    fs::create_directories(p.parent_path());
    std::ofstream(p) << text;
  }
  std::string read(const fs::path& p) {
    std::string error;
    return readFile(p.string(), error).value_or("<missing>");
  }
  void map(const std::string& text) { write(config.mapFile, text); }

  Environment env() {
    Environment e;
    e.lookup = [this](const std::string& name) -> std::optional<OsUserInfo> {
      if (name == "root") return OsUserInfo{0, 0, "/root"};
      if (!accounts.count(name)) return std::nullopt;
      return OsUserInfo{1000 + static_cast<uid_t>(name.size()), 1000, "/home/" + name};
    };
    e.busy = [](uint16_t) { return false; };
    e.connect = [this](std::string& error) -> std::unique_ptr<SystemdManager> {
      if (connectFails) {
        error = "cannot connect to the system bus: No such file or directory";
        return nullptr;
      }
      return std::make_unique<FakeSystemd>(world);
    };
    e.now = [] { return *parseUtc("2026-11-23T15:00:00Z"); };
    return e;
  }
  Report run(Options options = {}) { return reconcile::run(config, options, env()); }
};

}  // namespace

TEST_CASE("run: provisions, then a second run changes nothing") {
  Host h;
  h.map("alice=alice\nbob=bob\n");
  Report r = h.run();
  CHECK(r.exitCode == kExitOk);
  CHECK(r.errors.empty());
  CHECK(h.world->calls == std::vector<std::string>{
                              "enable t3-serve@alice.service t3-serve@bob.service", "reload",
                              "start t3-serve@alice.service", "start t3-serve@bob.service"});
  CHECK(r.mutatingCalls == 4);
  CHECK(r.reloaded);
  CHECK(r.stateWritten);
  CHECK(r.envFilesWritten == 2);
  CHECK(h.read(h.dir / "env" / "alice.env") == "T3_PORT=3773\n");
  CHECK(h.read(h.dir / "env" / "bob.env") == "T3_PORT=3774\n");
  std::vector<std::string> errors;
  auto state = State::load(h.config.stateFile, errors);
  REQUIRE(state.has_value());
  CHECK(state->find("alice")->port == 3773);
  CHECK(state->generatedAt == "2026-11-23T15:00:00Z");
  CHECK((fs::status(h.config.stateFile).permissions() & fs::perms::all) ==
        (fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read | fs::perms::others_read));

  std::string stateBefore = h.read(h.config.stateFile);
  auto mtimeBefore = fs::last_write_time(h.config.stateFile);
  h.world->calls.clear();
  Report again = h.run();
  CHECK(again.exitCode == kExitOk);
  CHECK(again.mutatingCalls == 0);
  CHECK(h.world->calls.empty());
  CHECK_FALSE(again.stateWritten);
  CHECK(again.envFilesWritten == 0);
  CHECK(h.read(h.config.stateFile) == stateBefore);
  CHECK(fs::last_write_time(h.config.stateFile) == mtimeBefore);
  for (const auto& o : again.users) CHECK(o.status == "unchanged");
}

TEST_CASE("run: removal stops, disables, reserves, and leaves the env file alone") {
  Host h;
  h.map("alice=alice\nbob=bob\n");
  REQUIRE(h.run().exitCode == kExitOk);
  std::string bobEnv = h.read(h.dir / "env" / "bob.env");
  h.map("alice=alice\n");
  h.world->calls.clear();
  Report r = h.run();
  CHECK(r.exitCode == kExitOk);
  CHECK(h.world->calls ==
        std::vector<std::string>{"disable t3-serve@bob.service", "reload", "stop t3-serve@bob.service"});
  REQUIRE(r.plan->removals.size() == 1);
  CHECK(r.removals[0].status == "changed");
  CHECK(h.read(h.dir / "env" / "bob.env") == bobEnv);
  std::vector<std::string> errors;
  auto state = State::load(h.config.stateFile, errors);
  CHECK(state->find("bob") == nullptr);
  CHECK(state->findReservation("bob")->port == 3774);
}

TEST_CASE("run: bad map lines and failing users give exit 1, the rest is done") {
  Host h;
  h.map("alice=alice\nnot a line\nghost=nobody\nadmin=root\nbob=bob\ncarol=carol\n");
  h.world->failingJobs.insert("t3-serve@bob.service");
  h.world->missing.insert("t3-serve@carol.service");
  Report r = h.run();
  CHECK(r.exitCode == kExitPartial);
  REQUIRE(r.mapErrors.size() == 3);
  CHECK(r.mapErrors[0].line == 2);
  CHECK(r.mapErrors[1].line == 3);
  CHECK(r.mapErrors[2].line == 4);
  REQUIRE(r.users.size() == 3);
  CHECK(r.users[0].status == "changed");
  CHECK(r.users[1].status == "failed");
  CHECK(r.users[1].error == "start t3-serve@bob.service: failed");
  CHECK(r.users[2].status == "failed");
  CHECK(r.users[2].error.find("not found") != std::string::npos);
  CHECK(h.world->unit("t3-serve@alice.service").activeState == "active");
  // Ports are handed out and recorded even for users whose instance failed.
  CHECK(h.read(h.dir / "env" / "bob.env") == "T3_PORT=3774\n");
}

TEST_CASE("run: could not run (exit 2) changes nothing") {
  Host h;
  SUBCASE("no map file") {
    Report r = h.run();
    CHECK(r.exitCode == kExitCannotRun);
    CHECK(r.errors[0].find("cannot read") != std::string::npos);
  }
  SUBCASE("no systemd") {
    h.map("alice=alice\n");
    h.connectFails = true;
    Report r = h.run();
    CHECK(r.exitCode == kExitCannotRun);
    CHECK(r.errors[0] == "cannot connect to the system bus: No such file or directory");
  }
  SUBCASE("a state file that is not usable") {
    h.map("alice=alice\n");
    h.write(h.config.stateFile, "{\"version\": 1, \"users\": ");
    Report r = h.run();
    CHECK(r.exitCode == kExitCannotRun);
    CHECK(r.errors[0].find("unusable") != std::string::npos);
    CHECK(h.read(h.config.stateFile) == "{\"version\": 1, \"users\": ");
  }
  SUBCASE("the lock is held and we do not wait") {
    h.map("alice=alice\n");
    fs::create_directories(h.dir / "run");
    int fd = ::open(h.config.lockFile.c_str(), O_RDWR | O_CREAT, 0600);
    REQUIRE(::flock(fd, LOCK_EX) == 0);
    Options o;
    o.noWait = true;
    Report r = h.run(o);
    CHECK(r.exitCode == kExitCannotRun);
    CHECK(r.errors[0].find("another usher-reconcile run holds") != std::string::npos);
    ::close(fd);
    CHECK(h.run(o).exitCode == kExitOk);
    return;
  }
  CHECK_FALSE(fs::exists(h.dir / "env"));
  CHECK(h.world->calls.empty());
}

TEST_CASE("run: --dry-run plans without touching anything; --json documents it") {
  Host h;
  h.map("alice=alice\nbob=bob\n");
  REQUIRE(h.run().exitCode == kExitOk);
  h.map("alice=alice\ncarol=carol\n");
  std::string stateBefore = h.read(h.config.stateFile);
  h.world->calls.clear();
  Options o;
  o.dryRun = true;
  Report r = h.run(o);
  CHECK(r.exitCode == kExitOk);
  CHECK(h.world->calls.empty());
  CHECK(h.read(h.config.stateFile) == stateBefore);
  CHECK_FALSE(fs::exists(h.dir / "env" / "carol.env"));

  auto j = toJson(r, h.config);
  // The documented top-level keys, in order.
  std::vector<std::string> keys;
  for (auto it = j.begin(); it != j.end(); ++it) keys.push_back(it.key());
  CHECK(keys == std::vector<std::string>{
                    "usher_reconcile", "dry_run", "exit_code", "started_at", "duration_ms",
                    "lock_wait_ms", "timings_ms", "config", "errors", "warnings", "map_errors",
                    "users", "removed", "reserved", "expired", "skipped", "vms", "state_file",
                    "env_files_written", "systemd", "summary"});
  CHECK(j["dry_run"] == true);
  CHECK(j["config"]["port_range"] == "3773-3782");
  CHECK(j["config"]["unit_template"] == "t3-serve@.service");
  REQUIRE(j["users"].size() == 2);
  CHECK(j["users"][0]["os_user"] == "alice");
  CHECK(j["users"][0]["status"] == "unchanged");
  CHECK(j["users"][0]["actions"] == nlohmann::json::array());
  CHECK(j["users"][1] == nlohmann::ordered_json::parse(R"({
    "os_user": "carol", "sso_names": ["carol"], "line": 2, "unit": "t3-serve@carol.service",
    "port": 3775, "port_source": "new", "env_file": "create", "unit_file_state": "disabled",
    "active_state": "inactive", "actions": ["write_env", "enable", "start"],
    "reason": "instance is inactive", "status": "planned"})"));
  REQUIRE(j["removed"].size() == 1);
  CHECK(j["removed"][0]["os_user"] == "bob");
  CHECK(j["removed"][0]["actions"] == nlohmann::json::array({"stop", "disable"}));
  CHECK(j["removed"][0]["status"] == "planned");
  REQUIRE(j["reserved"].size() == 1);
  CHECK(j["reserved"][0] == nlohmann::ordered_json::parse(
                                R"({"os_user": "bob", "port": 3774, "since": "2026-11-23T15:00:00Z",
                                    "expires": "2026-12-23T15:00:00Z"})"));
  CHECK(j["state_file"] == nlohmann::ordered_json::parse(R"({"changed": true, "written": false})"));
  CHECK(j["systemd"] == nlohmann::ordered_json::parse(R"({"daemon_reload": true, "mutating_calls": 0})"));
  CHECK(j["summary"] == nlohmann::ordered_json::parse(
                            R"({"users": 2, "unchanged": 1, "planned": 1, "failed": 0, "removed": 1,
                                "map_errors": 0})"));
  CHECK(toText(r).find("planned carol port 3775 (new) write_env,enable,start") != std::string::npos);
}

TEST_CASE("run: stale temp files of a killed run are removed, others' files kept") {
  Host h;
  h.map("alice=alice\n");
  h.write(h.dir / "env" / ".alice.env.tmp.AbC123", "T3_POR");
  h.write(h.dir / "lib" / ".state.json.tmp.XyZ789", "{\"vers");
  h.write(h.dir / "env" / ".keep.me", "not ours");
  REQUIRE(h.run().exitCode == kExitOk);
  CHECK_FALSE(fs::exists(h.dir / "env" / ".alice.env.tmp.AbC123"));
  CHECK_FALSE(fs::exists(h.dir / "lib" / ".state.json.tmp.XyZ789"));
  CHECK(fs::exists(h.dir / "env" / ".keep.me"));
}
