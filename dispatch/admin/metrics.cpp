#include "dispatch/admin/metrics.h"

#include <fmt/format.h>

namespace usher::dispatch {

std::string Metrics::render() const {
  std::string out;
  auto family = [&](const char* name, const char* type, const char* help) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  };
  family("usher_requests_total", "counter", "Requests answered, by HTTP status.");
  for (size_t s = 100; s < requestsByStatus.size(); ++s)
    if (requestsByStatus[s]) out += fmt::format("usher_requests_total{{code=\"{}\"}} {}\n", s, requestsByStatus[s]);
  family("usher_refusals_total", "counter", "Requests refused by Usher itself, by reason.");
  for (const auto& [reason, n] : refusals) out += fmt::format("usher_refusals_total{{reason=\"{}\"}} {}\n", reason, n);
  family("usher_connections_active", "gauge", "Open client connections.");
  out += fmt::format("usher_connections_active {}\n", connectionsActive);
  family("usher_connections_total", "counter", "Client connections accepted.");
  out += fmt::format("usher_connections_total {}\n", connectionsTotal);
  family("usher_websockets_active", "gauge", "Upgraded (WebSocket) connections being spliced.");
  out += fmt::format("usher_websockets_active {}\n", websocketsActive);
  family("usher_upgrades_total", "counter", "Connections upgraded after a 101 from a backend.");
  out += fmt::format("usher_upgrades_total {}\n", upgradesTotal);
  family("usher_backend_connect_errors_total", "counter", "Failed connection attempts to backends.");
  out += fmt::format("usher_backend_connect_errors_total {}\n", backendConnectErrors);
  family("usher_upstream_connections_total", "counter", "Backend connections used, new or reused from the pool.");
  out += fmt::format("usher_upstream_connections_total{{result=\"new\"}} {}\n", upstreamNew);
  out += fmt::format("usher_upstream_connections_total{{result=\"reused\"}} {}\n", upstreamReused);
  family("usher_upstream_retries_total", "counter", "Requests retried after a pooled connection turned out closed.");
  out += fmt::format("usher_upstream_retries_total {}\n", upstreamRetries);
  family("usher_revoked_connections_total", "counter", "Connections closed because their user left the map.");
  out += fmt::format("usher_revoked_connections_total {}\n", revokedConnections);
  family("usher_mints_total", "counter", "Session mints, by result (ok or why it failed).");
  for (const auto& [result, n] : mints) out += fmt::format("usher_mints_total{{result=\"{}\"}} {}\n", result, n);
  family("usher_remints_total", "counter", "Mints asked for because a backend refused an injected session (401).");
  out += fmt::format("usher_remints_total {}\n", remints);
  family("usher_mint_duration_seconds", "histogram", "Time from starting a mint to its result.");
  for (size_t i = 0; i < Histogram::kBounds.size(); ++i)
    out += fmt::format("usher_mint_duration_seconds_bucket{{le=\"{}\"}} {}\n", Histogram::kBounds[i], mintDuration.counts[i]);
  out += fmt::format("usher_mint_duration_seconds_bucket{{le=\"+Inf\"}} {}\n", mintDuration.count);
  out += fmt::format("usher_mint_duration_seconds_sum {}\n", mintDuration.sum);
  out += fmt::format("usher_mint_duration_seconds_count {}\n", mintDuration.count);
  family("usher_bind_checks_total", "counter", "Bind-cookie checks, by result.");
  for (const auto& [result, n] : bindChecks) out += fmt::format("usher_bind_checks_total{{result=\"{}\"}} {}\n", result, n);
  family("usher_map_entries", "gauge", "Users in the loaded user map.");
  out += fmt::format("usher_map_entries {}\n", mapEntries);
  family("usher_state_entries", "gauge", "Backends in the loaded state file.");
  out += fmt::format("usher_state_entries {}\n", stateEntries);
  family("usher_reloads_total", "counter", "Map and state reloads, by file and result.");
  for (const auto& [k, n] : reloads)
    out += fmt::format("usher_reloads_total{{file=\"{}\",result=\"{}\"}} {}\n", k.first, k.second, n);
  return out;
}

}  // namespace usher::dispatch
