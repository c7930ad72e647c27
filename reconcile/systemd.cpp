#include "reconcile/systemd.h"

namespace usher::reconcile {

const char* toString(JobKind kind) {
  switch (kind) {
    case JobKind::Start: return "start";
    case JobKind::Restart: return "restart";
    case JobKind::Stop: return "stop";
  }
  return "start";
}

bool SystemdManager::reload(std::string& error) {
  ++mutatingCalls_;
  return doReload(error);
}

bool SystemdManager::enableUnitFiles(const std::vector<std::string>& units, bool& changed,
                                     std::string& error) {
  changed = false;
  if (units.empty()) return true;
  ++mutatingCalls_;
  return doEnableUnitFiles(units, changed, error);
}

bool SystemdManager::disableUnitFiles(const std::vector<std::string>& units, bool& changed,
                                      std::string& error) {
  changed = false;
  if (units.empty()) return true;
  ++mutatingCalls_;
  return doDisableUnitFiles(units, changed, error);
}

std::vector<JobOutcome> SystemdManager::runJobs(const std::vector<JobRequest>& jobs,
                                                std::chrono::milliseconds timeout) {
  mutatingCalls_ += jobs.size();
  if (jobs.empty()) return {};
  return doRunJobs(jobs, timeout);
}

}  // namespace usher::reconcile
