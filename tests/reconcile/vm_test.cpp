// VM backends in usher-reconcile, against a fake provider that honours the
// contract (docs/vm-provider.md) and runs as a real child process: its
// "hypervisor" is a directory of files, and each VM can be told to
// misbehave (hang, print garbage, fail, die by a signal).
#include "reconcile/vm.h"

#include <doctest.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "common/atomic_file.h"
#include "reconcile/reconcile.h"

using namespace usher;
using namespace usher::reconcile;
namespace fs = std::filesystem;
using std::chrono::milliseconds;

namespace {

const char* kFakeProvider = R"PY(#!/usr/bin/python3
# A provider honouring docs/vm-provider.md; its hypervisor is the directory
# next to it: vms/NAME holds "running" or "stopped", data/NAME the data
# volume. behave/NAME (optional) makes one VM misbehave.
import json, os, signal, sys, time
here = os.path.dirname(os.path.abspath(__file__))
verb = sys.argv[1] if len(sys.argv) > 1 else ""
req = json.load(sys.stdin)
name = req["name"]
with open(os.path.join(here, "calls"), "a") as f:
    f.write("%s %s\n" % (verb, name))
behave = ""
try:
    behave = open(os.path.join(here, "behave", name)).read().strip()
except FileNotFoundError:
    pass
if behave == "hang":
    time.sleep(3600)
if behave == "garbage":
    print("Traceback (most recent call last): it went wrong")
    sys.exit(0)
if behave == "exit3":
    sys.exit(3)
if behave == "signal":
    os.kill(os.getpid(), signal.SIGKILL)
if behave == "fail":
    print(json.dumps({"error": "no_address", "message": "the guest got no address in 300 s"}))
    sys.exit(1)
if behave == "badaddr":
    print(json.dumps({"name": name, "state": "running", "address": "vm.example", "port": 8080}))
    sys.exit(0)
vm = os.path.join(here, "vms", name)
data = os.path.join(here, "data", name)
os.makedirs(os.path.dirname(vm), exist_ok=True)
os.makedirs(os.path.dirname(data), exist_ok=True)
state = open(vm).read() if os.path.exists(vm) else "absent"
n = int(name.encode().hex(), 16) % 200 + 10
addr = "192.168.233.%d" % n
port = req["profile"]["guest_port"]
if verb == "ensure":
    created = state == "absent"
    started = state != "running"
    if created and not os.path.exists(data) and req["profile"]["data_disk_bytes"] > 0:
        open(data, "w").write("data of " + req["os_user"])
    open(vm, "w").write("running")
    print(json.dumps({"name": name, "state": "running", "address": addr, "port": port,
                      "created": created, "started": started}))
elif verb == "status":
    out = {"name": name, "state": state}
    if state == "running":
        out.update(address=addr, port=port)
    print(json.dumps(out))
elif verb == "stop":
    if state != "absent":
        open(vm, "w").write("stopped")
    print(json.dumps({"name": name, "state": "stopped" if state != "absent" else "absent"}))
elif verb == "destroy":
    if os.path.exists(vm):
        os.unlink(vm)
    kept = not req.get("purge") and req["profile"]["persistent"]
    if not kept and os.path.exists(data):
        os.unlink(data)
    print(json.dumps({"name": name, "state": "absent", "data_kept": kept}))
else:
    print(json.dumps({"error": "bad_request", "message": "unknown verb"}))
    sys.exit(2)
)PY";

struct VmHost {
  fs::path dir;
  Config config;
  spdlog::level::level_enum previousLevel = spdlog::get_level();

