#include "common/process_runner.h"

#include <doctest.h>

using namespace usher;
using std::chrono::milliseconds;

TEST_CASE("runProcesses: stdin in, stdout out, exit status, a fixed environment") {
  std::vector<ProcessSpec> specs(3);
  specs[0].argv = {"/bin/sh", "-c", "cat; echo err >&2; exit 4"};
  specs[0].input = std::string(200000, 'x');  // more than a pipe holds: written from the loop
  specs[1].argv = {"/usr/bin/env"};
  specs[2].argv = {"/nonexistent/provider", "ensure"};
  auto r = runProcesses(specs, 2);
  REQUIRE(r.size() == 3);
  CHECK(r[0].outcome == ProcessResult::Outcome::Exited);
  CHECK(r[0].exitStatus == 4);
  CHECK(r[0].out == specs[0].input);
  CHECK(r[0].err == "err\n");
  CHECK(r[1].out == "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nLANG=C.UTF-8\n");
  CHECK(r[2].outcome == ProcessResult::Outcome::SpawnFailed);
  CHECK(describe(r[2], specs[2]) == "could not be started: No such file or directory");
}

TEST_CASE(
    "runProcesses: timeout and output cap kill the whole group; a leftover holding the pipes is not waited "
    "for") {
  std::vector<ProcessSpec> specs(3);
  specs[0].argv = {"/bin/sh", "-c", "sleep 60 & sleep 60"};
  specs[0].timeout = milliseconds(300);
  specs[1].argv = {"/bin/sh", "-c", "yes"};
  specs[1].maxStdout = 1000;
  specs[2].argv = {"/bin/sh", "-c", "sleep 60 & echo done"};  // exits; its child keeps stdout open
  auto t0 = std::chrono::steady_clock::now();
  auto r = runProcesses(specs, 3);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5));
  CHECK(r[0].outcome == ProcessResult::Outcome::Timeout);
  CHECK(describe(r[0], specs[0]) == "timed out after 0.3s (killed)");
  CHECK(r[1].outcome == ProcessResult::Outcome::OutputTooLarge);
  CHECK(r[2].outcome == ProcessResult::Outcome::Exited);
  CHECK(r[2].out == "done\n");
}
