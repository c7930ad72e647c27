#include "dispatch/proxy/directory.h"

#include <spdlog/spdlog.h>

#include "common/logfmt.h"

namespace usher::dispatch {

Directory::Directory(const Config& config, Metrics& metrics)
    : config_(config), metrics_(metrics), map_(std::make_shared<UserMap>()), state_(std::make_shared<State>()) {}

bool Directory::reloadMap() {
  UserMapOptions options;
  options.minUid = config_.minUid;
  if (config_.verifyOsUsers) options.lookup = systemOsUserLookup();
  std::vector<MapError> errors;
  auto map = UserMap::load(config_.mapFile, options, errors);
  for (const auto& e : errors) {
    spdlog::warn(LogLine("map_error").kv("file", config_.mapFile).kv("line", e.line).kv("msg", e.message).str());
  }
  if (!map) {
    ++metrics_.reloads[{"map", "error"}];
    spdlog::error(LogLine("reload")
                      .kv("file", "map")
                      .kv("path", config_.mapFile)
                      .kv("result", "error")
                      .kv("kept_entries", map_->size())
                      .str());
    return false;
  }
  map_ = std::make_shared<const UserMap>(std::move(*map));
  mapLoaded_ = true;
  metrics_.mapEntries = map_->size();
  ++metrics_.reloads[{"map", "ok"}];
  spdlog::info(LogLine("reload")
                   .kv("file", "map")
                   .kv("path", config_.mapFile)
                   .kv("result", "ok")
                   .kv("entries", map_->size())
                   .kv("bad_lines", errors.size())
                   .str());
  return true;
}

bool Directory::reloadState() {
  std::vector<std::string> errors;
  auto state = State::load(config_.stateFile, errors);
  for (const auto& e : errors) {
    spdlog::warn(LogLine("state_error").kv("file", config_.stateFile).kv("msg", e).str());
  }
  if (!state) {
    ++metrics_.reloads[{"state", "error"}];
    spdlog::error(LogLine("reload")
                      .kv("file", "state")
                      .kv("path", config_.stateFile)
                      .kv("result", "error")
                      .kv("kept_entries", state_->size())
                      .str());
    return false;
  }
  state_ = std::make_shared<const State>(std::move(*state));
  stateLoaded_ = true;
  metrics_.stateEntries = state_->size();
  ++metrics_.reloads[{"state", "ok"}];
  spdlog::info(LogLine("reload")
                   .kv("file", "state")
                   .kv("path", config_.stateFile)
                   .kv("result", "ok")
                   .kv("entries", state_->size())
                   .kv("bad_entries", errors.size())
                   .str());
  return true;
}

Route Directory::resolve(std::string_view ssoName) const {
  Route r;
  r.entry = map_->find(ssoName);
  if (!r.entry) return r;
  r.backend = state_->find(r.entry->osUser);
  r.result = r.backend ? Route::Result::Ok : Route::Result::NoBackend;
  return r;
}

bool Directory::stillMapped(std::string_view ssoName, std::string_view osUser) const {
  const MapEntry* e = map_->find(ssoName);
  return e && e->osUser == osUser;
}

}  // namespace usher::dispatch
