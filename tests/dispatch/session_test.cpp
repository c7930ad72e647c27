#include <doctest.h>

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <string>

#include "dispatch/config.h"
#include "dispatch/net/libevent.h"
#include "dispatch/session/bind_cookie.h"
#include "dispatch/session/child_process.h"
#include "dispatch/session/cookies.h"

using namespace usher::dispatch;
using namespace std::chrono_literals;

TEST_CASE("cookie headers split into pairs, loosely but losslessly") {
  auto c = parseCookies("a=1; usher_bind=v1.2.x;t3_session=abc ; flag; b = 2");
  REQUIRE(c.size() == 5);
  CHECK(c[0].name == "a");
  CHECK(c[0].value == "1");
  CHECK(c[1].name == "usher_bind");
  CHECK(c[1].value == "v1.2.x");
  CHECK(c[2].name == "t3_session");
  CHECK(c[2].value == "abc");
  CHECK(c[3].name.empty());
  CHECK(c[3].value == "flag");
  CHECK(c[4].name == "b");
  CHECK(c[4].value == "2");
  CHECK(parseCookies("").empty());
}

TEST_CASE("only RFC 6265 cookie-octets are ever injected") {
  CHECK(validCookieValue("eyJhbGciOi.JIUzI1NiJ9-_~"));
  CHECK(validCookieValue("\"quoted\""));
  CHECK_FALSE(validCookieValue("a b"));
  CHECK_FALSE(validCookieValue("a;b"));
  CHECK_FALSE(validCookieValue("a\r\nSet-Cookie: x=y"));
  CHECK_FALSE(validCookieValue("a,b"));
  CHECK_FALSE(validCookieValue("a\\b"));
  CHECK(validCookieName("t3_session"));
  CHECK_FALSE(validCookieName("a=b"));
  CHECK_FALSE(validCookieName(""));
}

TEST_CASE("Set-Cookie: value and lifetime kept, the rest normalised") {
  auto sc = parseSetCookie("t3_session=tok.en; Path=/api; Expires=Wed, 23 Dec 2026 10:00:00 GMT; Domain=evil.example; "
                           "SameSite=None; Max-Age=2592000");
  REQUIRE(sc);
  CHECK(sc->name == "t3_session");
  CHECK(sc->value == "tok.en");
  CHECK(sc->expires == "Wed, 23 Dec 2026 10:00:00 GMT");
  CHECK(sc->maxAge == "2592000");
  CHECK(formatSetCookie(sc->name, sc->value, sc->expires, sc->maxAge, true) ==
        "t3_session=tok.en; Path=/; Expires=Wed, 23 Dec 2026 10:00:00 GMT; Max-Age=2592000; HttpOnly; "
        "SameSite=Lax; Secure");
  CHECK(formatSetCookie("a", "b", "", "", false) == "a=b; Path=/; HttpOnly; SameSite=Lax");
  // An attribute value that could smuggle a header is dropped, not copied.
  auto bad = parseSetCookie("a=b; Expires=x\rInjected: 1; Max-Age=12x");
  REQUIRE(bad);
  CHECK(bad->expires.empty());
  CHECK(bad->maxAge.empty());
  CHECK_FALSE(parseSetCookie("novalue"));
  CHECK(formatDeleteCookie("usher_bind", false) ==
        "usher_bind=; Path=/; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; HttpOnly; SameSite=Lax");
}

