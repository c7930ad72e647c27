#include "common/logfmt.h"

#include <doctest.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

using usher::LogLine;

namespace {

std::string value(std::string_view v) {
  std::string out;
  usher::appendLogfmtValue(out, v);
  return out;
}

}  // namespace

TEST_CASE("appendLogfmtValue: plain tokens stay bare") {
  CHECK(value("alice") == "alice");
  CHECK(value("t3-serve@alice.service") == "t3-serve@alice.service");
  CHECK(value("/api/auth/session?x") == "/api/auth/session?x");
}

TEST_CASE("appendLogfmtValue: anything else is quoted and escaped") {
  CHECK(value("") == R"("")");
  CHECK(value("two words") == R"("two words")");
  CHECK(value("a=b") == R"("a=b")");
  CHECK(value(R"(say "hi")") == R"("say \"hi\"")");
  CHECK(value(R"(back\slash)") == R"("back\\slash")");
  CHECK(value("tab\there") == R"("tab\there")");
  CHECK(value(std::string_view("nul\0x", 5)) == R"("nul\x00x")");
  CHECK(value("\x7f\x1b[31m") == R"("\x7f\x1b[31m")");
  CHECK(value("caf\xc3\xa9") == R"("caf\xc3\xa9")");
}

TEST_CASE("appendLogfmtValue: a hostile value cannot forge a line or a field") {
  std::string forged = value("bob\nts=2026-01-01 level=info event=login user=root");
  CHECK(forged == R"("bob\nts=2026-01-01 level=info event=login user=root")");
  CHECK(forged.find('\n') == std::string::npos);
  CHECK(value("x\r\n") == R"("x\r\n")");
  // Every byte that is not printable ASCII comes out as an escape.
  for (int c = 0; c < 256; ++c) {
    std::string out = value(std::string(1, static_cast<char>(c)));
    for (unsigned char b : out) {
      CAPTURE(c);
      CHECK((b >= 0x20 && b < 0x7f));
    }
  }
}

TEST_CASE("LogLine: event first, then fields in order") {
  LogLine line("refused");
  line.kv("user", "mallory x")
      .kv("status", 403)
      .kv("bytes", uint64_t{18446744073709551615u})
      .kv("delta", int64_t{-5})
      .kv("size", size_t{7})
      .kv("count", 3u)
      .kv("big", 1LL << 40)
      .kv("ok", false)
      .kv("secs", 1.5)
      .kv("path", std::string("/"));
  CHECK(line.str() ==
        R"(event=refused user="mallory x" status=403 bytes=18446744073709551615 delta=-5 )"
        R"(size=7 count=3 big=1099511627776 ok=false secs=1.500 path=/)");
}

TEST_CASE("setupLogging: levels, format, and safe to call again") {
  CHECK_FALSE(usher::setupLogging("loud"));
  CHECK_FALSE(usher::setupLogging(""));

  // Capture stderr into a temp file to check the line format.
  char path[] = "/tmp/usher-logfmt-test.XXXXXX";
  int fd = ::mkstemp(path);
  REQUIRE(fd >= 0);
  std::fflush(stderr);
  int saved = ::dup(STDERR_FILENO);
  REQUIRE(saved >= 0);
  ::dup2(fd, STDERR_FILENO);

  bool first = usher::setupLogging("info");
  spdlog::debug("{}", LogLine("hidden").str());
  spdlog::info("{}", LogLine("shown").kv("user", "a b").str());
  // Reloading the config sets logging up again; that must not throw.
  bool second = false;
  CHECK_NOTHROW(second = usher::setupLogging("warn"));
  spdlog::info("{}", LogLine("hidden2").str());
  spdlog::warn("{}", LogLine("warned").str());
  bool off = usher::setupLogging("off");
  spdlog::critical("{}", LogLine("silenced").str());

  std::fflush(stderr);
  ::dup2(saved, STDERR_FILENO);
  ::close(saved);
  std::string out;
  char buf[4096];
  ::lseek(fd, 0, SEEK_SET);
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(n));
  ::close(fd);
  ::unlink(path);
  usher::setupLogging("warn");  // leave a live logger for other tests

  CHECK(first);
  CHECK(second);
  CHECK(off);
  CHECK(out.find("hidden") == std::string::npos);
  CHECK(out.find("silenced") == std::string::npos);
  size_t nl = out.find('\n');
  REQUIRE(nl != std::string::npos);
  std::string line1 = out.substr(0, nl);
  // ts=2026-11-23T15:00:00.123Z level=info event=shown user="a b"
  REQUIRE(line1.size() > 30);
  CHECK(line1.substr(0, 3) == "ts=");
  CHECK(line1[13] == 'T');
  CHECK(line1[26] == 'Z');
  CHECK(line1.substr(27) == R"( level=info event=shown user="a b")");
  CHECK(out.substr(nl + 1).find(" level=warning event=warned\n") != std::string::npos);
}
