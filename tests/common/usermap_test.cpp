#include "common/usermap.h"

#include <doctest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

using usher::BackendKind;
using usher::MapError;
using usher::OsUserInfo;
using usher::UserMap;
using usher::UserMapOptions;

namespace {

struct Parsed {
  UserMap map;
  std::vector<MapError> errors;
};

Parsed parse(std::string_view text, const UserMapOptions& options = {}) {
  Parsed p;
  p.map = UserMap::parse(text, options, p.errors);
  return p;
}

// doctest stringifies operands with an unqualified toString(), which ADL
// resolves to usher::toString(BackendKind); compare names instead.
std::string kind(BackendKind k) { return std::string(usher::toString(k)); }
std::string kind(std::optional<BackendKind> k) { return k ? kind(*k) : "none"; }

// One error, on `line`, with exactly `message`.
void checkOneError(const std::string& text, int line, const std::string& message) {
  CAPTURE(text);
  auto p = parse(text);
  REQUIRE(p.errors.size() == 1);
  CHECK(p.errors[0].line == line);
  CHECK(p.errors[0].message == message);
}

// A fake passwd database.
UserMapOptions withUsers(std::map<std::string, uid_t> users, uid_t minUid = 1000) {
  UserMapOptions options;
  options.minUid = minUid;
  options.lookup = [users = std::move(users)](const std::string& name) -> std::optional<OsUserInfo> {
    auto it = users.find(name);
    if (it == users.end()) return std::nullopt;
    return OsUserInfo{it->second, it->second, "/home/" + name};
  };
  return options;
}

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    char tmpl[] = "/tmp/usher-usermap-test.XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string write(const std::string& name, std::string_view content) const {
    std::string file = (path / name).string();
    std::ofstream(file, std::ios::binary) << content;
    return file;
  }
};

}  // namespace

TEST_CASE("validSsoName") {
  for (const char* good : {"a", "alice", "Alice.B", "emil.barzin", "ops-bot", "a@example.com",
                           "x+tag", "under_score", "0day", "A1"}) {
    CAPTURE(good);
    CHECK(usher::validSsoName(good));
  }
  CHECK(usher::validSsoName(std::string(128, 'a')));
  CHECK_FALSE(usher::validSsoName(std::string(129, 'a')));
  for (const char* bad : {"", ".alice", "-alice", "_alice", "@x", "al ice", "al/ice", "al=ice",
                          "al\nice", "al#ice", "alice\xc3\xa9", "al:ice", "al'ice"}) {
    CAPTURE(bad);
    CHECK_FALSE(usher::validSsoName(bad));
  }
  CHECK_FALSE(usher::validSsoName(std::string_view("al\0ice", 6)));
}

TEST_CASE("validOsUser") {
  for (const char* good : {"a", "alice", "_svc", "emo", "user-1", "u_2", "a0"}) {
    CAPTURE(good);
    CHECK(usher::validOsUser(good));
  }
  CHECK(usher::validOsUser(std::string(32, 'a')));
  CHECK_FALSE(usher::validOsUser(std::string(33, 'a')));
  for (const char* bad : {"", "Alice", "1user", "-user", "al.ice", "al ice", "../etc", "alice$",
                          "al@ice", "root\n"}) {
    CAPTURE(bad);
    CHECK_FALSE(usher::validOsUser(bad));
  }
}

TEST_CASE("BackendKind names") {
  CHECK(usher::toString(BackendKind::Unit) == "unit");
  CHECK(usher::toString(BackendKind::Vm) == "vm");
  CHECK(kind(usher::parseBackendKind("unit")) == "unit");
  CHECK(kind(usher::parseBackendKind("vm")) == "vm");
  CHECK_FALSE(usher::parseBackendKind("VM").has_value());
  CHECK_FALSE(usher::parseBackendKind("").has_value());
  CHECK_FALSE(usher::parseBackendKind("units").has_value());
}

