#include "common/statefile.h"

#include <doctest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/atomic_file.h"

using nlohmann::json;
using usher::Backend;
using usher::BackendKind;
using usher::State;

namespace {

// doctest stringifies with an unqualified toString(), which ADL resolves to
// usher::toString(BackendKind); compare names instead.
std::string kind(BackendKind k) { return std::string(usher::toString(k)); }

struct Parsed {
  std::optional<State> state;
  std::vector<std::string> errors;
};

Parsed parse(std::string_view text) {
  Parsed p;
  p.state = State::parse(text, p.errors);
  return p;
}

// Parses a document whose "users" object is `users`; expects it to be usable.
Parsed parseUsers(const std::string& users) {
  auto p = parse(R"({"version": 1, "users": )" + users + "}");
  REQUIRE(p.state.has_value());
  return p;
}

// One user entry that must be skipped with exactly `error`.
void checkSkipped(const std::string& entry, const std::string& error) {
  CAPTURE(entry);
  auto p = parseUsers(R"({"alice": )" + entry + R"(, "bob": {"address": "127.0.0.1", "port": 1}})");
  CHECK(p.state->find("alice") == nullptr);
  CHECK(p.state->find("bob") != nullptr);
  REQUIRE(p.errors.size() == 1);
  CHECK(p.errors[0] == error);
}

void checkSameBackend(const Backend& a, const Backend& b) {
  CHECK(a.osUser == b.osUser);
  CHECK(kind(a.kind) == kind(b.kind));
  CHECK(a.address == b.address);
  CHECK(a.port == b.port);
  CHECK(a.unit == b.unit);
  CHECK(a.vm == b.vm);
}

const char* kExample = R"({
  "version": 1,
  "generated_at": "2026-11-23T15:00:00Z",
  "users": {
    "alice": {"kind": "unit", "address": "127.0.0.1", "port": 3773,
              "unit": "t3-serve@alice.service"},
    "carol": {"kind": "vm", "address": "192.168.122.10", "port": 3773,
              "vm": {"name": "usher-carol", "provider": "libvirt"}}
  }
})";

}  // namespace

TEST_CASE("State::parse: the header's example") {
  auto p = parse(kExample);
  REQUIRE(p.state.has_value());
  CHECK(p.errors.empty());
  const State& s = *p.state;
  CHECK(s.generatedAt == "2026-11-23T15:00:00Z");
  CHECK(s.size() == 2);
  const Backend* alice = s.find("alice");
  REQUIRE(alice != nullptr);
  CHECK(alice->osUser == "alice");
  CHECK(kind(alice->kind) == "unit");
  CHECK(alice->address == "127.0.0.1");
  CHECK(alice->port == 3773);
  CHECK(alice->unit == "t3-serve@alice.service");
  CHECK(alice->vm.is_null());
  const Backend* carol = s.find("carol");
  REQUIRE(carol != nullptr);
  CHECK(kind(carol->kind) == "vm");
  CHECK(carol->address == "192.168.122.10");
  CHECK(carol->unit.empty());
  CHECK(carol->vm == json{{"name", "usher-carol"}, {"provider", "libvirt"}});
  CHECK(s.find("dave") == nullptr);
}

TEST_CASE("State::parse: defaults, IPv6, port bounds and unknown keys") {
  auto p = parseUsers(R"({
    "a": {"address": "::1", "port": 1},
    "b": {"address": "fd00::10", "port": 65535, "future": [1, 2], "unit": ""},
    "c": {"address": "10.0.0.1", "port": 8080, "kind": "vm"}
  })");
  CHECK(p.errors.empty());
  CHECK(p.state->size() == 3);
  CHECK(kind(p.state->find("a")->kind) == "unit");  // kind defaults to unit
  CHECK(p.state->find("a")->port == 1);
  CHECK(p.state->find("b")->port == 65535);
  CHECK(p.state->find("b")->unit.empty());
  CHECK(kind(p.state->find("c")->kind) == "vm");
  CHECK(p.state->find("c")->vm.is_null());
  CHECK(p.state->generatedAt.empty());
}

