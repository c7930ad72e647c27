// usher-dispatch: parse arguments, load config, run. Everything else is in
// usher_dispatch_lib, which the tests link.
#include <getopt.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <cstring>
#include <string>

#include <spdlog/pattern_formatter.h>
#include <spdlog/spdlog.h>

#include "common/logfmt.h"
#include "dispatch/config.h"
#include "dispatch/server.h"
#include "usher/version.h"

namespace {

// stderr is connected to the journal (systemd sets $JOURNAL_STREAM to its
// device:inode): then each line starts with its syslog priority (<3>, <4>,
// <6>...), which journald turns into the entry's priority (journalctl -p
// warning works), and leaves out ts= (the journal stamps every entry).
bool stderrIsJournal() {
  const char* js = std::getenv("JOURNAL_STREAM");
  struct stat st {};
  if (!js || fstat(STDERR_FILENO, &st) != 0) return false;
  unsigned long long dev = 0, ino = 0;
  if (std::sscanf(js, "%llu:%llu", &dev, &ino) != 2) return false;
  return dev == static_cast<unsigned long long>(st.st_dev) && ino == static_cast<unsigned long long>(st.st_ino);
}

class SyslogPriority final : public spdlog::custom_flag_formatter {
public:
  void format(const spdlog::details::log_msg& msg, const std::tm&, spdlog::memory_buf_t& dest) override {
    static constexpr const char* kPrefix[] = {"<7>", "<7>", "<6>", "<4>", "<3>", "<2>", "<6>"};
    std::string_view p = kPrefix[std::min<size_t>(static_cast<size_t>(msg.level), 6)];
    dest.append(p.data(), p.data() + p.size());
  }
  std::unique_ptr<custom_flag_formatter> clone() const override { return std::make_unique<SyslogPriority>(); }
};

void useJournalFormat() {
  auto f = std::make_unique<spdlog::pattern_formatter>();
  f->add_flag<SyslogPriority>('*').set_pattern("%*level=%l %v");
  spdlog::default_logger()->set_formatter(std::move(f));
}

void usage(FILE* f) {
  std::fputs(
      "usage: usher-dispatch [--config FILE] [--check-config]\n"
      "\n"
      "Puts one URL in front of many per-user web apps: trusts an identity header\n"
      "from configured proxies, maps the name to an OS user and proxies HTTP and\n"
      "WebSocket traffic to that user's backend.\n"
      "\n"
      "  -c, --config FILE   configuration (INI); without it, embedded defaults\n"
      "      --check-config  validate the configuration and exit (0 valid, 1 not)\n"
      "  -h, --help          this text\n"
      "  -V, --version       print the version\n"
      "\n"
      "Every key is documented in dispatch/usher.conf.example.\n",
      f);
}

}  // namespace

int main(int argc, char** argv) {
  static const option kOptions[] = {
      {"config", required_argument, nullptr, 'c'},
      {"check-config", no_argument, nullptr, 'k'},
      {"help", no_argument, nullptr, 'h'},
      {"version", no_argument, nullptr, 'V'},
      {nullptr, 0, nullptr, 0},
  };
  std::string configPath;
  bool checkOnly = false;
  int opt;
  while ((opt = getopt_long(argc, argv, "c:hV", kOptions, nullptr)) != -1) {
    switch (opt) {
      case 'c': configPath = optarg; break;
      case 'k': checkOnly = true; break;
      case 'h': usage(stdout); return 0;
      case 'V': std::printf("usher-dispatch %s\n", USHER_VERSION); return 0;
      default: usage(stderr); return 2;
    }
  }
  if (optind < argc) {
    std::fprintf(stderr, "usher-dispatch: unexpected argument '%s'\n", argv[optind]);
    usage(stderr);
    return 2;
  }

  using namespace usher::dispatch;
  Config config = defaultConfig();
  if (!configPath.empty()) {
    std::vector<ConfigError> errors;
    if (!loadConfig(configPath, config, errors)) {
      for (const auto& e : errors) std::fprintf(stderr, "%s\n", e.str().c_str());
      std::fprintf(stderr, "usher-dispatch: %zu error(s) in configuration\n", errors.size());
      return 1;
    }
  }
  if (checkOnly) {
    std::printf("%s: configuration ok\n", configPath.empty() ? "<embedded defaults>" : configPath.c_str());
    return 0;
  }
  if (!usher::setupLogging(config.logLevel)) {
    std::fprintf(stderr, "usher-dispatch: bad log level\n");
    return 1;
  }
  if (stderrIsJournal()) useJournalFormat();
  ::signal(SIGPIPE, SIG_IGN);
  // Each proxied request holds two descriptors; use what the host allows.
  rlimit nofile{};
  if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
    nofile.rlim_cur = nofile.rlim_max;
    setrlimit(RLIMIT_NOFILE, &nofile);
  }
  Server server(std::move(config));
  if (!server.init()) return 1;
  return server.run();
}