TEST_CASE("bind cookie: valid only for the identity, OS user and backend it was issued to") {
  auto keys = BindKeys::fromBytes(std::string(32, 'k'));
  const int64_t t = 1'800'000'000;
  std::string token = keys.sign("alice", "alice", "127.0.0.1:3773", t);
  CHECK(token.rfind("v1.1800000000.", 0) == 0);
  CHECK(keys.verify(token, "alice", "alice", "127.0.0.1:3773", t + 10, 3600) == BindKeys::Verdict::Valid);
  // A second person on the same browser.
  CHECK(keys.verify(token, "bob", "alice", "127.0.0.1:3773", t, 3600) == BindKeys::Verdict::Invalid);
  CHECK(keys.verify(token, "alice", "bob", "127.0.0.1:3773", t, 3600) == BindKeys::Verdict::Invalid);
  CHECK(keys.verify(token, "alice", "alice", "127.0.0.1:3774", t, 3600) == BindKeys::Verdict::Invalid);
  CHECK(keys.verify(token, "alice", "alice", "127.0.0.1:3773", t + 3601, 3600) == BindKeys::Verdict::Expired);
  CHECK(keys.verify(token, "alice", "alice", "127.0.0.1:3773", t - 1000, 3600) == BindKeys::Verdict::Expired);
  // Tampering with the issue time breaks the MAC.
  std::string forged = token;
  forged.replace(3, 10, "1800000999");
  CHECK(keys.verify(forged, "alice", "alice", "127.0.0.1:3773", t, 3600) == BindKeys::Verdict::Invalid);
  CHECK(keys.verify("", "alice", "alice", "x", t, 3600) == BindKeys::Verdict::Invalid);
  CHECK(keys.verify("v1.abc.def", "alice", "alice", "x", t, 3600) == BindKeys::Verdict::Invalid);
  // Field boundaries are unambiguous.
  CHECK(keys.sign("ab", "c", "x", t) != keys.sign("a", "bc", "x", t));

  SUBCASE("rotation: the previous key is still accepted, and says so") {
    auto rotated = BindKeys::fromBytes(std::string(32, 'n'), std::string(32, 'k'));
    CHECK(rotated.verify(token, "alice", "alice", "127.0.0.1:3773", t, 3600) == BindKeys::Verdict::ValidPrevious);
    auto fresh = rotated.sign("alice", "alice", "127.0.0.1:3773", t);
    CHECK(rotated.verify(fresh, "alice", "alice", "127.0.0.1:3773", t, 3600) == BindKeys::Verdict::Valid);
    CHECK(keys.verify(fresh, "alice", "alice", "127.0.0.1:3773", t, 3600) == BindKeys::Verdict::Invalid);
  }
}

TEST_CASE("bind key files must be private and long enough") {
  char dir[] = "/tmp/usher-bindkey-XXXXXX";
  REQUIRE(mkdtemp(dir));
  std::string good = std::string(dir) + "/good";
  std::string open = std::string(dir) + "/open";
  std::string shortKey = std::string(dir) + "/short";
  std::ofstream(good) << std::string(32, 'x');
  std::ofstream(open) << std::string(32, 'x');
  std::ofstream(shortKey) << "tooshort";
  chmod(good.c_str(), 0600);
  chmod(open.c_str(), 0644);
  chmod(shortKey.c_str(), 0600);
  std::string err;
  CHECK(BindKeys::load(good, "", err));
  CHECK_FALSE(BindKeys::load(open, "", err));
  CHECK(err.find("group or others") != std::string::npos);
  CHECK_FALSE(BindKeys::load(shortKey, "", err));
  CHECK(err.find("32 bytes") != std::string::npos);
  CHECK_FALSE(BindKeys::load(std::string(dir) + "/missing", "", err));
  CHECK_FALSE(BindKeys::load(good, open, err));
  for (auto& f : {good, open, shortKey}) unlink(f.c_str());
  rmdir(dir);
}