TEST_CASE("State::parse: an unusable document is refused as a whole") {
  const std::string noVersion = "state file version missing or not 1";
  const std::string noUsers = "state file \"users\" missing or not an object";
  for (const auto& [text, error] : std::vector<std::pair<std::string, std::string>>{
           {"", "state file is not valid JSON"},
           {"{", "state file is not valid JSON"},
           {R"({"version": 1, "users": {}} trailing)", "state file is not valid JSON"},
           {"{\"version\": 1, \"users\": {\"a\xff\": {}}}", "state file is not valid JSON"},
           {"[]", "state file is not a JSON object"},
           {"null", "state file is not a JSON object"},
           {"1", "state file is not a JSON object"},
           {R"({"users": {}})", noVersion},
           {R"({"version": 2, "users": {}})", noVersion},
           {R"({"version": 0, "users": {}})", noVersion},
           {R"({"version": -1, "users": {}})", noVersion},
           {R"({"version": 1.0, "users": {}})", noVersion},
           {R"({"version": "1", "users": {}})", noVersion},
           {R"({"version": 1})", noUsers},
           {R"({"version": 1, "users": []})", noUsers},
           {R"({"version": 1, "users": null})", noUsers},
       }) {
    CAPTURE(text);
    auto p = parse(text);
    CHECK_FALSE(p.state.has_value());
    REQUIRE(p.errors.size() == 1);
    CHECK(p.errors[0] == error);
  }
}

TEST_CASE("State::parse: an empty users object is a valid, empty state") {
  auto p = parse(R"({"version": 1, "users": {}})");
  REQUIRE(p.state.has_value());
  CHECK(p.errors.empty());
  CHECK(p.state->size() == 0);
}

TEST_CASE("State::parse: generated_at of the wrong type is reported and ignored") {
  auto p = parse(R"({"version": 1, "generated_at": 5, "users": {}})");
  REQUIRE(p.state.has_value());
  REQUIRE(p.errors.size() == 1);
  CHECK(p.errors[0] == "state file \"generated_at\" is not a string; ignored");
  CHECK(p.state->generatedAt.empty());
}

TEST_CASE("State::parse: a malformed user is skipped, the others stay routable") {
  const std::string a = "user \"alice\": ";
  const std::string skipped = "; skipped";
  checkSkipped("[]", a + "entry is not an object" + skipped);
  checkSkipped("null", a + "entry is not an object" + skipped);
  checkSkipped(R"({"kind": "lxc", "address": "127.0.0.1", "port": 1})",
               a + "kind must be \"unit\" or \"vm\"" + skipped);
  checkSkipped(R"({"kind": 1, "address": "127.0.0.1", "port": 1})",
               a + "kind must be \"unit\" or \"vm\"" + skipped);
  checkSkipped(R"({"port": 1})", a + "address missing or not a string" + skipped);
  checkSkipped(R"({"address": 2130706433, "port": 1})",
               a + "address missing or not a string" + skipped);
  for (const char* addr : {"localhost", "example.com", "", "127.1", "127.0.0.1 ", "[::1]",
                           "fe80::1%eth0", "127.0.0.1:80"}) {
    checkSkipped(std::string(R"({"address": ")") + addr + R"(", "port": 1})",
                 a + "address \"" + addr + "\" is not a numeric IPv4 or IPv6 address" + skipped);
  }
  const std::string badPort = a + "port must be an integer in 1..65535" + skipped;
  for (const char* port : {"0", "65536", "-1", "3773.0", "3.5", "\"3773\"", "null", "true",
                           "18446744073709551616", "99999999999999999999"}) {
    checkSkipped(std::string(R"({"address": "127.0.0.1", "port": )") + port + "}", badPort);
  }
  checkSkipped(R"({"address": "127.0.0.1"})", badPort);
  checkSkipped(R"({"address": "127.0.0.1", "port": 1, "unit": 5})",
               a + "unit is not a string" + skipped);
  checkSkipped(R"({"address": "127.0.0.1", "port": 1, "unit": null})",
               a + "unit is not a string" + skipped);
  checkSkipped(R"({"address": "127.0.0.1", "port": 1, "vm": "usher-alice"})",
               a + "vm is not an object" + skipped);
  checkSkipped(R"({"address": "127.0.0.1", "port": 1, "vm": []})",
               a + "vm is not an object" + skipped);
}

TEST_CASE("State::parse: keys that are not OS user names are skipped, sanitized") {
  auto p = parseUsers(R"({
    "../etc": {"address": "127.0.0.1", "port": 1},
    "Alice": {"address": "127.0.0.1", "port": 1},
    "evil\u001b[31m\n": {"address": "127.0.0.1", "port": 1},
    "ok": {"address": "127.0.0.1", "port": 1}
  })");
  CHECK(p.state->size() == 1);
  CHECK(p.state->find("ok") != nullptr);
  REQUIRE(p.errors.size() == 3);
  // nlohmann's object is ordered by key.
  CHECK(p.errors[0] == "user \"../etc\": not a valid OS user name; skipped");
  CHECK(p.errors[1] == "user \"Alice\": not a valid OS user name; skipped");
  CHECK(p.errors[2] == "user \"evil?[31m?\": not a valid OS user name; skipped");
  for (const auto& e : p.errors)
    for (unsigned char c : e) CHECK((c >= 0x20 && c < 0x7f));

  auto q = parseUsers(R"({")" + std::string(100, 'x') + R"(": {"address": "127.0.0.1", "port": 1}})");
  REQUIRE(q.errors.size() == 1);
  CHECK(q.errors[0] ==
        "user \"" + std::string(64, 'x') + "\"...: not a valid OS user name; skipped");
}

