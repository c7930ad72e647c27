#include "dispatch/server.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <cstring>
#include <map>

#include <spdlog/spdlog.h>

#include "common/logfmt.h"
#include "dispatch/admin/admin_server.h"
#include "dispatch/net/file_watch.h"
#include "dispatch/proxy/client_connection.h"

namespace usher::dispatch {

Server::Server(Config config)
    : config_(std::move(config)), base_(event_base_new()), directory_(config_, metrics_) {
  pool_ = std::make_unique<UpstreamPool>(base_.get(), config_.maxIdlePerBackend, config_.upstreamIdle);
  reapEvent_.reset(event_new(base_.get(), -1, 0, onReap, this));
  drainTimer_.reset(evtimer_new(base_.get(), onDrainTick, this));
  resumeAccept_.reset(evtimer_new(base_.get(), onResumeAccept, this));
  notifyTimer_.reset(evtimer_new(base_.get(), onNotifyTick, this));
}

Server::~Server() {
  for (auto* c : connections_) delete c;
  for (auto* c : retired_) delete c;
  connections_.clear();
  retired_.clear();
  mint_.reset();
  admin_.reset();
  watch_.reset();
  pool_.reset();
  listeners_.clear();
  signals_.clear();
  reapEvent_.reset();
  drainTimer_.reset();
  resumeAccept_.reset();
  notifyTimer_.reset();
}

bool Server::addListener(evconnlistener* listener, const std::string& what) {
  if (!listener) {
    spdlog::critical(LogLine("fatal").kv("msg", "cannot listen").kv("addr", what).kv("error", std::strerror(errno)).str());
    return false;
  }
  evconnlistener_set_error_cb(listener, onAcceptError);
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  getsockname(evconnlistener_get_fd(listener), reinterpret_cast<sockaddr*>(&ss), &len);
  bound_.push_back(net::fromSockaddr(reinterpret_cast<sockaddr*>(&ss), len));
  listeners_.emplace_back(listener);
  spdlog::info(LogLine("listening").kv("role", "proxy").kv("addr", bound_.back().str()).kv("from", what).str());
  return true;
}

void Server::startWatch() {
  watch_ = std::make_unique<FileWatch>(base_.get(), std::vector<std::string>{config_.mapFile, config_.stateFile},
                                       config_.reloadDebounce,
                                       [this](size_t i) { reload(i == 0, i == 1); });
  if (!watch_->ok()) {
    spdlog::warn(LogLine("inotify_unavailable").kv("msg", "map and state reload only on SIGHUP").str());
  }
}

void Server::notify(const std::string& state) { sd_notify(0, state.c_str()); }

std::string Server::statusLine() const {
  return "connections=" + std::to_string(connections_.size()) +
         " websockets=" + std::to_string(metrics_.websocketsActive) +
         " users=" + std::to_string(directory_.map().size()) +
         " backends=" + std::to_string(directory_.state().size()) + (draining_ ? " draining" : "");
}

// Every tick (half the watchdog interval, or 5 s): WATCHDOG=1 when systemd
// asked for it, STATUS= when it changed. The loop running is what it proves.
void Server::onNotifyTick(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<Server*>(arg);
  std::string msg;
  if (self->watchdogUsec_ > 0) msg = "WATCHDOG=1\n";
  std::string status = self->statusLine();
  if (status != self->lastStatus_) {
    msg += "STATUS=" + status + "\n";
    self->lastStatus_ = status;
  }
  if (!msg.empty()) self->notify(msg);
  uint64_t usec = self->watchdogUsec_ > 0 ? self->watchdogUsec_ / 2 : 5'000'000;
  timeval tv{static_cast<time_t>(usec / 1'000'000), static_cast<suseconds_t>(usec % 1'000'000)};
  evtimer_add(self->notifyTimer_.get(), &tv);
}

bool Server::init() {
  if (!base_) {
    spdlog::critical(LogLine("fatal").kv("msg", "cannot create event loop").str());
    return false;
  }
  if (config_.mint.enabled) {
    std::string err;
    bindKeys_ = BindKeys::load(config_.mint.bindKeyFile, config_.mint.bindKeyPreviousFile, err);
    if (!bindKeys_) {
      spdlog::critical(LogLine("fatal").kv("msg", err).kv("hint", "or set [mint] enabled = no").str());
      return false;
    }
    mint_ = std::make_unique<MintService>(base_.get(), config_.mint, metrics_);
  }
  // Socket activation: systemd's sockets (usher-dispatch.socket) replace [server] listen.
  int passed = sd_listen_fds(1);
  if (passed < 0) {
    spdlog::critical(LogLine("fatal").kv("msg", "sd_listen_fds failed").kv("error", std::strerror(-passed)).str());
    return false;
  }
  for (int fd = SD_LISTEN_FDS_START; fd < SD_LISTEN_FDS_START + passed; ++fd) {
    if (sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, 1) <= 0) {
      spdlog::critical(LogLine("fatal").kv("msg", "passed descriptor is not a listening stream socket").kv("fd", fd).str());
      return false;
    }
    evutil_make_socket_nonblocking(fd);
    evutil_make_socket_closeonexec(fd);
    if (!addListener(evconnlistener_new(base_.get(), onAccept, this, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, -1, fd),
                     "systemd"))
      return false;
    ++inherited_;
  }
  if (inherited_ == 0) {
    for (const auto& l : config_.listen) {
      auto addr = net::parseAddress(l);
      if (!addListener(evconnlistener_new_bind(base_.get(), onAccept, this,
                                               LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC, 1024,
                                               addr->sa(), static_cast<int>(addr->length)),
                       l))
        return false;
    }
  }
  if (!config_.adminListen.empty()) {
    admin_ = std::make_unique<AdminServer>(base_.get(), metrics_, [this] { return ready(); });
    std::string err;
    if (!admin_->listen(*net::parseAddress(config_.adminListen), err)) {
      spdlog::critical(LogLine("fatal").kv("msg", err).str());
      return false;
    }
    spdlog::info(LogLine("listening").kv("role", "admin").kv("addr", admin_->bound().str()).str());
  }
  for (int sig : {SIGHUP, SIGTERM, SIGINT}) {
    signals_.emplace_back(evsignal_new(base_.get(), sig, onSignal, this));
    event_add(signals_.back().get(), nullptr);
  }
  startWatch();
  directory_.reloadMap();
  directory_.reloadState();
  return true;
}