TEST_CASE("UserMap::parse: the header's example and the file's syntax") {
  auto p = parse("# comment\n"
                 "alice=alice\n"
                 "\n"
                 "   \t\n"
                 "  # indented comment\n"
                 "emil.barzin=emo   backend=vm\n"
                 "ops-bot=alice     shared=yes\n"
                 "\tdave=dave\t  # trailing comment with = signs and backend=vm\n"
                 "erin=erin backend=unit shared=no #tight comment\n"
                 "frank=frank\r\n"
                 "last=last");  // no final newline
  CHECK(p.errors.empty());
  REQUIRE(p.map.size() == 7);
  const auto& e = p.map.entries();
  CHECK(e[0].ssoName == "alice");
  CHECK(e[0].osUser == "alice");
  CHECK(kind(e[0].backend) == "unit");
  CHECK_FALSE(e[0].shared);
  CHECK(e[0].line == 2);
  CHECK(e[1].ssoName == "emil.barzin");
  CHECK(e[1].osUser == "emo");
  CHECK(kind(e[1].backend) == "vm");
  CHECK(e[1].line == 6);
  CHECK(e[2].ssoName == "ops-bot");
  CHECK(e[2].osUser == "alice");
  CHECK(e[2].shared);
  CHECK(e[2].line == 7);
  CHECK(e[3].ssoName == "dave");
  CHECK(kind(e[3].backend) == "unit");
  CHECK(e[3].line == 8);
  CHECK(e[4].ssoName == "erin");
  CHECK_FALSE(e[4].shared);
  CHECK(e[5].osUser == "frank");  // the \r is gone
  CHECK(e[5].line == 10);
  CHECK(e[6].osUser == "last");
  CHECK(e[6].line == 11);

  REQUIRE(p.map.find("emil.barzin") != nullptr);
  CHECK(p.map.find("emil.barzin")->osUser == "emo");
  CHECK(p.map.find("ops-bot")->osUser == "alice");
  CHECK(p.map.find("Alice") == nullptr);  // names are exact
  CHECK(p.map.find("nobody") == nullptr);
  CHECK(p.map.find("") == nullptr);
}

TEST_CASE("UserMap::parse: empty input, CRLF files and a byte-order mark") {
  CHECK(parse("").map.size() == 0);
  CHECK(parse("\n\n# only comments\n").errors.empty());
  auto p = parse("\xEF\xBB\xBF" "alice=alice\r\n# c\r\nbob=bob\r\n");
  CHECK(p.errors.empty());
  REQUIRE(p.map.size() == 2);
  CHECK(p.map.entries()[0].ssoName == "alice");
  CHECK(p.map.entries()[1].line == 3);
}