TEST_CASE("State::toJson: the documented format") {
  State s;
  s.generatedAt = "2026-11-23T15:00:00Z";
  s.put(Backend{"alice", BackendKind::Unit, "127.0.0.1", 3773, "t3-serve@alice.service", nullptr});
  s.put(Backend{"carol", BackendKind::Vm, "192.168.122.10", 3773, "",
                json{{"name", "usher-carol"}, {"provider", "libvirt"}}});
  CHECK(s.toJson() == json::parse(kExample));
  CHECK(s.toJson().dump() ==
        R"({"generated_at":"2026-11-23T15:00:00Z","users":{"alice":{"address":"127.0.0.1",)"
        R"("kind":"unit","port":3773,"unit":"t3-serve@alice.service"},"carol":{"address":)"
        R"("192.168.122.10","kind":"vm","port":3773,"vm":{"name":"usher-carol","provider":)"
        R"("libvirt"}}},"version":1})");

  State empty;
  CHECK(empty.toJson().dump() == R"({"users":{},"version":1})");
}

TEST_CASE("State: parse(toJson()) round trip") {
  State s;
  s.generatedAt = "2026-01-02T03:04:05Z";
  s.put(Backend{"alice", BackendKind::Unit, "127.0.0.1", 3773, "t3-serve@alice.service", nullptr});
  s.put(Backend{"bob", BackendKind::Unit, "::1", 1, "", nullptr});
  s.put(Backend{"carol", BackendKind::Vm, "fd00::7", 65535, "",
                json{{"name", "usher-carol"}, {"nested", {{"cpus", 2}, {"tags", {"a", "b"}}}}}});
  s.put(Backend{"_svc-1", BackendKind::Vm, "10.0.0.9", 8080, "unit-too.service", json::object()});

  std::vector<std::string> errors;
  auto back = State::parse(s.toJson().dump(2), errors);
  REQUIRE(back.has_value());
  CHECK(errors.empty());
  CHECK(back->generatedAt == s.generatedAt);
  REQUIRE(back->size() == s.size());
  for (const auto& [name, b] : s.backends()) {
    CAPTURE(name);
    REQUIRE(back->find(name) != nullptr);
    checkSameBackend(*back->find(name), b);
  }
  CHECK(back->toJson() == s.toJson());

  // And the other way: a parsed file is written back the same.
  auto fromExample = parse(kExample);
  CHECK(fromExample.state->toJson() == json::parse(kExample));
}

TEST_CASE("State: find, put and erase") {
  State s;
  CHECK(s.find("alice") == nullptr);
  CHECK_FALSE(s.erase("alice"));
  s.put(Backend{"alice", BackendKind::Unit, "127.0.0.1", 3773, "", nullptr});
  s.put(Backend{"bob", BackendKind::Unit, "127.0.0.1", 3774, "", nullptr});
  CHECK(s.size() == 2);
  // put replaces: ports are sticky, but a backend can move.
  s.put(Backend{"alice", BackendKind::Vm, "10.0.0.5", 3773, "", json::object()});
  CHECK(s.size() == 2);
  REQUIRE(s.find("alice") != nullptr);
  CHECK(kind(s.find("alice")->kind) == "vm");
  CHECK(s.find("alice")->address == "10.0.0.5");
  CHECK(s.erase("alice"));
  CHECK_FALSE(s.erase("alice"));
  CHECK(s.find("alice") == nullptr);
  CHECK(s.find("bob")->port == 3774);
  CHECK(s.backends().size() == 1);
}

