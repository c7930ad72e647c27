#include "common/ini.h"

#include <doctest.h>

#include <string>
#include <vector>

using namespace std::chrono_literals;
using usher::IniEntry;

namespace {

struct Parsed {
  std::vector<IniEntry> entries;
  std::vector<std::string> errors;
};

Parsed ini(std::string_view text) {
  Parsed p;
  p.entries = usher::parseIni(text, p.errors);
  return p;
}

}  // namespace

TEST_CASE("parseIni: sections, keys, values and line numbers in file order") {
  auto p = ini("; leading comment\n"
               "# also a comment\n"
               "top = level\n"
               "\n"
               "[listen]\n"
               "address = 127.0.0.1:8080\n"
               "  trusted_proxies = 10.0.0.0/8, ::1 ; inline comment\n"
               "[mint]\n"
               "command=/usr/lib/usher/mint {os_user}\n"
               "path = /a;b\n");
  CHECK(p.errors.empty());
  REQUIRE(p.entries.size() == 5);
  CHECK(p.entries[0].section == "");
  CHECK(p.entries[0].key == "top");
  CHECK(p.entries[0].value == "level");
  CHECK(p.entries[0].line == 3);
  CHECK(p.entries[1].section == "listen");
  CHECK(p.entries[1].key == "address");
  CHECK(p.entries[1].value == "127.0.0.1:8080");
  CHECK(p.entries[1].line == 6);
  // Indented: still its own key, not a continuation of `address` above.
  CHECK(p.entries[2].key == "trusted_proxies");
  CHECK(p.entries[2].value == "10.0.0.0/8, ::1");
  CHECK(p.entries[2].line == 7);
  CHECK(p.entries[3].section == "mint");
  CHECK(p.entries[3].value == "/usr/lib/usher/mint {os_user}");
  CHECK(p.entries[3].line == 9);
  // `;` not preceded by whitespace is part of the value.
  CHECK(p.entries[4].value == "/a;b");
  CHECK(p.entries[4].line == 10);
}

TEST_CASE("parseIni: CRLF, a missing final newline and empty values") {
  auto p = ini("[s]\r\nkey = v\r\nempty =\r\nlast = x");
  CHECK(p.errors.empty());
  REQUIRE(p.entries.size() == 3);
  CHECK(p.entries[0].value == "v");
  CHECK(p.entries[1].key == "empty");
  CHECK(p.entries[1].value == "");
  CHECK(p.entries[2].value == "x");
  CHECK(p.entries[2].line == 4);
}

TEST_CASE("parseIni: a syntax error names its line and keeps the good lines") {
  auto p = ini("[s]\na = 1\nthis is not a key\nb = 2\n");
  REQUIRE(p.errors.size() == 1);
  CHECK(p.errors[0] ==
        "line 3: syntax error (expected [section], key = value or a comment)");
  REQUIRE(p.entries.size() == 2);
  CHECK(p.entries[1].key == "b");
  CHECK(p.entries[1].line == 4);

  SUBCASE("unterminated section header") {
    auto q = ini("a = 1\n[broken\n");
    REQUIRE(q.errors.size() == 1);
    CHECK(q.errors[0].rfind("line 2: ", 0) == 0);
  }
}

TEST_CASE("parseIni: overlong lines are errors and never yield a cut value") {
  // inih's line buffer is 200 bytes here; a 199-byte line fits exactly.
  std::string fits = "k = " + std::string(195, 'a');
  REQUIRE(fits.size() == 199);
  auto ok = ini(fits + "\nnext = 1\n");
  CHECK(ok.errors.empty());
  REQUIRE(ok.entries.size() == 2);
  CHECK(ok.entries[0].value == std::string(195, 'a'));
  CHECK(ok.entries[1].line == 2);

  std::string longLine = "path = /" + std::string(300, 'x');
  auto p = ini("[s]\n" + longLine + "\nafter = 1\n");
  REQUIRE(p.errors.size() == 1);
  CHECK(p.errors[0] == "line 2: line too long");
  // The cut-off value must not be used as if it were the configured one.
  REQUIRE(p.entries.size() == 1);
  CHECK(p.entries[0].key == "after");
  CHECK(p.entries[0].line == 3);
}

TEST_CASE("parseDuration") {
  CHECK(usher::parseDuration("10") == std::chrono::milliseconds(10s));
  CHECK(usher::parseDuration("10s") == std::chrono::milliseconds(10s));
  CHECK(usher::parseDuration("250ms") == 250ms);
  CHECK(usher::parseDuration("2m") == std::chrono::milliseconds(2min));
  CHECK(usher::parseDuration("2min") == std::chrono::milliseconds(2min));
  CHECK(usher::parseDuration("1h") == std::chrono::milliseconds(1h));
  CHECK(usher::parseDuration(" 5s ") == std::chrono::milliseconds(5s));
  CHECK(usher::parseDuration("0") == 0ms);
  CHECK(usher::parseDuration("30d") == std::chrono::milliseconds(std::chrono::hours(24 * 30)));
  for (const char* bad : {"", "s", "-1", "+1", "1.5s", "10 s", "10x", "1w", "36501d", "ms10",
                          "99999999999999999999", "2000000000000h"}) {
    CAPTURE(bad);
    CHECK_FALSE(usher::parseDuration(bad).has_value());
  }
}

TEST_CASE("parseSize") {
  CHECK(usher::parseSize("4096") == 4096u);
  CHECK(usher::parseSize("64k") == 64u * 1024);
  CHECK(usher::parseSize("64KiB") == 64u * 1024);
  CHECK(usher::parseSize("1M") == 1u << 20);
  CHECK(usher::parseSize("2g") == uint64_t{2} << 30);
  CHECK(usher::parseSize("0") == 0u);
  for (const char* bad : {"", "k", "-1", "1.5M", "1T", "1 M", "99999999999999999999",
                          "9999999999999g"}) {
    CAPTURE(bad);
    CHECK_FALSE(usher::parseSize(bad).has_value());
  }
}

TEST_CASE("parseBool") {
  for (const char* t : {"yes", "YES", "true", "On", "1", " yes "}) {
    CAPTURE(t);
    CHECK(usher::parseBool(t) == true);
  }
  for (const char* f : {"no", "False", "off", "0"}) {
    CAPTURE(f);
    CHECK(usher::parseBool(f) == false);
  }
  for (const char* bad : {"", "y", "2", "yess", "enable"}) {
    CAPTURE(bad);
    CHECK_FALSE(usher::parseBool(bad).has_value());
  }
}

TEST_CASE("parseUnsigned: plain decimal only") {
  CHECK(usher::parseUnsigned("0") == 0u);
  CHECK(usher::parseUnsigned("18446744073709551615").has_value() == false);  // 20 digits: capped
  CHECK(usher::parseUnsigned("9999999999999999999") == 9999999999999999999u);
  for (const char* bad : {"", "-1", "+1", " 1", "1 ", "1x", "0x10"}) {
    CAPTURE(bad);
    CHECK_FALSE(usher::parseUnsigned(bad).has_value());
  }
}

TEST_CASE("splitList and trim") {
  CHECK(usher::splitList("a, b  c,,d\t,e\n") == std::vector<std::string>{"a", "b", "c", "d", "e"});
  CHECK(usher::splitList("").empty());
  CHECK(usher::splitList(" , ,\t").empty());
  CHECK(usher::splitList("one") == std::vector<std::string>{"one"});
  CHECK(usher::trim("  a b \t\r\n") == "a b");
  CHECK(usher::trim("   ").empty());
}
