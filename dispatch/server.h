// usher-dispatch's event loop: listeners, connections, reloads, signals.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

#include "dispatch/admin/metrics.h"
#include "dispatch/config.h"
#include "dispatch/net/address.h"
#include "dispatch/net/libevent.h"
#include "dispatch/proxy/directory.h"
#include "dispatch/proxy/upstream_pool.h"
#include "dispatch/session/bind_cookie.h"
#include "dispatch/session/mint_service.h"

namespace usher::dispatch {

class ClientConnection;
class AdminServer;
class FileWatch;

class Server {
public:
  explicit Server(Config config);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds listeners and loads map and state. Returns false (after logging)
  // when the environment makes running impossible.
  bool init();
  // Runs the loop until SIGTERM/SIGINT and the drain finish. Exit code.
  int run();

  event_base* base() const { return base_.get(); }
  const Config& config() const { return config_; }
  Metrics& metrics() { return metrics_; }
  const Directory& directory() const { return directory_; }
  UpstreamPool& pool() { return *pool_; }
  // Minting, when [mint] enabled = yes (both null otherwise).
  MintService* mint() { return mint_.get(); }
  const BindKeys* bindKeys() const { return bindKeys_ ? &*bindKeys_ : nullptr; }
  bool draining() const { return draining_; }

  // Called by a connection that has closed; it is freed on the next loop pass
  // (never inside its own callback).
  void retire(ClientConnection* conn);
  // Bound addresses (listeners may be configured with port 0).
  const std::vector<net::Address>& boundAddresses() const { return bound_; }
  bool ready() const;

  // Map and/or state changed on disk or SIGHUP: reload and revoke.
  void reload(bool map, bool state);
  // SIGHUP: re-reads the config file (everything but the listeners and what
  // is built once at start, which is kept and named in the log line); on any
  // error the running config stays. Returns whether the new one was taken.
  bool reloadConfig();
  // Listeners passed by systemd (socket activation), used instead of [server] listen.
  size_t inheritedListeners() const { return inherited_; }

private:
  static void onAccept(evconnlistener* l, evutil_socket_t fd, sockaddr* sa, int len, void* arg);
  static void onAcceptError(evconnlistener* l, void* arg);
  static void onSignal(evutil_socket_t sig, short, void* arg);
  static void onReap(evutil_socket_t, short, void* arg);
  static void onDrainTick(evutil_socket_t, short, void* arg);
  static void onResumeAccept(evutil_socket_t, short, void* arg);
  static void onNotifyTick(evutil_socket_t, short, void* arg);
  bool addListener(evconnlistener* listener, const std::string& what);
  void startWatch();
  // sd_notify: a no-op when not run by systemd (no $NOTIFY_SOCKET).
  void notify(const std::string& state);
  std::string statusLine() const;
  void accept(evutil_socket_t fd, sockaddr* sa, int len);
  void revokeStale();
  void beginShutdown();
  void checkDrained();

  Config config_;
  net::EventBasePtr base_;
  Metrics metrics_;
  Directory directory_;
  std::unique_ptr<UpstreamPool> pool_;
  std::optional<BindKeys> bindKeys_;
  std::unique_ptr<MintService> mint_;
  std::vector<net::ListenerPtr> listeners_;
  std::vector<net::Address> bound_;
  std::vector<net::EventPtr> signals_;
  net::EventPtr reapEvent_;
  net::EventPtr drainTimer_;
  net::EventPtr resumeAccept_;
  net::EventPtr notifyTimer_;
  uint64_t watchdogUsec_ = 0;
  std::string lastStatus_;
  size_t inherited_ = 0;
  std::unique_ptr<AdminServer> admin_;
  std::unique_ptr<FileWatch> watch_;
  // Connections own themselves; retired ones wait here for the reaper.
  std::unordered_set<ClientConnection*> connections_;
  std::vector<ClientConnection*> retired_;
  bool draining_ = false;
  bool listenersPaused_ = false;
  std::chrono::steady_clock::time_point drainDeadline_;
  uint64_t nextConnectionId_ = 1;
};

}  // namespace usher::dispatch