TEST_CASE("State::load") {
  char tmpl[] = "/tmp/usher-state-test.XXXXXX";
  REQUIRE(::mkdtemp(tmpl) != nullptr);
  std::filesystem::path dir = tmpl;
  std::string path = (dir / "state.json").string();

  std::vector<std::string> errors;
  CHECK_FALSE(State::load(path, errors).has_value());
  REQUIRE(errors.size() == 1);
  CHECK(errors[0] == "cannot read " + path + ": No such file or directory");

  State s;
  s.put(Backend{"alice", BackendKind::Unit, "127.0.0.1", 3773, "t3-serve@alice.service", nullptr});
  std::string werror;
  REQUIRE(usher::writeFileAtomically(path, s.toJson().dump(2) + "\n", 0644, werror));
  errors.clear();
  auto loaded = State::load(path, errors);
  REQUIRE(loaded.has_value());
  CHECK(errors.empty());
  REQUIRE(loaded->find("alice") != nullptr);
  checkSameBackend(*loaded->find("alice"), *s.find("alice"));

  std::ofstream(path) << "{not json";
  errors.clear();
  CHECK_FALSE(State::load(path, errors).has_value());
  REQUIRE(errors.size() == 1);
  CHECK(errors[0] == "state file is not valid JSON");
  std::filesystem::remove_all(dir);
}

TEST_CASE("State: reserved ports of removed users") {
  const char* doc = R"({"version": 1, "users": {
    "alice": {"address": "127.0.0.1", "port": 3773}},
    "reserved": {"bob": {"port": 3774, "since": "2026-11-20T09:00:00Z"}}})";
  auto p = parse(doc);
  REQUIRE(p.state.has_value());
  CHECK(p.errors.empty());
  CHECK(p.state->size() == 1);
  CHECK(p.state->find("bob") == nullptr);  // reserved is not routable
  const usher::Reservation* bob = p.state->findReservation("bob");
  REQUIRE(bob != nullptr);
  CHECK(bob->osUser == "bob");
  CHECK(bob->port == 3774);
  CHECK(bob->since == "2026-11-20T09:00:00Z");
  CHECK(p.state->reservations().size() == 1);

  SUBCASE("round trip") {
    std::vector<std::string> errors;
    auto back = State::parse(p.state->toJson().dump(), errors);
    REQUIRE(back.has_value());
    CHECK(errors.empty());
    CHECK(back->toJson() == p.state->toJson());
    CHECK(back->toJson()["reserved"] == json::parse(doc)["reserved"]);
  }
  SUBCASE("reserve replaces, unreserve removes") {
    State s = *p.state;
    s.reserve({"bob", 3999, "2026-11-21T00:00:00Z"});
    CHECK(s.findReservation("bob")->port == 3999);
    CHECK(s.unreserve("bob"));
    CHECK_FALSE(s.unreserve("bob"));
    CHECK(s.findReservation("bob") == nullptr);
    // No reservations: no "reserved" key at all, as before the key existed.
    CHECK(s.toJson().dump() ==
          R"({"users":{"alice":{"address":"127.0.0.1","kind":"unit","port":3773}},"version":1})");
  }
}

TEST_CASE("State::parse: malformed reservations are skipped, the rest is kept") {
  auto p = parse(R"({"version": 1, "users": {}, "reserved": {
    "ok": {"port": 4000, "since": "2026-11-20T09:00:00Z"},
    "noport": {"since": "2026-11-20T09:00:00Z"},
    "bigport": {"port": 70000, "since": "x"},
    "nosince": {"port": 4001},
    "numsince": {"port": 4002, "since": 5},
    "notobj": 3,
    "Bad Name": {"port": 4003, "since": "x"}}})");
  REQUIRE(p.state.has_value());
  CHECK(p.state->reservations().size() == 1);
  CHECK(p.state->findReservation("ok") != nullptr);
  CHECK(p.errors.size() == 6);
  auto has = [&](const std::string& e) {
    return std::find(p.errors.begin(), p.errors.end(), e) != p.errors.end();
  };
  CHECK(has("reserved \"noport\": port must be an integer in 1..65535; skipped"));
  CHECK(has("reserved \"bigport\": port must be an integer in 1..65535; skipped"));
  CHECK(has("reserved \"nosince\": since missing or not a string; skipped"));
  CHECK(has("reserved \"numsince\": since missing or not a string; skipped"));
  CHECK(has("reserved \"notobj\": entry is not an object; skipped"));
  CHECK(has("reserved \"Bad Name\": not a valid OS user name; skipped"));

  auto notObject = parse(R"({"version": 1, "users": {}, "reserved": []})");
  REQUIRE(notObject.state.has_value());
  CHECK(notObject.errors == std::vector<std::string>{"state file \"reserved\" is not an object; ignored"});
}
