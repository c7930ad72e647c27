// Counters and gauges, rendered in Prometheus text format (exposition 0.0.4).
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>

namespace usher::dispatch {

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