TEST_CASE("mint commands are split like argv, never interpreted") {
  std::vector<std::string> argv;
  std::string err;
  REQUIRE(splitCommand("/usr/bin/sudo -n -u {os_user}  /usr/libexec/usher/t3-mint", argv, err));
  CHECK(argv == std::vector<std::string>{"/usr/bin/sudo", "-n", "-u", "{os_user}", "/usr/libexec/usher/t3-mint"});
  REQUIRE(splitCommand(R"(/bin/echo "{\"credential\": \"a b\"}" $HOME;rm)", argv, err));
  CHECK(argv == std::vector<std::string>{"/bin/echo", R"({"credential": "a b"})", "$HOME;rm"});
  CHECK_FALSE(splitCommand("/bin/echo \"unterminated", argv, err));
  CHECK(err.find("quote") != std::string::npos);
}

namespace {

// Runs one command to completion on a private event loop.
ChildResult runChild(std::vector<std::string> argv, std::chrono::milliseconds timeout, size_t cap = 1 << 16) {
  usher::net::EventBasePtr base(event_base_new());
  ChildResult out;
  bool done = false;
  auto child = std::make_unique<ChildProcess>(base.get(), std::move(argv), timeout, cap, [&](ChildResult& r) {
    out = std::move(r);
    done = true;
    event_base_loopbreak(base.get());
  });
  child->start();
  event_base_dispatch(base.get());
  CHECK(done);
  return out;
}

bool alive(pid_t pid) { return kill(pid, 0) == 0; }

}  // namespace

TEST_CASE("child process: output, exit status, stderr, environment") {
  auto r = runChild({"/bin/sh", "-c", "echo out; echo err >&2; env; exit 3"}, 5s);
  CHECK(r.outcome == ChildResult::Outcome::Exited);
  CHECK(r.exitStatus == 3);
  CHECK(r.stdoutData.rfind("out\n", 0) == 0);
  CHECK(r.stderrData == "err\n");
  // Only the fixed environment reaches the command.
  CHECK(r.stdoutData.find("PATH=/usr/local/sbin:") != std::string::npos);
  CHECK(r.stdoutData.find("HOME=") == std::string::npos);
  CHECK(r.stdoutData.find("USHER") == std::string::npos);
}

TEST_CASE("child process: a missing command is reported as such") {
  auto r = runChild({"/nonexistent/t3-mint"}, 5s);
  CHECK(r.outcome == ChildResult::Outcome::SpawnFailed);
  CHECK(r.spawnErrno == ENOENT);
}

TEST_CASE("child process: a timeout kills the whole process group") {
  char pidFile[] = "/tmp/usher-child-XXXXXX";
  int fd = mkstemp(pidFile);
  REQUIRE(fd >= 0);
  close(fd);
  auto started = std::chrono::steady_clock::now();
  // The grandchild ignores the pipe and would outlive a kill of its parent.
  auto r = runChild({"/bin/sh", "-c", std::string("sleep 30 >/dev/null 2>&1 & echo $! > ") + pidFile + "; sleep 30"},
                    300ms);
  auto took = std::chrono::steady_clock::now() - started;
  CHECK(r.outcome == ChildResult::Outcome::Timeout);
  CHECK(took < 5s);
  std::ifstream in(pidFile);
  pid_t grandchild = 0;
  in >> grandchild;
  REQUIRE(grandchild > 0);
  // SIGKILL to the group: the grandchild is gone (or a zombie about to be reaped by init).
  bool gone = false;
  for (int i = 0; i < 200 && !gone; ++i) {
    std::ifstream stat("/proc/" + std::to_string(grandchild) + "/stat");
    std::string line;
    std::getline(stat, line);
    gone = !alive(grandchild) || line.find(") Z ") != std::string::npos;
    if (!gone) usleep(10000);
  }
  CHECK(gone);
  unlink(pidFile);
}

TEST_CASE("child process: output over the cap is a failure, and the command is stopped") {
  auto r = runChild({"/usr/bin/yes"}, 5s, 4096);
  CHECK(r.outcome == ChildResult::Outcome::OutputTooLarge);
  CHECK(r.stdoutData.size() == 4096);
}

TEST_CASE("child process: SIGPIPE is not inherited as ignored") {
  // `yes | head -c1` only ends when yes dies of SIGPIPE; with SIGPIPE ignored
  // it would spin on EPIPE until the timeout.
  signal(SIGPIPE, SIG_IGN);
  auto r = runChild({"/bin/sh", "-c", "/usr/bin/yes | head -c 1"}, 5s);
  CHECK(r.outcome == ChildResult::Outcome::Exited);
  CHECK(r.stdoutData == "y");
  signal(SIGPIPE, SIG_DFL);
}