bool Server::ready() const { return directory_.mapLoaded() && directory_.stateLoaded() && !draining_; }

int Server::run() {
  spdlog::info(LogLine("ready")
                   .kv("map_entries", directory_.map().size())
                   .kv("state_entries", directory_.state().size())
                   .kv("ready", ready())
                   .str());
  // systemd (Type=notify): listeners bound, map and state loaded.
  sd_watchdog_enabled(0, &watchdogUsec_);
  lastStatus_ = statusLine();
  notify("READY=1\nSTATUS=" + lastStatus_);
  onNotifyTick(-1, 0, this);
  event_base_dispatch(base_.get());
  for (auto* c : retired_) delete c;
  retired_.clear();
  spdlog::info(LogLine("stopped").kv("open_connections", connections_.size()).str());
  return 0;
}

void Server::onAccept(evconnlistener*, evutil_socket_t fd, sockaddr* sa, int len, void* arg) {
  static_cast<Server*>(arg)->accept(fd, sa, len);
}

void Server::onAcceptError(evconnlistener*, void* arg) {
  auto* self = static_cast<Server*>(arg);
  int err = EVUTIL_SOCKET_ERROR();
  spdlog::error(LogLine("accept_error").kv("error", evutil_socket_error_to_string(err)).str());
  if ((err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) && !self->listenersPaused_) {
    // Out of descriptors: the pending connection stays in the backlog and the
    // listener would spin. Pause accepting briefly instead.
    for (auto& l : self->listeners_) evconnlistener_disable(l.get());
    self->listenersPaused_ = true;
    timeval tv{0, 250 * 1000};
    evtimer_add(self->resumeAccept_.get(), &tv);
  }
}