TEST_CASE("UserMap::parse: one error per bad line, with its line number and a clear message") {
  SUBCASE("whitespace around '='") {
    const std::string msg = "whitespace around '=' is not allowed (write sso_name=os_user)";
    checkOneError("alice = alice", 1, msg);
    checkOneError("alice =alice", 1, msg);
    checkOneError("alice= alice", 1, msg);
    checkOneError("x=x\n  alice\t=\talice\n", 2, msg);
  }
  SUBCASE("not a mapping") {
    checkOneError("alice", 1, "expected sso_name=os_user, got \"alice\"");
    checkOneError("alice alice", 1, "expected sso_name=os_user, got \"alice\"");
    checkOneError("alice # comment", 1, "expected sso_name=os_user, got \"alice\"");
  }
  SUBCASE("bad names") {
    const std::string sso = " (1-128 of A-Z a-z 0-9 . _ @ + -, starting with a letter or digit)";
    const std::string os = " (1-32 of a-z 0-9 _ -, starting with a-z or _)";
    checkOneError("=alice", 1, "invalid SSO name \"\"" + sso);
    checkOneError(".alice=alice", 1, "invalid SSO name \".alice\"" + sso);
    checkOneError("al/ice=alice", 1, "invalid SSO name \"al/ice\"" + sso);
    checkOneError("alice=", 1, "invalid OS user \"\"" + os);
    checkOneError("alice=Alice", 1, "invalid OS user \"Alice\"" + os);
    checkOneError("alice=../../etc", 1, "invalid OS user \"../../etc\"" + os);
    checkOneError("alice=a=b", 1, "invalid OS user \"a=b\"" + os);
    checkOneError("alice=alice#x", 1, "invalid OS user \"alice#x\"" + os);
    checkOneError("alice=" + std::string(33, 'a'), 1,
                  "invalid OS user \"" + std::string(33, 'a') + "\"" + os);
  }
  SUBCASE("attributes") {
    checkOneError("alice=alice backend", 1, "attribute \"backend\" is not key=value");
    checkOneError("alice=alice colour=blue", 1,
                  "unknown attribute \"colour\" (known: backend, shared, vm_profile)");
    checkOneError("alice=alice Backend=vm", 1,
                  "unknown attribute \"Backend\" (known: backend, shared, vm_profile)");
    checkOneError("alice=alice =vm", 1, "unknown attribute \"\" (known: backend, shared, vm_profile)");
    checkOneError("alice=alice backend=vm backend=vm", 1, "repeated attribute \"backend\"");
    checkOneError("alice=alice shared=no shared=yes", 1, "repeated attribute \"shared\"");
    checkOneError("alice=alice vm_profile=gpu", 1, "vm_profile needs backend=vm");
    checkOneError("alice=alice backend=vm vm_profile=GPU", 1, "invalid vm_profile \"GPU\" (1-32 of a-z 0-9 _ -)");
    checkOneError("alice=alice backend=vm vm_profile=", 1, "invalid vm_profile \"\" (1-32 of a-z 0-9 _ -)");
    checkOneError("alice=alice backend=vm vm_profile=a vm_profile=b", 1, "repeated attribute \"vm_profile\"");
    checkOneError("alice=alice backend=vm vm_profile=gpu\nbot=alice shared=yes backend=vm", 2,
                  "OS user \"alice\" has vm_profile=gpu on line 1, not vm_profile=default");
    checkOneError("alice=alice backend=docker", 1,
                  "invalid backend \"docker\" (expected unit or vm)");
    checkOneError("alice=alice backend=", 1, "invalid backend \"\" (expected unit or vm)");
    checkOneError("alice=alice shared=true", 1, "invalid shared \"true\" (expected yes or no)");
  }
}

TEST_CASE("UserMap::parse: a bad line never takes the others down") {
  auto p = parse("alice=alice\n"
                 "bad line\n"
                 "bob=Bob\n"
                 "carol=carol backend=vm\n"
                 "dave=dave backend=lxc\n"
                 "erin=erin\n");
  REQUIRE(p.errors.size() == 3);
  CHECK(p.errors[0].line == 2);
  CHECK(p.errors[1].line == 3);
  CHECK(p.errors[2].line == 5);
  REQUIRE(p.map.size() == 3);
  CHECK(p.map.find("alice") != nullptr);
  CHECK(kind(p.map.find("carol")->backend) == "vm");
  CHECK(p.map.find("erin")->line == 6);
  CHECK(p.map.find("bob") == nullptr);
  CHECK(p.map.find("dave") == nullptr);
}

TEST_CASE("UserMap::parse: echoed text is sanitized and truncated") {
  auto p = parse("al\x1b[31mice=alice\n");
  REQUIRE(p.errors.size() == 1);
  CHECK(p.errors[0].message.rfind("invalid SSO name \"al?[31mice\"", 0) == 0);

  auto q = parse(std::string("bob=bo\0b\x7f\"\\", 11) + "\n");
  REQUIRE(q.errors.size() == 1);
  CHECK(q.errors[0].message.rfind("invalid OS user \"bo?b???\"", 0) == 0);

  std::string longName = "-" + std::string(200, 'x');
  auto r = parse(longName + "=alice");
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0].message.rfind("invalid SSO name \"-" + std::string(63, 'x') + "\"... (", 0) ==
        0);
  for (const auto& err : {p.errors[0], q.errors[0], r.errors[0]}) {
    for (unsigned char c : err.message) CHECK((c >= 0x20 && c < 0x7f));
  }
}

TEST_CASE("UserMap::parse: line length cap") {
  std::string atCap = "alice=alice" + std::string(4096 - 11 - 5, ' ') + "#" + std::string(4, 'c');
  REQUIRE(atCap.size() == 4096);
  auto ok = parse(atCap + "\r\nbob=bob\n");  // the \r does not count as too long
  CHECK(ok.errors.empty());
  CHECK(ok.map.size() == 2);

  auto p = parse("alice=alice\n# " + std::string(5000, 'x') + "\nbob=bob\n");
  REQUIRE(p.errors.size() == 1);
  CHECK(p.errors[0].line == 2);
  CHECK(p.errors[0].message == "line too long (5002 bytes, max 4096)");
  CHECK(p.map.size() == 2);
  CHECK(p.map.find("bob")->line == 3);
}