  VmHost() {
    spdlog::set_level(spdlog::level::off);
    char tmpl[] = "/tmp/usher-vm-test.XXXXXX";
    dir = ::mkdtemp(tmpl);
    config.mapFile = (dir / "map").string();
    config.stateFile = (dir / "lib" / "state.json").string();
    config.envDir = (dir / "env").string();
    config.lockFile = (dir / "run" / "reconcile.lock").string();
    fs::create_directories(dir / "hv" / "behave");
    std::ofstream(dir / "hv" / "provider") << kFakeProvider;
    fs::permissions(dir / "hv" / "provider", fs::perms::owner_all);
    profile("default");
  }
  ~VmHost() {
    fs::remove_all(dir);
    spdlog::set_level(previousLevel);
  }
  VmProfile& profile(const std::string& name) {
    VmProfile& p = config.vm[name];
    p.name = name;
    p.provider = (dir / "hv" / "provider").string();
    p.baseImage = "base.qcow2";
    p.timeout = milliseconds(5000);
    return p;
  }
  void map(const std::string& text) { std::ofstream(config.mapFile) << text; }
  void behave(const std::string& osUser, const std::string& how) {
    std::ofstream(dir / "hv" / "behave" / vmNameFor(osUser)) << how;
  }
  std::string vmState(const std::string& osUser) {
    std::ifstream f(dir / "hv" / "vms" / vmNameFor(osUser));
    std::string s;
    return f ? (std::getline(f, s), s) : "absent";
  }
  bool dataExists(const std::string& osUser) { return fs::exists(dir / "hv" / "data" / vmNameFor(osUser)); }
  std::string calls() {
    std::string error;
    return readFile((dir / "hv" / "calls").string(), error).value_or("");
  }
  Environment env() {
    Environment e;
    e.lookup = [](const std::string& name) -> std::optional<OsUserInfo> {
      return OsUserInfo{2000 + static_cast<uid_t>(name.size()), 2000, "/home/" + name};
    };
    e.busy = [](uint16_t) { return false; };
    e.connect = [](std::string& error) -> std::unique_ptr<SystemdManager> {
      error = "no systemd in this test: only VM users are mapped";
      return nullptr;
    };
    e.now = [] { return *parseUtc("2026-11-23T15:00:00Z"); };
    e.providers = processProviderRunner();
    return e;
  }
  Report run(Options options = {}) { return reconcile::run(config, options, env()); }
  State state() {
    std::vector<std::string> errors;
    return State::load(config.stateFile, errors).value_or(State{});
  }
};

const VmUserResult& vmUser(const Report& r, const std::string& osUser) {
  for (const auto& u : r.vm.users)
    if (u.osUser == osUser) return u;
  FAIL("no VM result for " << osUser);
  throw 0;
}

}  // namespace

TEST_CASE("vm: ensure records the address; a second run finds the same VM and changes nothing") {
  VmHost h;
  h.map("carol=carol backend=vm\n");
  Report r = h.run();
  CHECK(r.exitCode == kExitOk);
  REQUIRE(r.vm.users.size() == 1);
  const auto& u = vmUser(r, "carol");
  CHECK(u.status == "changed");
  CHECK(u.created);
  CHECK(u.vmName == "usher-carol");
  State s = h.state();
  REQUIRE(s.find("carol") != nullptr);
  CHECK((s.find("carol")->kind == BackendKind::Vm));
  CHECK(s.find("carol")->address == u.address);
  CHECK(s.find("carol")->port == 8080);
  CHECK(s.find("carol")->vm["name"] == "usher-carol");
  CHECK(s.find("carol")->vm["profile"] == "default");
  std::string before = h.calls();

  Report again = h.run();
  CHECK(again.exitCode == kExitOk);
  CHECK(vmUser(again, "carol").status == "unchanged");
  CHECK_FALSE(vmUser(again, "carol").created);
  CHECK_FALSE(again.stateWritten);
  CHECK(h.calls() == before + "ensure usher-carol\n");

  // Stopped behind our back: the next run starts it again.
  std::ofstream(h.dir / "hv" / "vms" / "usher-carol") << "stopped";
  Report third = h.run();
  CHECK(vmUser(third, "carol").status == "changed");
  CHECK(vmUser(third, "carol").started);
  CHECK_FALSE(vmUser(third, "carol").created);
  CHECK(h.vmState("carol") == "running");
}

