#include "common/atomic_file.h"

#include <doctest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    char tmpl[] = "/tmp/usher-atomic-test.XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    fs::permissions(path, fs::perms::owner_all, fs::perm_options::add);
    fs::remove_all(path);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
  // Every name in the directory, so that a leftover temp file shows.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(path)) out.push_back(e.path().filename());
    std::sort(out.begin(), out.end());
    return out;
  }
};

std::string slurp(const std::string& path) {
  std::string error;
  auto text = usher::readFile(path, error);
  CAPTURE(error);
  REQUIRE(text.has_value());
  return *text;
}

bool endsWith(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

mode_t modeOf(const std::string& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

// Makes every write past `bytes` fail with EFBIG, even for root; restores on
// destruction.
class FileSizeLimit {
public:
  explicit FileSizeLimit(rlim_t bytes) {
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &saved_) == 0);
    oldHandler_ = std::signal(SIGXFSZ, SIG_IGN);  // else the process is killed
    rlimit lim = saved_;
    lim.rlim_cur = bytes;
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &lim) == 0);
  }
  ~FileSizeLimit() {
    ::setrlimit(RLIMIT_FSIZE, &saved_);
    std::signal(SIGXFSZ, oldHandler_);
  }

private:
  rlimit saved_{};
  void (*oldHandler_)(int) = nullptr;
};

}  // namespace

TEST_CASE("writeFileAtomically: creates, replaces, and leaves no temp file") {
  TempDir dir;
  std::string path = dir.file("state.json");
  std::string error = "untouched";

  REQUIRE(usher::writeFileAtomically(path, "first\n", 0644, error));
  CHECK(error == "untouched");  // not written on success
  CHECK(slurp(path) == "first\n");
  CHECK(modeOf(path) == 0644);

  REQUIRE(usher::writeFileAtomically(path, "second", 0600, error));
  CHECK(slurp(path) == "second");
  CHECK(modeOf(path) == 0600);
  CHECK(dir.names() == std::vector<std::string>{"state.json"});

  SUBCASE("exact mode, whatever the umask") {
    mode_t old = ::umask(077);
    bool ok = usher::writeFileAtomically(path, "x", 0644, error);
    ::umask(old);
    REQUIRE(ok);
    CHECK(modeOf(path) == 0644);
  }
  SUBCASE("empty content") {
    REQUIRE(usher::writeFileAtomically(path, "", 0644, error));
    CHECK(slurp(path).empty());
  }
  SUBCASE("binary content larger than one write") {
    std::string big(5 << 20, '\0');
    for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 131 % 251);
    REQUIRE(usher::writeFileAtomically(path, big, 0644, error));
    CHECK(slurp(path) == big);
  }
  SUBCASE("a path without a directory part is in the working directory") {
    auto cwd = fs::current_path();
    fs::current_path(dir.path);
    bool ok = usher::writeFileAtomically("relative.txt", "rel", 0644, error);
    fs::current_path(cwd);
    REQUIRE(ok);
    CHECK(slurp(dir.file("relative.txt")) == "rel");
  }
}

TEST_CASE("writeFileAtomically: a missing directory fails cleanly") {
  TempDir dir;
  std::string path = dir.file("nope/state.json");
  std::string error;
  CHECK_FALSE(usher::writeFileAtomically(path, "x", 0644, error));
  CHECK(error == "cannot write " + path + ": open directory " + dir.file("nope") +
                     ": No such file or directory");
  CHECK(dir.names().empty());
}

TEST_CASE("writeFileAtomically: not a file name") {
  TempDir dir;
  std::string error;
  std::string path = dir.path.string() + "/";
  CHECK_FALSE(usher::writeFileAtomically(path, "x", 0644, error));
  CHECK(error == "cannot write " + path + ": not a file name: Invalid argument");
}

TEST_CASE("writeFileAtomically: on failure the original is untouched and the temp is gone") {
  TempDir dir;
  std::string path = dir.file("state.json");
  std::string error;
  REQUIRE(usher::writeFileAtomically(path, "original", 0640, error));

  SUBCASE("the write itself fails (file size limit: EFBIG)") {
    {
      FileSizeLimit limit(4);
      CHECK_FALSE(usher::writeFileAtomically(path, "a much longer replacement", 0644, error));
    }
    CHECK(error.rfind("cannot write " + path + ": write " + dir.file(".state.json.tmp."), 0) == 0);
    CHECK(endsWith(error, ": File too large"));
  }
  SUBCASE("the rename fails (target became a directory)") {
    std::string target = dir.file("dir-target");
    fs::create_directory(target);
    std::ofstream(target + "/inside") << "keep";
    CHECK_FALSE(usher::writeFileAtomically(target, "x", 0644, error));
    CHECK(error.rfind("cannot write " + target + ": rename " + dir.file(".dir-target.tmp."), 0) ==
          0);
    CHECK(slurp(target + "/inside") == "keep");
    fs::remove_all(target);
  }
  SUBCASE("the directory is read-only") {
    if (::geteuid() == 0) return;  // root writes anyway; the cases above still inject failures
    fs::permissions(dir.path, fs::perms::owner_read | fs::perms::owner_exec);
    CHECK_FALSE(usher::writeFileAtomically(path, "replacement", 0644, error));
    CHECK(error == "cannot write " + path + ": create temp file in " + dir.path.string() +
                       ": Permission denied");
    fs::permissions(dir.path, fs::perms::owner_all);
  }

  CHECK(slurp(path) == "original");
  CHECK(modeOf(path) == 0640);
  CHECK(dir.names() == std::vector<std::string>{"state.json"});
}

TEST_CASE("readFile") {
  TempDir dir;
  std::string path = dir.file("f");
  std::string error = "untouched";

  SUBCASE("exact bytes, NULs included") {
    std::string bytes("a\0b\r\n\xff", 6);
    std::ofstream(path, std::ios::binary) << bytes;
    auto text = usher::readFile(path, error);
    REQUIRE(text.has_value());
    CHECK(*text == bytes);
    CHECK(error == "untouched");
  }
  SUBCASE("an empty file is empty, not an error") {
    std::ofstream{path};
    auto text = usher::readFile(path, error);
    REQUIRE(text.has_value());
    CHECK(text->empty());
  }
  SUBCASE("files whose size stat does not know") {
    auto text = usher::readFile("/proc/self/status", error);
    REQUIRE(text.has_value());
    CHECK(text->find("Pid:") != std::string::npos);
  }
  SUBCASE("missing") {
    CHECK_FALSE(usher::readFile(path, error).has_value());
    CHECK(error == "cannot read " + path + ": No such file or directory");
  }
  SUBCASE("a directory") {
    CHECK_FALSE(usher::readFile(dir.path.string(), error).has_value());
    CHECK(error == "cannot read " + dir.path.string() + ": Is a directory");
  }
  SUBCASE("unreadable") {
    if (::geteuid() == 0) return;  // root reads anyway
    std::ofstream(path) << "secret";
    fs::permissions(path, fs::perms::none);
    CHECK_FALSE(usher::readFile(path, error).has_value());
    CHECK(error == "cannot read " + path + ": Permission denied");
  }
}
