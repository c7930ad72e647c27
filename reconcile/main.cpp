// usher-reconcile: parse arguments, load config, run once. Everything else is
// in usher_reconcile_lib, which the tests link.
#include <getopt.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "common/logfmt.h"
#include "reconcile/config.h"
#include "reconcile/reconcile.h"
#include "usher/version.h"

namespace {

void usage(FILE* f) {
  std::fputs(
      "usage: usher-reconcile [--config FILE] [--dry-run] [--json] [--no-wait]\n"
      "                       [--bus-address ADDRESS] [--check-config]\n"
      "       usher-reconcile --purge OS_USER [--vm-profile NAME] [--config FILE] [--json]\n"
      "\n"
      "Turns the user map into running per-user t3-serve@<user> instances: sticky\n"
      "ports from a range (existing T3_PORT= env files adopted), env files and the\n"
      "state file written atomically, systemd driven over D-Bus. Runs once; one run\n"
      "at a time (lock file).\n"
      "\n"
      "  -c, --config FILE        the usher INI file ([users], [reconcile]); without\n"
      "                           it, embedded defaults\n"
      "  -n, --dry-run            print the plan, change nothing (no lock taken)\n"
      "  -j, --json               print the plan and result as JSON on stdout\n"
      "      --no-wait            if another run holds the lock, exit 2 at once\n"
      "                           instead of waiting up to lock_wait\n"
      "      --bus-address ADDR   talk to systemd on this D-Bus address instead of\n"
      "                           the system bus (also $USHER_SYSTEMD_BUS), e.g.\n"
      "                           unix:path=/run/dbus/system_bus_socket\n"
      "      --check-config       validate the configuration and exit (0 valid, 2 not)\n"
      "      --purge OS_USER      destroy the VM of a user who is no longer mapped,\n"
      "                           deleting its persistent data volume too (the only\n"
      "                           way data is ever deleted); refused while mapped\n"
      "      --vm-profile NAME    the profile of that VM (default: as recorded in the\n"
      "                           state file, else \"default\")\n"
      "  -h, --help               this text\n"
      "  -V, --version            print the version\n"
      "\n"
      "Exit status:\n"
      "  0  every mapped user is provisioned; nothing failed\n"
      "  1  partial: some map lines or users failed (reported); the others were done\n"
      "  2  could not run, nothing changed: bad config, lock held, map or state file\n"
      "     unreadable, systemd unreachable\n"
      "\n"
      "Keys: the [reconcile] section of dispatch/usher.conf.example.\n",
      f);
}

}  // namespace

int main(int argc, char** argv) {
  enum { kNoWait = 256, kBusAddress, kCheckConfig, kPurge, kVmProfile };
  static const option kOptions[] = {
      {"config", required_argument, nullptr, 'c'},
      {"dry-run", no_argument, nullptr, 'n'},
      {"json", no_argument, nullptr, 'j'},
      {"no-wait", no_argument, nullptr, kNoWait},
      {"bus-address", required_argument, nullptr, kBusAddress},
      {"check-config", no_argument, nullptr, kCheckConfig},
      {"purge", required_argument, nullptr, kPurge},
      {"vm-profile", required_argument, nullptr, kVmProfile},
      {"help", no_argument, nullptr, 'h'},
      {"version", no_argument, nullptr, 'V'},
      {nullptr, 0, nullptr, 0},
  };
  using namespace usher::reconcile;
  std::string configPath;
  Options options;
  bool json = false;
  bool checkOnly = false;
  std::string purgeUser;
  std::string purgeProfile;
  if (const char* bus = std::getenv("USHER_SYSTEMD_BUS"); bus != nullptr) options.busAddress = bus;
  int opt;
  while ((opt = getopt_long(argc, argv, "c:njhV", kOptions, nullptr)) != -1) {
    switch (opt) {
      case 'c': configPath = optarg; break;
      case 'n': options.dryRun = true; break;
      case 'j': json = true; break;
      case kNoWait: options.noWait = true; break;
      case kBusAddress: options.busAddress = optarg; break;
      case kCheckConfig: checkOnly = true; break;
      case kPurge: purgeUser = optarg; break;
      case kVmProfile: purgeProfile = optarg; break;
      case 'h': usage(stdout); return kExitOk;
      case 'V': std::printf("usher-reconcile %s\n", USHER_VERSION); return kExitOk;
      default: usage(stderr); return kExitCannotRun;
    }
  }
  if (optind < argc) {
    std::fprintf(stderr, "usher-reconcile: unexpected argument '%s'\n", argv[optind]);
    usage(stderr);
    return kExitCannotRun;
  }

  Config config;
  if (!configPath.empty()) {
    std::vector<ConfigError> errors;
    if (!loadConfig(configPath, config, errors)) {
      for (const auto& e : errors) std::fprintf(stderr, "%s\n", e.str().c_str());
      std::fprintf(stderr, "usher-reconcile: %zu error(s) in configuration\n", errors.size());
      return kExitCannotRun;
    }
  }
  if (checkOnly) {
    std::printf("%s: configuration ok\n",
                configPath.empty() ? "<embedded defaults>" : configPath.c_str());
    return kExitOk;
  }
  usher::setupLogging(config.logLevel);

  if (!purgeUser.empty()) {
    nlohmann::ordered_json doc;
    int code = purge(config, options, systemEnvironment(config, options), purgeUser, purgeProfile, doc);
    if (json) {
      std::printf("%s\n", doc.dump(2).c_str());
    } else {
      std::string status = doc.value("status", "");
      std::printf("%s purge %s (%s)%s\n", status.c_str(), purgeUser.c_str(), doc.value("vm", "").c_str(),
                  doc.contains("error") ? (": " + doc["error"].get<std::string>()).c_str() : "");
    }
    return code;
  }

  Report report = run(config, options, systemEnvironment(config, options));
  if (json) {
    std::printf("%s\n", toJson(report, config).dump(2).c_str());
  } else {
    std::fputs(toText(report).c_str(), stdout);
  }
  std::fflush(stdout);
  return report.exitCode;
}
