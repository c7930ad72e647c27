#include "reconcile/vm.h"

#include <arpa/inet.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <map>
#include <set>
#include <unordered_map>

#include "common/logfmt.h"

namespace usher::reconcile {

namespace {

bool numericAddress(const std::string& s) {
  unsigned char buf[sizeof(in6_addr)];
  return ::inet_pton(AF_INET, s.c_str(), buf) == 1 || ::inet_pton(AF_INET6, s.c_str(), buf) == 1;
}

// Provider words go into logs and JSON: printable and short.
std::string tidy(std::string_view s, size_t max = 300) {
  std::string out;
  for (char c : s) {
    if (out.size() >= max) {
      out += "...";
      break;
    }
    out.push_back(static_cast<unsigned char>(c) < 0x20 || c == 0x7f ? ' ' : c);
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

nlohmann::json vmFacts(const VmProfile& p, std::string_view osUser) {
  return {{"name", vmNameFor(osUser)}, {"profile", p.name}, {"provider", p.provider}, {"uri", p.uri}};
}

}  // namespace

size_t VmReport::failures() const {
  size_t n = 0;
  for (const auto& u : users) n += u.status == "failed";
  for (const auto& r : removals) n += r.status == "failed";
  return n;
}

ProviderReply judgeProviderResult(const ProcessResult& r, const ProcessSpec& spec) {
  ProviderReply out;
  out.ms = static_cast<double>(r.duration.count());
  out.stderrText = tidy(r.err, 1000);
  using O = ProcessResult::Outcome;
  if (r.outcome != O::Exited) {
    out.reason = r.outcome == O::SpawnFailed      ? "provider_missing"
                 : r.outcome == O::Timeout        ? "provider_timeout"
                 : r.outcome == O::OutputTooLarge ? "provider_garbage"
                                                  : "provider_signal";
    out.message = "provider " + (r.outcome == O::SpawnFailed ? spec.argv[0] + " " : "") + describe(r, spec);
    return out;
  }
  nlohmann::json reply = nlohmann::json::parse(r.out, nullptr, false);
  bool isObject = !reply.is_discarded() && reply.is_object();
  if (isObject) out.reply = reply;
  if (r.exitStatus == 1 || r.exitStatus == 2) {
    std::string code = isObject && reply.contains("error") && reply["error"].is_string()
                           ? reply["error"].get<std::string>()
                           : "";
    std::string msg = isObject && reply.contains("message") && reply["message"].is_string()
                          ? reply["message"].get<std::string>()
                          : tidy(r.err);
    out.reason = code.empty() ? (r.exitStatus == 2 ? "provider_bad_request" : "provider_exit")
                              : "provider_" + tidy(code, 40);
    out.message = (r.exitStatus == 2 ? "provider refused the request: " : "provider failed: ") +
                  (msg.empty() ? "exit status " + std::to_string(r.exitStatus) : tidy(msg));
    return out;
  }
  if (r.exitStatus != 0) {
    out.reason = "provider_exit";
    out.message = "provider exited with status " + std::to_string(r.exitStatus) + " (not in the contract)" +
                  (out.stderrText.empty() ? "" : ": " + tidy(out.stderrText));
    return out;
  }
  if (!isObject) {
    out.reason = "provider_garbage";
    out.message = r.out.empty()
                      ? "provider printed nothing on stdout"
                      : "provider printed something that is not one JSON object: \"" + tidy(r.out, 80) + "\"";
    return out;
  }
  out.ok = true;
  return out;
}

ProviderRunner processProviderRunner() {
  return [](const std::vector<ProviderCall>& calls, unsigned parallel) {
    std::vector<ProcessSpec> specs;
    specs.reserve(calls.size());
    for (const auto& c : calls) {
      ProcessSpec s;
      s.argv = {c.profile->provider, c.verb};
      s.input = providerRequest(c.verb, c.osUser, *c.profile, c.purge).dump() + "\n";
      s.timeout = c.profile->timeout;
      s.maxStdout = 64 * 1024;
      specs.push_back(std::move(s));
    }
    auto results = runProcesses(specs, parallel);
    std::vector<ProviderReply> replies;
    replies.reserve(results.size());
    for (size_t i = 0; i < results.size(); ++i) {
      replies.push_back(judgeProviderResult(results[i], specs[i]));
      const ProviderReply& r = replies.back();
      if (!r.stderrText.empty()) {
        spdlog::debug(LogLine("provider_stderr")
                          .kv("os_user", calls[i].osUser)
                          .kv("verb", calls[i].verb)
                          .kv("text", r.stderrText)
                          .str());
      }
    }
    return replies;
  };
}

VmReport reconcileVms(const Config& config, const UserMap& map, const State& old, State& state, bool dryRun,
                      const ProviderRunner& runner) {
  VmReport report;

  // Mapped VM users, once each, in map order.
  std::unordered_map<std::string, size_t> index;
  for (const MapEntry& e : map.entries()) {
    if (e.backend != BackendKind::Vm) continue;
    auto [it, fresh] = index.try_emplace(e.osUser, report.users.size());
    if (fresh) {
      VmUserResult u;
      u.osUser = e.osUser;
      u.line = e.line;
      u.profile = e.vmProfile;  // "default" unless the line names one (UserMap)
      u.vmName = vmNameFor(e.osUser);
      report.users.push_back(std::move(u));
    }
    report.users[it->second].ssoNames.push_back(e.ssoName);
  }

  // Profiles, then the quota of each hypervisor: users who already have a VM
  // (a state entry) keep their place; newcomers are admitted in map order.
  std::vector<const VmProfile*> profileOf(report.users.size(), nullptr);
  for (size_t i = 0; i < report.users.size(); ++i) {
    VmUserResult& u = report.users[i];
    auto p = config.vm.find(u.profile);
    if (p == config.vm.end()) {
      u.status = "failed";
      u.reason = "no_profile";
      u.error = "no [vm." + u.profile + "] profile in " +
                (config.sourcePath.empty() ? std::string("the configuration") : config.sourcePath);
      continue;
    }
    profileOf[i] = &p->second;
  }
  std::vector<size_t> order;
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t i = 0; i < report.users.size(); ++i) {
      if (!profileOf[i]) continue;
      const Backend* b = old.find(report.users[i].osUser);
      bool hasVm = b && b->kind == BackendKind::Vm;
      if (hasVm == (pass == 0)) order.push_back(i);
    }
  }
  std::map<std::string, uint32_t> perUri;
  for (size_t i : order) {
    const VmProfile& p = *profileOf[i];
    uint32_t& count = perUri[p.uri];
    if (count >= p.maxVms) {
      VmUserResult& u = report.users[i];
      u.status = "failed";
      u.reason = "quota";
      u.error = "quota: profile " + p.name + " allows at most " + std::to_string(p.maxVms) + " VM" +
                (p.maxVms == 1 ? "" : "s") + " on " + p.uri + ", all taken";
      profileOf[i] = nullptr;
      continue;
    }
    ++count;
  }