TEST_CASE("vm: a provider that hangs, prints garbage, fails or dies fails that user alone") {
  VmHost h;
  h.profile("default").timeout = milliseconds(1500);
  h.map(
      "alice=alice backend=vm\nbob=bob backend=vm\ncarol=carol backend=vm\n"
      "dave=dave backend=vm\nerin=erin backend=vm\nfrank=frank backend=vm\ngina=gina backend=vm\n");
  h.behave("alice", "hang");
  h.behave("bob", "garbage");
  h.behave("dave", "fail");
  h.behave("erin", "signal");
  h.behave("frank", "exit3");
  h.behave("gina", "badaddr");
  h.config.vmParallel = 8;
  auto t0 = std::chrono::steady_clock::now();
  Report r = h.run();
  auto took = std::chrono::steady_clock::now() - t0;
  CHECK(r.exitCode == kExitPartial);
  CHECK(vmUser(r, "carol").status == "changed");
  CHECK(h.state().find("carol") != nullptr);
  CHECK(vmUser(r, "alice").reason == "provider_timeout");
  CHECK(vmUser(r, "alice").error.find("timed out after 1.5s") != std::string::npos);
  CHECK(vmUser(r, "bob").reason == "provider_garbage");
  CHECK(vmUser(r, "bob").error.find("not one JSON object") != std::string::npos);
  CHECK(vmUser(r, "dave").reason == "provider_no_address");
  CHECK(vmUser(r, "dave").error == "provider failed: the guest got no address in 300 s");
  CHECK(vmUser(r, "erin").reason == "provider_signal");
  CHECK(vmUser(r, "frank").reason == "provider_exit");
  CHECK(vmUser(r, "gina").reason == "provider_reply");
  for (const char* u : {"alice", "bob", "dave", "erin", "frank", "gina"}) {
    CHECK(vmUser(r, u).status == "failed");
    CHECK(h.state().find(u) == nullptr);
  }
  // All at once: the hang cost its own timeout (plus the kill grace), not the others'.
  CHECK(took < std::chrono::seconds(10));

  // A failure keeps the last good address: routing goes on while it is retried.
  h.behave("carol", "fail");
  Report again = h.run();
  CHECK(vmUser(again, "carol").status == "failed");
  REQUIRE(h.state().find("carol") != nullptr);
  CHECK(h.state().find("carol")->address == vmUser(r, "carol").address);

  auto doc = toJson(again, h.config);
  bool found = false;
  for (const auto& u : doc["vms"]["users"])
    if (u["os_user"] == "carol") {
      found = true;
      CHECK(u["status"] == "failed");
      CHECK(u["reason"] == "provider_no_address");
    }
  CHECK(found);
}

TEST_CASE("vm: the quota of a hypervisor refuses newcomers with a clear error, never a VM that exists") {
  VmHost h;
  h.profile("default").maxVms = 2;
  VmProfile& gpu = h.profile("gpu");  // same uri: counts against the same host
  gpu.maxVms = 3;
  h.map("alice=alice backend=vm\nbob=bob backend=vm\n");
  CHECK(h.run().exitCode == kExitOk);
  // carol comes first in the map now, but alice and bob already have VMs.
  h.map(
      "carol=carol backend=vm\nalice=alice backend=vm\nbob=bob backend=vm\ndave=dave backend=vm "
      "vm_profile=gpu\n");
  Report r = h.run();
  CHECK(r.exitCode == kExitPartial);
  CHECK(vmUser(r, "alice").status == "unchanged");
  CHECK(vmUser(r, "bob").status == "unchanged");
  CHECK(vmUser(r, "carol").status == "failed");
  CHECK(vmUser(r, "carol").reason == "quota");
  CHECK(vmUser(r, "carol").error ==
        "quota: profile default allows at most 2 VMs on qemu:///system, all taken");
  CHECK(h.vmState("carol") == "absent");         // the provider was never asked
  CHECK(vmUser(r, "dave").status == "changed");  // gpu allows 3 on that host
  CHECK(h.calls().find("ensure usher-carol") == std::string::npos);
}