void Server::onResumeAccept(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<Server*>(arg);
  if (self->draining_ || !self->listenersPaused_ || self->connections_.size() >= self->config_.maxConnections) return;
  for (auto& l : self->listeners_) evconnlistener_enable(l.get());
  self->listenersPaused_ = false;
}

void Server::accept(evutil_socket_t fd, sockaddr* sa, int len) {
  if (draining_) {
    ::close(fd);
    return;
  }
  auto* conn = new ClientConnection(*this, fd, net::fromSockaddr(sa, static_cast<socklen_t>(len)), nextConnectionId_++);
  connections_.insert(conn);
  ++metrics_.connectionsActive;
  ++metrics_.connectionsTotal;
  if (!conn->start()) {
    conn->close();
    return;
  }
  if (connections_.size() >= config_.maxConnections && !listenersPaused_) {
    // Stop accepting rather than fail new connections half-way.
    for (auto& l : listeners_) evconnlistener_disable(l.get());
    listenersPaused_ = true;
    spdlog::warn(LogLine("connection_limit").kv("max_connections", config_.maxConnections).str());
  }
}

void Server::retire(ClientConnection* conn) {
  if (connections_.erase(conn) == 0) return;
  --metrics_.connectionsActive;
  retired_.push_back(conn);
  event_active(reapEvent_.get(), EV_TIMEOUT, 0);
  if (listenersPaused_ && !draining_ && connections_.size() < config_.maxConnections) {
    for (auto& l : listeners_) evconnlistener_enable(l.get());
    listenersPaused_ = false;
  }
  if (draining_) checkDrained();
}

void Server::onReap(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<Server*>(arg);
  auto retired = std::move(self->retired_);
  self->retired_.clear();
  for (auto* c : retired) delete c;
}

void Server::onSignal(evutil_socket_t sig, short, void* arg) {
  auto* self = static_cast<Server*>(arg);
  if (sig == SIGHUP) {
    spdlog::info(LogLine("signal").kv("signal", "SIGHUP").kv("action", "reload").str());
    self->notify("RELOADING=1\nSTATUS=reloading");
    self->reloadConfig();
    self->reload(true, true);
    self->lastStatus_ = self->statusLine();
    self->notify("READY=1\nSTATUS=" + self->lastStatus_);
  } else {
    spdlog::info(LogLine("signal").kv("signal", sig == SIGTERM ? "SIGTERM" : "SIGINT").kv("action", "shutdown").str());
    if (!self->draining_) self->notify("STOPPING=1\nSTATUS=draining");
    self->beginShutdown();
  }
}

void Server::reload(bool map, bool state) {
  if (map) directory_.reloadMap();
  if (state) directory_.reloadState();
  revokeStale();
}

bool Server::reloadConfig() {
  if (config_.sourcePath.empty()) return true;  // embedded defaults: nothing to re-read
  const std::string path = config_.sourcePath;
  auto fail = [&](const std::string& msg) {
    ++metrics_.reloads[{"config", "error"}];
    spdlog::error(LogLine("reload").kv("file", "config").kv("path", path).kv("result", "error").kv("msg", msg).kv("kept", "running config").str());
    return false;
  };
  Config next = defaultConfig();
  std::vector<ConfigError> errors;
  if (!loadConfig(path, next, errors)) {
    for (const auto& e : errors) spdlog::error(LogLine("config_error").kv("msg", e.str()).str());
    return fail(std::to_string(errors.size()) + " error(s) in configuration");
  }
  if (spdlog::level::from_str(next.logLevel) == spdlog::level::off && next.logLevel != "off")
    return fail("bad log level");
  // Built once at start: these keep their running values (a restart applies them).
  std::vector<std::string> kept;
  auto keep = [&](bool differs, const char* name) {
    if (differs) kept.emplace_back(name);
  };
  keep(next.listen != config_.listen && inherited_ == 0, "listen");
  next.listen = config_.listen;
  keep(next.adminListen != config_.adminListen, "admin_listen");
  next.adminListen = config_.adminListen;
  keep(next.mint.enabled != config_.mint.enabled, "mint.enabled");
  next.mint.enabled = config_.mint.enabled;
  keep(next.maxIdlePerBackend != config_.maxIdlePerBackend, "max_idle_per_backend");
  next.maxIdlePerBackend = config_.maxIdlePerBackend;
  keep(next.upstreamIdle != config_.upstreamIdle, "upstream.idle_timeout");
  next.upstreamIdle = config_.upstreamIdle;
  // Bind keys may be rotated by a reload; a key that cannot be read keeps the old config.
  std::optional<BindKeys> keys;
  if (next.mint.enabled) {
    std::string err;
    keys = BindKeys::load(next.mint.bindKeyFile, next.mint.bindKeyPreviousFile, err);
    if (!keys) return fail(err);
  }
  bool files = next.mapFile != config_.mapFile || next.stateFile != config_.stateFile ||
               next.reloadDebounce != config_.reloadDebounce;
  if (next.logLevel != config_.logLevel) spdlog::set_level(spdlog::level::from_str(next.logLevel));
  config_ = std::move(next);  // Directory and MintService read it through references
  if (keys) bindKeys_ = std::move(keys);
  if (files) startWatch();
  std::string keptText;
  for (const auto& k : kept) keptText += (keptText.empty() ? "" : ",") + k;
  ++metrics_.reloads[{"config", "ok"}];
  auto line = LogLine("reload").kv("file", "config").kv("path", path).kv("result", "ok");
  if (!keptText.empty()) line.kv("unchanged_until_restart", keptText);
  spdlog::info(line.str());
  return true;
}