  // Removals: VM entries of users no longer mapped with backend=vm.
  std::vector<std::string> gone;
  for (const auto& [name, b] : old.backends())
    if (b.kind == BackendKind::Vm && index.count(name) == 0) gone.push_back(name);
  std::sort(gone.begin(), gone.end());
  std::vector<const VmProfile*> removalProfile;
  for (const auto& name : gone) {
    const Backend& b = *old.find(name);
    VmRemovalResult r;
    r.osUser = name;
    r.vmName = vmNameFor(name);
    r.profile = recordedVmProfile(b.vm, "default");
    auto p = config.vm.find(r.profile);
    const VmProfile* prof = p == config.vm.end() ? nullptr : &p->second;
    r.verb = prof && prof->onRemove == VmProfile::OnRemove::Destroy ? "destroy" : "stop";
    if (!prof) {
      r.status = "failed";
      r.reason = "no_profile";
      r.error = "VM " + r.vmName + " was made with profile " + r.profile +
                ", which is no longer configured: restore [vm." + r.profile + "] or stop it by hand";
    }
    report.removals.push_back(std::move(r));
    removalProfile.push_back(prof);
  }

  // Every call at once, `vm_parallel` at a time.
  std::vector<ProviderCall> calls;
  std::vector<std::pair<bool, size_t>> owners;  // (is removal, index)
  for (size_t i = 0; i < report.users.size(); ++i) {
    if (!profileOf[i]) continue;
    report.users[i].verb = dryRun ? "status" : "ensure";
    calls.push_back({report.users[i].osUser, report.users[i].verb, profileOf[i], false});
    owners.emplace_back(false, i);
  }
  for (size_t i = 0; i < report.removals.size(); ++i) {
    if (!removalProfile[i]) continue;
    if (dryRun) {
      report.removals[i].status = "planned";
      continue;
    }
    calls.push_back({report.removals[i].osUser, report.removals[i].verb, removalProfile[i], false});
    owners.emplace_back(true, i);
  }
  std::vector<ProviderReply> replies =
      calls.empty() ? std::vector<ProviderReply>{} : runner(calls, config.vmParallel);

