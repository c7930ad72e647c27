// Counters and gauges, rendered in Prometheus text format (exposition 0.0.4).
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>

namespace usher::dispatch {

// Prometheus histogram with fixed buckets (seconds).
struct Histogram {
  static constexpr std::array<double, 10> kBounds = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
  std::array<uint64_t, kBounds.size()> counts{};
  uint64_t count = 0;
  double sum = 0;
  void observe(double v) {
    for (size_t i = 0; i < kBounds.size(); ++i)
      if (v <= kBounds[i]) ++counts[i];
    ++count;
    sum += v;
  }
};

struct Metrics {
  std::array<uint64_t, 600> requestsByStatus{};
  std::map<std::string, uint64_t> refusals;  // by audit reason
  uint64_t connectionsActive = 0;
  uint64_t connectionsTotal = 0;
  uint64_t websocketsActive = 0;
  uint64_t upgradesTotal = 0;
  uint64_t backendConnectErrors = 0;
  uint64_t upstreamNew = 0;
  uint64_t upstreamReused = 0;
  uint64_t upstreamRetries = 0;
  uint64_t revokedConnections = 0;
  std::map<std::string, uint64_t> mints;  // by result: ok, or the failure detail
  uint64_t remints = 0;
  Histogram mintDuration;
  std::map<std::string, uint64_t> bindChecks;  // valid, previous_key, invalid, expired, absent
  uint64_t mapEntries = 0;
  uint64_t stateEntries = 0;
  // reloads[{file, result}]
  std::map<std::pair<std::string, std::string>, uint64_t> reloads;

  void countStatus(int status) {
    if (status >= 100 && status < 600) ++requestsByStatus[static_cast<size_t>(status)];
  }
  std::string render() const;
};

}  // namespace usher::dispatch
