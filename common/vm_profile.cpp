#include "common/vm_profile.h"

#include "common/ini.h"
#include "common/usermap.h"

namespace usher {

namespace {

std::string sizeValue(std::string_view v, uint64_t& out, uint64_t unit, uint64_t min) {
  // A bare number is in `unit`; a K/M/G/T suffix is binary bytes.
  auto bare = parseUnsigned(v);
  std::optional<uint64_t> bytes = bare ? std::optional<uint64_t>(*bare * unit) : parseSize(v);
  if (!bytes || (bare && *bare > (UINT64_MAX / unit))) return "expected a size such as 512M, 8G or 20G";
  if (*bytes < min) return "too small (at least " + std::to_string(min >> 20) + "M)";
  out = *bytes;
  return "";
}

std::string absolutePath(std::string_view v, std::string& out, bool allowEmpty) {
  if (v.empty() && allowEmpty) {
    out.clear();
    return "";
  }
  if (v.empty() || v.front() != '/') return "expected an absolute path";
  out = std::string(v);
  return "";
}

}  // namespace

std::string applyVmProfileKey(VmProfiles& profiles, std::string_view name, std::string_view key,
                              std::string_view value, int line) {
  if (!validVmProfileName(name)) return "invalid profile name (1-32 of a-z 0-9 _ -)";
  auto [it, fresh] = profiles.try_emplace(std::string(name));
  VmProfile& p = it->second;
  if (fresh) {
    p.name = std::string(name);
    p.line = line;
  }
  if (key == "provider") return absolutePath(value, p.provider, false);
  if (key == "uri") {
    if (value.empty() || value.find("://") == std::string_view::npos)
      return "expected a URI such as qemu:///system";
    for (char c : value)
      if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f)
        return "a URI has no spaces or control characters";
    p.uri = std::string(value);
    return "";
  }
  auto word = [&](std::string& out, bool allowEmpty) -> std::string {
    if (value.empty() && !allowEmpty) return "must not be empty";
    for (char c : value)
      if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f || c == '/')
        return "expected a name without spaces or '/'";
    out = std::string(value);
    return "";
  };
  if (key == "pool") return word(p.pool, false);
  if (key == "base_image") return word(p.baseImage, false);
  if (key == "network") {
    if (value.empty()) return "must not be empty";
    for (char c : value)
      if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f || c == '/')
        return "expected a network name or bridge:NAME";
    p.network = std::string(value);
    return "";
  }
  if (key == "memory") {
    uint64_t bytes = 0;
    std::string problem = sizeValue(value, bytes, 1 << 20, 64ULL << 20);
    if (!problem.empty()) return problem;
    p.memoryMiB = bytes >> 20;
    return "";
  }
  if (key == "vcpus") {
    auto n = parseUnsigned(value);
    if (!n || *n == 0 || *n > 1024) return "expected 1-1024";
    p.vcpus = static_cast<uint32_t>(*n);
    return "";
  }
  if (key == "disk") return sizeValue(value, p.diskBytes, 1, 1 << 20);
  if (key == "data_disk") {
    if (value == "0") {
      p.dataDiskBytes = 0;
      return "";
    }
    return sizeValue(value, p.dataDiskBytes, 1, 1 << 20);
  }
  if (key == "persistent") {
    auto b = parseBool(value);
    if (!b) return "expected yes or no";
    p.persistent = *b;
    return "";
  }
  if (key == "kernel") return absolutePath(value, p.kernel, true);
  if (key == "initrd") return absolutePath(value, p.initrd, true);
  if (key == "cmdline") {
    for (char c : value)
      if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return "no control characters";
    p.cmdline = std::string(value);
    return "";
  }
  if (key == "guest_port") {
    auto n = parseUnsigned(value);
    if (!n || *n == 0 || *n > 65535) return "expected a port 1-65535";
    p.guestPort = static_cast<uint16_t>(*n);
    return "";
  }
  if (key == "max_vms") {
    auto n = parseUnsigned(value);
    if (!n || *n > 1000000) return "expected a number of VMs (0 allows none)";
    p.maxVms = static_cast<uint32_t>(*n);
    return "";
  }
  if (key == "on_remove") {
    if (value == "stop")
      p.onRemove = VmProfile::OnRemove::Stop;
    else if (value == "destroy")
      p.onRemove = VmProfile::OnRemove::Destroy;
    else
      return "expected stop or destroy";
    return "";
  }
  if (key == "timeout") {
    auto d = parseDuration(value);
    if (!d || d->count() < 1000) return "expected a duration of at least 1s";
    p.timeout = *d;
    return "";
  }
  if (key == "mint") {
    if (value == "provider")
      p.mint = VmProfile::Mint::Provider;
    else if (value == "none")
      p.mint = VmProfile::Mint::None;
    else
      return "expected provider or none";
    return "";
  }
  if (key == "state_dir") return absolutePath(value, p.stateDir, false);
  return "unknown key";
}

void checkVmProfiles(const VmProfiles& profiles, const std::string& source,
                     std::vector<ConfigError>& errors) {
  for (const auto& [name, p] : profiles) {
    if (p.baseImage.empty())
      errors.push_back(
          {source, p.line, "vm." + name, "base_image", "required (the base image volume in the pool)"});
    if (p.kernel.empty() != p.initrd.empty())
      errors.push_back({source, p.line, "vm." + name, p.kernel.empty() ? "kernel" : "initrd",
                        "kernel and initrd are set together"});
  }
}

std::string recordedVmProfile(const nlohmann::json& vmFacts, std::string otherwise) {
  if (vmFacts.is_object()) {
    auto it = vmFacts.find("profile");
    if (it != vmFacts.end() && it->is_string() && !it->get_ref<const std::string&>().empty())
      return it->get<std::string>();
  }
  return otherwise;
}

std::string vmNameFor(std::string_view osUser) {
  return "usher-" + std::string(osUser);
}

nlohmann::json providerRequest(std::string_view verb, std::string_view osUser, const VmProfile& p,
                               bool purge) {
  nlohmann::json profile = {
      {"name", p.name},
      {"uri", p.uri},
      {"pool", p.pool},
      {"base_image", p.baseImage},
      {"memory_mib", p.memoryMiB},
      {"vcpus", p.vcpus},
      {"disk_bytes", p.diskBytes},
      {"data_disk_bytes", p.dataDiskBytes},
      {"persistent", p.persistent},
      {"network", p.network},
      {"guest_port", p.guestPort},
      {"state_dir", p.stateDir},
      {"kernel", p.kernel},
      {"initrd", p.initrd},
      {"cmdline", p.cmdline},
  };
  nlohmann::json request = {
      {"contract", 1},
      {"verb", std::string(verb)},
      {"name", vmNameFor(osUser)},
      {"os_user", std::string(osUser)},
      {"profile", std::move(profile)},
      {"deadline_s", static_cast<double>(p.timeout.count()) / 1000.0},
  };
  if (verb == "destroy") request["purge"] = purge;
  return request;
}

}  // namespace usher