TEST_CASE("UserMap::parse: duplicate SSO names, the first line wins") {
  auto p = parse("alice=alice\nbob=bob\nalice=bob shared=yes\nalice=alice\n");
  REQUIRE(p.errors.size() == 2);
  CHECK(p.errors[0].line == 3);
  CHECK(p.errors[0].message == "duplicate SSO name \"alice\", first mapped on line 1");
  CHECK(p.errors[1].line == 4);
  CHECK(p.errors[1].message == "duplicate SSO name \"alice\", first mapped on line 1");
  REQUIRE(p.map.size() == 2);
  CHECK(p.map.find("alice")->osUser == "alice");
  CHECK(p.map.find("alice")->line == 1);
}

TEST_CASE("UserMap::parse: a second SSO name for one OS user needs shared=yes") {
  SUBCASE("refused without it") {
    auto p = parse("alice=alice\nmallory=alice\nmallory2=alice shared=no\n");
    REQUIRE(p.errors.size() == 2);
    CHECK(p.errors[0].line == 2);
    CHECK(p.errors[0].message ==
          "OS user \"alice\" is already mapped from \"alice\" on line 1; add shared=yes to give "
          "it a second SSO name");
    CHECK(p.errors[1].line == 3);
    CHECK(p.map.size() == 1);
    CHECK(p.map.find("mallory") == nullptr);
  }
  SUBCASE("allowed with it, on the later line") {
    auto p = parse("alice=alice\nops-bot=alice shared=yes\nops-2=alice shared=yes\n");
    CHECK(p.errors.empty());
    CHECK(p.map.size() == 3);
    CHECK(p.map.find("ops-bot")->osUser == "alice");
    CHECK(p.map.find("ops-2")->shared);
  }
  SUBCASE("shared=yes on the first line alone does not open the account") {
    auto p = parse("alice=alice shared=yes\nmallory=alice\n");
    REQUIRE(p.errors.size() == 1);
    CHECK(p.errors[0].line == 2);
    CHECK(p.map.size() == 1);
  }
  SUBCASE("one OS user cannot have two backend kinds") {
    auto p = parse("carol=carol backend=vm\ncarol-bot=carol shared=yes\n");
    REQUIRE(p.errors.size() == 1);
    CHECK(p.errors[0].line == 2);
    CHECK(p.errors[0].message ==
          "OS user \"carol\" has backend=vm on line 1, not backend=unit");
    CHECK(p.map.size() == 1);
    auto ok = parse("carol=carol backend=vm\ncarol-bot=carol shared=yes backend=vm\n");
    CHECK(ok.errors.empty());
    CHECK(ok.map.size() == 2);
  }
}

