#include <doctest.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <set>

#include "reconcile/envfile.h"
#include "reconcile/ports.h"

using namespace usher::reconcile;

TEST_CASE("PortAllocator: lowest free port, sticky claims, busy ports skipped") {
  std::set<uint16_t> busy = {3775};
  PortAllocator ports(3773, 3779, [&](uint16_t p) { return busy.count(p) > 0; });
  CHECK(ports.claim(3774, "emo"));
  CHECK(ports.claim(3774, "emo"));  // the same holder again is fine
  CHECK_FALSE(ports.claim(3774, "wizard"));
  CHECK(*ports.holder(3774) == "emo");
  CHECK(ports.holder(3773) == nullptr);
  CHECK(ports.claim(9000, "outside"));  // adopted ports may lie outside the range
  CHECK(ports.allocate("a") == 3773);
  CHECK(ports.allocate("b") == 3776);  // 3774 held, 3775 busy
  CHECK(ports.allocate("c") == 3777);
  CHECK(ports.allocate("d") == 3778);
  CHECK(ports.allocate("e") == 3779);
  CHECK_FALSE(ports.allocate("f").has_value());  // full
  CHECK_FALSE(ports.allocate("g").has_value());
  CHECK(*ports.holder(3776) == "b");
}

TEST_CASE("PortAllocator: a range of one port at the top of the port space") {
  PortAllocator ports(65535, 65535, nullptr);
  CHECK(ports.allocate("a") == 65535);
  CHECK_FALSE(ports.allocate("b").has_value());
}

TEST_CASE("listenerProbe: a listening socket makes its port busy") {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  REQUIRE(::listen(fd, 1) == 0);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  uint16_t port = ntohs(addr.sin_port);
  PortBusy busy = listenerProbe("127.0.0.1");
  CHECK(busy(port));
  ::close(fd);
  CHECK_FALSE(busy(port));
  CHECK_FALSE(listenerProbe("not an address")(port));
}

TEST_CASE("env files: reading T3_PORT") {
  CHECK(readT3Port("T3_PORT=3773\n") == 3773);
  CHECK(readT3Port("T3_PORT=3773") == 3773);
  CHECK(readT3Port("# seed\nFOO=1\n  T3_PORT = \"3774\"\r\n") == 3774);
  CHECK(readT3Port("T3_PORT='3775'\n") == 3775);
  CHECK(readT3Port("T3_PORT=1\nT3_PORT=2\n") == 2);  // last wins, as in systemd
  CHECK_FALSE(readT3Port("").has_value());
  CHECK_FALSE(readT3Port("T3_PORTX=1\n").has_value());
  CHECK_FALSE(readT3Port("T3_PORT=\n").has_value());
  CHECK_FALSE(readT3Port("T3_PORT=0\n").has_value());
  CHECK_FALSE(readT3Port("T3_PORT=65536\n").has_value());
  CHECK_FALSE(readT3Port("T3_PORT=37x3\n").has_value());
  CHECK_FALSE(readT3Port("T3_PORT=3773\nT3_PORT=bad\n").has_value());
}

TEST_CASE("env files: writing T3_PORT keeps every other line") {
  CHECK(withT3Port("", 3773) == "T3_PORT=3773\n");
  CHECK(withT3Port("T3_PORT=1\n", 3773) == "T3_PORT=3773\n");
  CHECK(withT3Port("# seed\nT3_PORT=1\nFOO=bar\n", 3774) == "# seed\nT3_PORT=3774\nFOO=bar\n");
  CHECK(withT3Port("FOO=bar", 3775) == "FOO=bar\nT3_PORT=3775\n");
  CHECK(withT3Port("T3_PORT=1\nX=1\nT3_PORT=2\n", 3776) == "T3_PORT=3776\nX=1\n");
  CHECK(envFilePath("/etc/t3-serve", "alice") == "/etc/t3-serve/alice.env");
  CHECK(envFilePath("/etc/t3-serve/", "alice") == "/etc/t3-serve/alice.env");
}