TEST_CASE("vm: a removed user's VM is stopped, data kept; on_remove=destroy; purge only on request") {
  VmHost h;
  h.map("carol=carol backend=vm\ndave=dave backend=vm vm_profile=lab\n");
  h.profile("lab").onRemove = VmProfile::OnRemove::Destroy;
  CHECK(h.run().exitCode == kExitOk);
  CHECK(h.dataExists("carol"));

  h.map("");
  Report r = h.run();
  CHECK(r.exitCode == kExitOk);
  REQUIRE(r.vm.removals.size() == 2);
  CHECK(r.vm.removals[0].osUser == "carol");
  CHECK(r.vm.removals[0].verb == "stop");
  CHECK(r.vm.removals[0].status == "changed");
  CHECK(r.vm.removals[1].osUser == "dave");
  CHECK(r.vm.removals[1].verb == "destroy");
  CHECK(r.vm.removals[1].dataKept);
  CHECK(h.vmState("carol") == "stopped");
  CHECK(h.vmState("dave") == "absent");
  CHECK(h.dataExists("carol"));
  CHECK(h.dataExists("dave"));  // persistent: destroy keeps the data volume
  CHECK(h.state().find("carol") == nullptr);
  CHECK(h.run().vm.removals.empty());  // nothing more to do

  // Coming back: the same VM, started, with the same data.
  h.map("carol=carol backend=vm\n");
  Report back = h.run();
  CHECK(vmUser(back, "carol").started);
  CHECK_FALSE(vmUser(back, "carol").created);

  // Purge: refused while mapped; deletes the data once asked for.
  nlohmann::ordered_json doc;
  Options o;
  CHECK(purge(h.config, o, h.env(), "carol", "", doc) == kExitCannotRun);
  CHECK(doc["error"].get<std::string>().find("still mapped") != std::string::npos);
  CHECK(h.dataExists("carol"));
  h.map("");
  h.run();
  CHECK(h.dataExists("carol"));
  CHECK(purge(h.config, o, h.env(), "carol", "", doc) == kExitOk);
  CHECK(doc["status"] == "changed");
  CHECK(doc["data_kept"] == false);
  CHECK_FALSE(h.dataExists("carol"));
  CHECK(h.dataExists("dave"));  // only the one asked for
  CHECK(purge(h.config, o, h.env(), "dave", "lab", doc) == kExitOk);
  CHECK_FALSE(h.dataExists("dave"));
}

TEST_CASE("vm: dry run asks only for status and changes nothing") {
  VmHost h;
  h.map("carol=carol backend=vm\n");
  Options dry;
  dry.dryRun = true;
  Report r = h.run(dry);
  CHECK(r.exitCode == kExitOk);
  CHECK(vmUser(r, "carol").status == "planned");
  CHECK(vmUser(r, "carol").observed == "absent");
  CHECK(h.calls() == "status usher-carol\n");
  CHECK_FALSE(fs::exists(h.config.stateFile));
}

TEST_CASE("vm: unknown profile and a missing provider fail that user with the reason") {
  VmHost h;
  h.profile("broken").provider = (h.dir / "no-such-provider").string();
  h.map(
      "carol=carol backend=vm vm_profile=nope\ndave=dave backend=vm vm_profile=broken\nerin=erin "
      "backend=vm\n");
  Report r = h.run();
  CHECK(r.exitCode == kExitPartial);
  CHECK(vmUser(r, "carol").reason == "no_profile");
  CHECK(vmUser(r, "carol").error.find("no [vm.nope] profile") == 0);
  CHECK(vmUser(r, "dave").reason == "provider_missing");
  CHECK(vmUser(r, "erin").status == "changed");
}