  for (size_t k = 0; k < calls.size(); ++k) {
    auto [isRemoval, i] = owners[k];
    ProviderReply& rep = replies[k];
    const VmProfile& p = *calls[k].profile;
    if (isRemoval) {
      VmRemovalResult& r = report.removals[i];
      if (!rep.ok) {
        r.status = "failed";
        r.reason = rep.reason;
        r.error = rep.message;
        continue;
      }
      std::string st = rep.reply.value("state", "");
      if (st != "stopped" && st != "absent") {
        r.status = "failed";
        r.reason = "provider_reply";
        r.error = "provider answered " + r.verb + " with state \"" + tidy(st, 40) + "\"";
        continue;
      }
      r.status = "changed";
      if (rep.reply.contains("data_kept") && rep.reply["data_kept"].is_boolean())
        r.dataKept = rep.reply["data_kept"].get<bool>();
      else
        r.dataKept = p.persistent;
      if (const Backend* b = state.find(r.osUser); b && b->kind == BackendKind::Vm) state.erase(r.osUser);
      continue;
    }
    VmUserResult& u = report.users[i];
    u.ms = rep.ms;
    if (!rep.ok) {
      u.status = "failed";
      u.reason = rep.reason;
      u.error = rep.message;
      continue;
    }
    const nlohmann::json& j = rep.reply;
    std::string st = j.contains("state") && j["state"].is_string() ? j["state"].get<std::string>() : "";
    if (dryRun) {
      u.observed = st;
      bool running = st == "running";
      const Backend* b = old.find(u.osUser);
      bool recorded = b && b->kind == BackendKind::Vm && j.contains("address") && j["address"].is_string() &&
                      b->address == j["address"].get<std::string>();
      u.status = running && recorded ? "unchanged" : "planned";
      continue;
    }
    bool addressOk =
        j.contains("address") && j["address"].is_string() && numericAddress(j["address"].get<std::string>());
    bool portOk = j.contains("port") && j["port"].is_number_unsigned() && j["port"].get<uint64_t>() >= 1 &&
                  j["port"].get<uint64_t>() <= 65535;
    if (st != "running" || !addressOk || !portOk) {
      u.status = "failed";
      u.reason = "provider_reply";
      u.error = st != "running" ? "provider answered ensure with state \"" + tidy(st, 40) + "\", not running"
                : !addressOk    ? "provider reply has no numeric \"address\""
                                : "provider reply has no valid \"port\"";
      continue;
    }
    u.address = j["address"].get<std::string>();
    u.port = static_cast<uint16_t>(j["port"].get<uint64_t>());
    u.created = j.value("created", false);
    u.started = j.value("started", false);
    Backend b;
    b.osUser = u.osUser;
    b.kind = BackendKind::Vm;
    b.address = u.address;
    b.port = u.port;
    b.vm = vmFacts(p, u.osUser);
    const Backend* before = old.find(u.osUser);
    bool same = before && before->kind == BackendKind::Vm && before->address == b.address &&
                before->port == b.port && before->vm == b.vm;
    u.status = same && !u.created && !u.started ? "unchanged" : "changed";
    state.put(std::move(b));
  }

  for (const auto& u : report.users) {
    if (u.status == "failed") {
      spdlog::warn(LogLine("vm_failed")
                       .kv("os_user", u.osUser)
                       .kv("vm", u.vmName)
                       .kv("profile", u.profile)
                       .kv("reason", u.reason)
                       .kv("error", u.error)
                       .str());
    } else if (u.status == "changed") {
      spdlog::info(LogLine("vm_ready")
                       .kv("os_user", u.osUser)
                       .kv("vm", u.vmName)
                       .kv("profile", u.profile)
                       .kv("address", u.address)
                       .kv("port", static_cast<unsigned>(u.port))
                       .kv("created", u.created)
                       .kv("started", u.started)
                       .kv("ms", u.ms)
                       .str());
    }
  }
  for (const auto& r : report.removals) {
    if (r.status == "planned") continue;
    spdlog::info(LogLine(r.status == "failed" ? "vm_removal_failed" : "vm_removed")
                     .kv("os_user", r.osUser)
                     .kv("vm", r.vmName)
                     .kv("action", r.verb)
                     .kv("data_kept", r.dataKept)
                     .kv("reason", r.reason)
                     .kv("error", r.error)
                     .str());
  }
  return report;
}

}  // namespace usher::reconcile
