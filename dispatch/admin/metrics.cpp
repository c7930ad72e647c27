#include "dispatch/admin/metrics.h"

#include <fmt/format.h>

namespace usher::dispatch {

std::string Metrics::render() const {
  std::string out;
  auto family = [&](const char* name, const char* type, const char* help) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  };
  auto scalar = [&](const char* name, const char* type, const char* help, uint64_t value) {
    family(name, type, help);
    out += fmt::format("{} {}\n", name, value);
  };
  // One labelled family from a map: name{label="key"} value.
  auto labelled = [&](const char* name, const char* help, const char* label, const std::map<std::string, uint64_t>& m) {
    family(name, "counter", help);
    for (const auto& [k, n] : m) out += fmt::format("{}{{{}=\"{}\"}} {}\n", name, label, k, n);
  };

  family("usher_requests_total", "counter", "Requests answered, by HTTP status.");
  for (size_t s = 100; s < requestsByStatus.size(); ++s)
    if (requestsByStatus[s]) out += fmt::format("usher_requests_total{{code=\"{}\"}} {}\n", s, requestsByStatus[s]);
  labelled("usher_refusals_total", "Requests refused by Usher itself, by reason.", "reason", refusals);
  scalar("usher_connections_active", "gauge", "Open client connections.", connectionsActive);
  scalar("usher_connections_total", "counter", "Client connections accepted.", connectionsTotal);
  scalar("usher_websockets_active", "gauge", "Upgraded (WebSocket) connections being spliced.", websocketsActive);
  scalar("usher_upgrades_total", "counter", "Connections upgraded after a 101 from a backend.", upgradesTotal);
  scalar("usher_backend_connect_errors_total", "counter", "Failed connection attempts to backends.",
         backendConnectErrors);
  family("usher_upstream_connections_total", "counter", "Backend connections used, new or reused from the pool.");
  out += fmt::format("usher_upstream_connections_total{{result=\"new\"}} {}\n", upstreamNew);
  out += fmt::format("usher_upstream_connections_total{{result=\"reused\"}} {}\n", upstreamReused);
  scalar("usher_upstream_retries_total", "counter", "Requests retried after a pooled connection turned out closed.",
         upstreamRetries);
  scalar("usher_revoked_connections_total", "counter", "Connections closed because their user left the map.",
         revokedConnections);
  labelled("usher_mints_total", "Session mints, by result (ok or why it failed).", "result", mints);
  scalar("usher_remints_total", "counter", "Mints asked for because a backend refused an injected session (401).",
         remints);
  family("usher_mint_duration_seconds", "histogram", "Time from starting a mint to its result.");
  for (size_t i = 0; i < Histogram::kBounds.size(); ++i)
    out += fmt::format("usher_mint_duration_seconds_bucket{{le=\"{}\"}} {}\n", Histogram::kBounds[i],
                       mintDuration.counts[i]);
  out += fmt::format("usher_mint_duration_seconds_bucket{{le=\"+Inf\"}} {}\n", mintDuration.count);
  out += fmt::format("usher_mint_duration_seconds_sum {}\n", mintDuration.sum);
  out += fmt::format("usher_mint_duration_seconds_count {}\n", mintDuration.count);
  labelled("usher_bind_checks_total", "Bind-cookie checks, by result.", "result", bindChecks);
  scalar("usher_map_entries", "gauge", "Users in the loaded user map.", mapEntries);
  scalar("usher_state_entries", "gauge", "Backends in the loaded state file.", stateEntries);
  family("usher_reloads_total", "counter", "Map and state reloads, by file and result.");
  for (const auto& [k, n] : reloads)
    out += fmt::format("usher_reloads_total{{file=\"{}\",result=\"{}\"}} {}\n", k.first, k.second, n);
  return out;
}

}  // namespace usher::dispatch