TEST_CASE("vm profiles: [vm.NAME] sections in the shared config, checked with file:line") {
  Config c;
  std::vector<ConfigError> errors;
  bool ok = parseConfig(
      "[vm.default]\nbase_image = debian-12.qcow2\nmemory = 2G\nvcpus = 2\ndisk = 30G\ndata_disk = 0\n"
      "persistent = no\nguest_port = 3773\nmax_vms = 5\non_remove = destroy\ntimeout = 90s\nmint = none\n"
      "uri = qemu+ssh://virt@hv2.example/system\nnetwork = bridge:br0\n"
      "[vm.gpu]\nbase_image = cuda.qcow2\nkernel = /boot/vmlinuz\ninitrd = /boot/initrd.img\ncmdline = "
      "console=ttyS0\n",
      "usher.conf", c, errors);
  CHECK(ok);
  CHECK(errors.empty());
  REQUIRE(c.vm.count("default"));
  const VmProfile& d = c.vm.at("default");
  CHECK(d.memoryMiB == 2048);
  CHECK(d.vcpus == 2);
  CHECK(d.diskBytes == (30ULL << 30));
  CHECK(d.dataDiskBytes == 0);
  CHECK_FALSE(d.persistent);
  CHECK(d.guestPort == 3773);
  CHECK(d.maxVms == 5);
  CHECK(d.onRemove == VmProfile::OnRemove::Destroy);
  CHECK(d.timeout == milliseconds(90'000));
  CHECK(d.mint == VmProfile::Mint::None);
  CHECK(d.uri == "qemu+ssh://virt@hv2.example/system");
  CHECK(c.vm.at("gpu").memoryMiB == 8192);  // the seed's defaults
  CHECK(c.vm.at("gpu").vcpus == 4);
  CHECK(c.vm.at("gpu").kernel == "/boot/vmlinuz");

  Config bad;
  errors.clear();
  CHECK_FALSE(
      parseConfig("[vm.x]\nmemory = lots\ncolour = blue\n[vm.Bad]\nbase_image = a\n[vm.y]\nkernel = /k\n"
                  "[vm.x]\nmemory = 1G\n",
                  "usher.conf", bad, errors));
  std::vector<std::string> got;
  for (const auto& e : errors) got.push_back(e.str());
  CHECK(got == std::vector<std::string>{
                   "usher.conf:2: [vm.x] memory: expected a size such as 512M, 8G or 20G",
                   "usher.conf:3: [vm.x] colour: unknown key",
                   "usher.conf:5: [vm.Bad] base_image: invalid profile name (1-32 of a-z 0-9 _ -)",
                   "usher.conf:9: [vm.x] memory: set twice (first on line 2)",
                   "usher.conf:2: [vm.x] base_image: required (the base image volume in the pool)",
                   "usher.conf:7: [vm.y] base_image: required (the base image volume in the pool)",
                   "usher.conf:7: [vm.y] initrd: kernel and initrd are set together",
               });
}

TEST_CASE("vm: the provider request carries the profile, the derived name and the deadline") {
  VmProfile p;
  p.name = "default";
  p.baseImage = "b.qcow2";
  auto j = providerRequest("destroy", "carol", p, true);
  CHECK(j["contract"] == 1);
  CHECK(j["verb"] == "destroy");
  CHECK(j["name"] == "usher-carol");
  CHECK(j["os_user"] == "carol");
  CHECK(j["purge"] == true);
  CHECK(j["deadline_s"] == 300.0);
  CHECK(j["profile"]["memory_mib"] == 8192);
  CHECK(j["profile"]["vcpus"] == 4);
  CHECK(j["profile"]["persistent"] == true);
  CHECK_FALSE(providerRequest("ensure", "carol", p).contains("purge"));
}