// A user who left the map (or now maps to another OS user) loses access at
// once: every connection serving them is closed, WebSockets included.
void Server::revokeStale() {
  // One audit line per revoked user, with how many connections it closed.
  std::map<std::pair<std::string, std::string>, std::vector<ClientConnection*>> stale;
  for (auto* c : connections_) {
    if (!c->ssoUser().empty() && !directory_.stillMapped(c->ssoUser(), c->osUser()))
      stale[{c->ssoUser(), c->osUser()}].push_back(c);
  }
  for (auto& [who, conns] : stale) {
    size_t upgraded = 0;
    for (auto* c : conns) upgraded += c->upgraded() ? 1 : 0;
    spdlog::warn(LogLine("revoke")
                     .kv("user", who.first)
                     .kv("os_user", who.second)
                     .kv("connections", conns.size())
                     .kv("websockets", upgraded)
                     .str());
    metrics_.revokedConnections += conns.size();
    for (auto* c : conns) c->close();
  }
}

void Server::beginShutdown() {
  if (draining_) {
    // Second signal: stop now.
    event_base_loopbreak(base_.get());
    return;
  }
  draining_ = true;
  for (auto& l : listeners_) evconnlistener_disable(l.get());
  listeners_.clear();
  drainDeadline_ = std::chrono::steady_clock::now() + config_.shutdownDrain;
  std::vector<ClientConnection*> all(connections_.begin(), connections_.end());
  for (auto* c : all) c->drain();
  spdlog::info(LogLine("draining").kv("connections", connections_.size()).kv("deadline_ms", config_.shutdownDrain.count()).str());
  timeval tv{0, 100 * 1000};
  evtimer_add(drainTimer_.get(), &tv);
  checkDrained();
}

void Server::onDrainTick(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<Server*>(arg);
  if (std::chrono::steady_clock::now() >= self->drainDeadline_) {
    std::vector<ClientConnection*> all(self->connections_.begin(), self->connections_.end());
    if (!all.empty()) spdlog::warn(LogLine("drain_deadline").kv("closing", all.size()).str());
    for (auto* c : all) c->close();
  } else {
    std::vector<ClientConnection*> idle;
    for (auto* c : self->connections_)
      if (c->idle()) idle.push_back(c);
    for (auto* c : idle) c->close();
    timeval tv{0, 100 * 1000};
    evtimer_add(self->drainTimer_.get(), &tv);
  }
  self->checkDrained();
}

void Server::checkDrained() {
  if (draining_ && connections_.empty()) {
    pool_->clear();
    admin_.reset();
    watch_.reset();
    event_base_loopexit(base_.get(), nullptr);
  }
}

}  // namespace usher::dispatch
