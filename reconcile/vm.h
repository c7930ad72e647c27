// VM backends (docs/vm-provider.md): for every OS user mapped with
// backend=vm, ask the profile's provider to `ensure` the VM and record its
// address in the state file; for every VM user no longer mapped so, `stop`
// (or `destroy`, per the profile's on_remove) it. The quota of each
// hypervisor URI is applied here, before any provider is asked. Providers
// run as child processes, several at once, each bounded by the profile's
// timeout; a provider that fails, hangs or prints garbage fails its user
// alone, whose last recorded address stays in the state file.
#pragma once

#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/process_runner.h"
#include "common/statefile.h"
#include "common/usermap.h"
#include "common/vm_profile.h"
#include "reconcile/config.h"

namespace usher::reconcile {

// One provider call and what came of it.
struct ProviderCall {
  std::string osUser;
  std::string verb;  // ensure, status, stop, destroy
  const VmProfile* profile = nullptr;
  bool purge = false;
};

struct ProviderReply {
  bool ok = false;
  // When !ok: provider_timeout, provider_signal, provider_exit, provider_garbage,
  // provider_reply, provider_missing, or the provider's own error code
  // (connect, base_image, no_address, ...).
  std::string reason;
  std::string message;
  nlohmann::json reply;  // the provider's JSON object (also on exit 1/2 when it printed one)
  std::string stderrText;
  double ms = 0;
};

// Runs calls, `parallel` at a time; one reply per call, in order.
using ProviderRunner =
    std::function<std::vector<ProviderReply>(const std::vector<ProviderCall>&, unsigned parallel)>;
ProviderRunner processProviderRunner();

// Judges one finished provider process (exit code, stdout) by the contract.
ProviderReply judgeProviderResult(const ProcessResult& result, const ProcessSpec& spec);

struct VmUserResult {
  std::string osUser;
  std::vector<std::string> ssoNames;
  int line = 0;
  std::string profile;
  std::string vmName;
  std::string verb;    // ensure (status in a dry run); "" when no provider was asked
  std::string status;  // unchanged, changed, planned, failed
  std::string reason;  // failed: quota, no_profile, provider_*, or the provider's code
  std::string error;
  std::string address;
  uint16_t port = 0;
  bool created = false;
  bool started = false;
  std::string observed;  // dry run: the VM's state as the provider reports it
  double ms = 0;
};

struct VmRemovalResult {
  std::string osUser;
  std::string profile;
  std::string vmName;
  std::string verb;    // stop or destroy
  std::string status;  // changed, planned, failed
  std::string reason;
  std::string error;
  bool dataKept = true;
};

struct VmReport {
  std::vector<VmUserResult> users;
  std::vector<VmRemovalResult> removals;
  size_t failures() const;
};

// `state` is the state as this run will write it: VM entries as they were,
// updated here. In a dry run providers are only asked for `status`.
VmReport reconcileVms(const Config& config, const UserMap& map, const State& old, State& state, bool dryRun,
                      const ProviderRunner& runner);

}  // namespace usher::reconcile
