// Obtains app sessions for users (DESIGN.md, "Mint"): run the mint command as
// the user, take the one-time credential from its JSON, trade it at the
// user's backend for the app's session cookie, optionally check the cookie.
// One flight per user at a time: every request that needs a session while a
// mint is running waits for that mint and shares its result.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "dispatch/admin/metrics.h"
#include "dispatch/config.h"
#include "dispatch/net/address.h"
#include "dispatch/net/libevent.h"

namespace usher::dispatch {

class ChildProcess;
class HttpClient;

struct MintTarget {
  std::string ssoName;
  std::string osUser;
  std::string home;        // for {home}
  net::Address backend;    // exchange goes here; {port}
  std::string hostHeader;  // Host for the exchange request
  // A VM backend: the provider's `mint` verb replaces the configured command
  // (argv as is, no placeholders), with the request on its stdin.
  std::vector<std::string> command;
  std::string input;
};

struct MintOutcome {
  bool ok = false;
  int status = 502;            // when !ok: 502, or 429 when rate limited
  std::string reason;          // audit reason: mint_failed, mint_rate_limited
  std::string detail;          // command_missing, exit_status, timeout, ...
  std::string cookieValue;     // the app's session cookie value
  std::string cookieExpires;   // attributes kept from the app's Set-Cookie
  std::string cookieMaxAge;
};

class MintService {
public:
  using Callback = std::function<void(const MintOutcome&)>;

  MintService(event_base* base, const MintConfig& config, Metrics& metrics);
  ~MintService();
  MintService(const MintService&) = delete;
  MintService& operator=(const MintService&) = delete;

  // Asks for a session for `target`. `failedCookie`, when set, is a cookie the
  // backend just refused (401): it is not handed out again, and the mint
  // counts as a re-mint. The callback always runs later from the loop (never
  // inside acquire). Returns a ticket for cancel().
  uint64_t acquire(const MintTarget& target, const std::string& failedCookie, Callback callback);
  // The waiter is gone (its connection closed); the mint itself goes on.
  void cancel(uint64_t ticket);
  // The backend refused `cookie`: never hand it out again from the cache.
  void forget(const std::string& osUser, const net::Address& backend, const std::string& cookie);

  size_t flightsInProgress() const { return flights_.size(); }

private:
  struct Waiter {
    uint64_t ticket;
    Callback callback;
  };
  struct Flight {
    MintTarget target;
    std::vector<Waiter> waiters;
    std::unique_ptr<ChildProcess> child;
    std::unique_ptr<HttpClient> http;
    std::chrono::steady_clock::time_point started;
    std::chrono::microseconds commandTime{0};
    std::string credential;  // never logged
    MintOutcome outcome;
  };
  struct Cached {
    MintOutcome outcome;
    std::chrono::steady_clock::time_point at;
  };
  struct Immediate {
    uint64_t ticket;
    MintOutcome outcome;
  };

  static void onImmediate(evutil_socket_t, short, void* arg);
  void startFlight(const std::string& key);
  void onCommandDone(const std::string& key, struct ChildResult& result);
  void startExchange(const std::string& key);
  void startSessionCheck(const std::string& key);
  void askBackend(const std::string& key, std::string request, std::function<void(struct HttpClientResult&)> done);
  void complete(const std::string& key, MintOutcome outcome);
  std::vector<std::string> expandCommand(const MintTarget& target) const;
  std::string exchangeBody(const std::string& credential) const;
  std::string redact(std::string text, const std::string& secret) const;

  event_base* base_;
  const MintConfig& config_;
  Metrics& metrics_;
  uint64_t nextTicket_ = 1;
  std::unordered_map<std::string, std::unique_ptr<Flight>> flights_;  // by OS user + backend
  std::unordered_map<std::string, Cached> cache_;                     // recent results, for reuse_window
  std::unordered_map<std::string, std::deque<std::chrono::steady_clock::time_point>> starts_;  // rate limit
  std::map<uint64_t, std::string> ticketFlight_;  // ticket -> flight key, for cancel
  std::vector<Immediate> immediate_;
  std::unordered_map<uint64_t, Callback> immediateCallbacks_;
  // Finished flights, freed on the next loop pass (their child or client may
  // be the one whose callback finished them).
  std::vector<std::unique_ptr<Flight>> retired_;
  net::EventPtr immediateEvent_;
};

}  // namespace usher::dispatch
