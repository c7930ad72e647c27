// VM profiles: the [vm.NAME] sections both programs read (docs/vm-provider.md),
// and the requests Usher sends to a VM provider. A map line with backend=vm
// names its profile with vm_profile= ("default" otherwise).
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "common/config_schema.h"

namespace usher {

struct VmProfile {
  enum class OnRemove { Stop, Destroy };
  enum class Mint { Provider, None };

  std::string name;
  int line = 0;  // first line of the section, for errors found after parsing

  std::string provider = "/usr/libexec/usher/usher-vm-libvirt";
  std::string uri = "qemu:///system";
  std::string pool = "default";
  std::string baseImage;  // required
  uint64_t memoryMiB = 8192;
  uint32_t vcpus = 4;
  uint64_t diskBytes = 20ULL << 30;
  uint64_t dataDiskBytes = 10ULL << 30;
  bool persistent = true;
  std::string kernel;
  std::string initrd;
  std::string cmdline;
  std::string network = "default";
  uint16_t guestPort = 8080;
  uint32_t maxVms = 10;
  OnRemove onRemove = OnRemove::Stop;
  std::chrono::milliseconds timeout{300'000};
  Mint mint = Mint::Provider;
  std::string stateDir = "/var/lib/usher/vm";
};

using VmProfiles = std::map<std::string, VmProfile>;  // by name

// The handler of the [vm.NAME] family for a config type with a VmProfiles
// member; profile names are checked with validVmProfileName.
std::string applyVmProfileKey(VmProfiles& profiles, std::string_view name, std::string_view key,
                              std::string_view value, int line);

template <class Config>
SectionFamilies<Config> vmProfileFamilies(VmProfiles Config::*field) {
  return {{"vm.", [=](Config& c, std::string_view name, std::string_view key, std::string_view value,
                      int line) { return applyVmProfileKey(c.*field, name, key, value, line); }}};
}

// Checks that need a whole section (base_image is required). One error per
// problem, with the section's first line.
void checkVmProfiles(const VmProfiles& profiles, const std::string& source, std::vector<ConfigError>& errors);

// The profile a VM was made with, as its state entry records it
// ("vm": {"profile": NAME}); `otherwise` when the entry names none.
std::string recordedVmProfile(const nlohmann::json& vmFacts, std::string otherwise);

// The VM of an OS user: "usher-" + os user (os users are [a-z0-9_-]).
std::string vmNameFor(std::string_view osUser);

// The provider's request (docs/vm-provider.md, "Request").
nlohmann::json providerRequest(std::string_view verb, std::string_view osUser, const VmProfile& profile,
                               bool purge = false);

}  // namespace usher