TEST_CASE("UserMap::parse: OS accounts must exist and be regular") {
  auto options = withUsers({{"alice", 1000}, {"bob", 1001}, {"root", 0}, {"daemon", 1},
                            {"sys", 999}});
  auto p = parse("alice=alice\n"
                 "ghost=ghost\n"
                 "admin=root\n"
                 "d=daemon\n"
                 "s=sys\n"
                 "bob=bob\n",
                 options);
  REQUIRE(p.errors.size() == 4);
  CHECK(p.errors[0].line == 2);
  CHECK(p.errors[0].message == "OS user \"ghost\" does not exist");
  CHECK(p.errors[1].line == 3);
  CHECK(p.errors[1].message == "OS user \"root\" has uid 0; root is never a backend user");
  CHECK(p.errors[2].line == 4);
  CHECK(p.errors[2].message ==
        "OS user \"daemon\" has uid 1, below the minimum 1000 for regular accounts");
  CHECK(p.errors[3].line == 5);
  CHECK(p.errors[3].message ==
        "OS user \"sys\" has uid 999, below the minimum 1000 for regular accounts");
  REQUIRE(p.map.size() == 2);
  CHECK(p.map.find("alice") != nullptr);
  CHECK(p.map.find("bob") != nullptr);

  SUBCASE("root stays refused with a minimum of 0") {
    auto q = parse("admin=root\nd=daemon\n", withUsers({{"root", 0}, {"daemon", 1}}, 0));
    REQUIRE(q.errors.size() == 1);
    CHECK(q.errors[0].line == 1);
    CHECK(q.map.size() == 1);
  }
  SUBCASE("the lookup never sees a name that failed the pattern") {
    std::vector<std::string> asked;
    UserMapOptions spy;
    spy.lookup = [&](const std::string& name) -> std::optional<OsUserInfo> {
      asked.push_back(name);
      return OsUserInfo{2000, 2000, "/home/x"};
    };
    auto q = parse("a=../etc\nb=-rf\nc=ok\n", spy);
    CHECK(q.errors.size() == 2);
    CHECK(asked == std::vector<std::string>{"ok"});
  }
  SUBCASE("a second line for the same person is refused even if the first failed") {
    auto q = parse("alice=alcie\nalice=alice\n", options);
    REQUIRE(q.errors.size() == 2);
    CHECK(q.errors[0].message == "OS user \"alcie\" does not exist");
    CHECK(q.errors[1].message == "duplicate SSO name \"alice\", first mapped on line 1");
    CHECK(q.map.find("alice") == nullptr);
  }
}

TEST_CASE("UserMap::load") {
  TempDir dir;
  SUBCASE("a readable file") {
    std::string path = dir.write("map", "alice=alice\nbad\n");
    std::vector<MapError> errors;
    auto map = UserMap::load(path, {}, errors);
    REQUIRE(map.has_value());
    CHECK(map->size() == 1);
    REQUIRE(errors.size() == 1);
    CHECK(errors[0].line == 2);
  }
  SUBCASE("a missing file") {
    std::string path = (dir.path / "nope").string();
    std::vector<MapError> errors;
    CHECK_FALSE(UserMap::load(path, {}, errors).has_value());
    REQUIRE(errors.size() == 1);
    CHECK(errors[0].line == 0);
    CHECK(errors[0].message == "cannot read " + path + ": No such file or directory");
  }
  SUBCASE("a directory") {
    std::vector<MapError> errors;
    CHECK_FALSE(UserMap::load(dir.path.string(), {}, errors).has_value());
    REQUIRE(errors.size() == 1);
    CHECK(errors[0].message == "cannot read " + dir.path.string() + ": Is a directory");
  }
  SUBCASE("a file over 16 MiB is not read") {
    std::string path = dir.write("big", "alice=alice\n");
    std::filesystem::resize_file(path, (16u << 20) + 1);  // sparse
    std::vector<MapError> errors;
    CHECK_FALSE(UserMap::load(path, {}, errors).has_value());
    REQUIRE(errors.size() == 1);
    CHECK(errors[0].line == 0);
    CHECK(errors[0].message ==
          "cannot read " + path + ": file too large (16777217 bytes, max 16777216)");
  }
}

TEST_CASE("systemOsUserLookup") {
  auto lookup = usher::systemOsUserLookup();
  auto root = lookup("root");
  REQUIRE(root.has_value());
  CHECK(root->uid == 0);
  CHECK(root->gid == 0);
  CHECK(root->home == "/root");
  CHECK_FALSE(lookup("usher-no-such-user-x").has_value());

  // The real database refuses root through the map as well.
  UserMapOptions options;
  options.lookup = lookup;
  auto p = parse("admin=root\n", options);
  REQUIRE(p.errors.size() == 1);
  CHECK(p.errors[0].message == "OS user \"root\" has uid 0; root is never a backend user");
}

TEST_CASE("UserMap::parse: backend=vm names its profile, \"default\" unless vm_profile= says") {
  auto p = parse("carol=carol backend=vm\ndave=dave backend=vm vm_profile=gpu\nalice=alice\n");
  REQUIRE(p.errors.empty());
  CHECK(p.map.find("carol")->vmProfile == "default");
  CHECK(p.map.find("dave")->vmProfile == "gpu");
  CHECK(p.map.find("alice")->vmProfile.empty());
}
