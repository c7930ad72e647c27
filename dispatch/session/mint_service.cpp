#include "dispatch/session/mint_service.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "common/logfmt.h"
#include "common/usermap.h"
#include "dispatch/http/headers.h"
#include "dispatch/session/child_process.h"
#include "dispatch/session/cookies.h"
#include "dispatch/session/http_client.h"

namespace usher::dispatch {

using Clock = std::chrono::steady_clock;

namespace {

std::string jsonEscape(std::string_view s) {
  std::string d = nlohmann::json(std::string(s)).dump();  // "..."
  return d.substr(1, d.size() - 2);
}

std::string formEscape(std::string_view s) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(hex[c >> 4]);
      out.push_back(hex[c & 15]);
    }
  }
  return out;
}

bool validCredential(std::string_view c) {
  if (c.empty() || c.size() > 4096) return false;
  for (unsigned char ch : c)
    if (ch < 0x20 || ch == 0x7f) return false;
  return true;
}

}  // namespace

MintService::MintService(event_base* base, const MintConfig& config, Metrics& metrics)
    : base_(base), config_(config), metrics_(metrics) {
  immediateEvent_.reset(event_new(base_, -1, 0, onImmediate, this));
}

MintService::~MintService() = default;

uint64_t MintService::acquire(const MintTarget& target, const std::string& failedCookie, Callback callback) {
  uint64_t ticket = nextTicket_++;
  std::string key = target.osUser + "\n" + target.backend.str();
  auto now = Clock::now();
  if (!failedCookie.empty()) ++metrics_.remints;

  // Reuse a recent result (a page loading many assets at once) unless it is
  // the very cookie the backend just refused.
  auto cached = cache_.find(key);
  if (cached != cache_.end()) {
    bool fresh = now - cached->second.at < config_.reuseWindow;
    if (fresh && cached->second.outcome.ok && cached->second.outcome.cookieValue != failedCookie) {
      immediate_.push_back({ticket, cached->second.outcome});
      ticketFlight_[ticket] = "";
      immediateCallbacks_[ticket] = std::move(callback);
      event_active(immediateEvent_.get(), EV_TIMEOUT, 0);
      return ticket;
    }
    cache_.erase(cached);
  }

  auto flight = flights_.find(key);
  if (flight != flights_.end()) {
    flight->second->waiters.push_back({ticket, std::move(callback)});
    ticketFlight_[ticket] = key;
    return ticket;
  }

  // Per-user rate limit, counted over started mints.
  auto& starts = starts_[target.osUser];
  while (!starts.empty() && now - starts.front() >= config_.rateLimitWindow) starts.pop_front();
  if (starts.size() >= config_.rateLimit) {
    ++metrics_.mints["rate_limited"];
    MintOutcome o;
    o.status = 429;
    o.reason = "mint_rate_limited";
    o.detail = "more than " + std::to_string(config_.rateLimit) + " sign-ins in " +
               std::to_string(config_.rateLimitWindow.count() / 1000) + "s";
    immediate_.push_back({ticket, o});
    ticketFlight_[ticket] = "";
    immediateCallbacks_[ticket] = std::move(callback);
    event_active(immediateEvent_.get(), EV_TIMEOUT, 0);
    return ticket;
  }
  starts.push_back(now);

  auto f = std::make_unique<Flight>();
  f->target = target;
  f->started = now;
  f->waiters.push_back({ticket, std::move(callback)});
  ticketFlight_[ticket] = key;
  flights_[key] = std::move(f);
  startFlight(key);
  return ticket;
}

void MintService::cancel(uint64_t ticket) {
  auto it = ticketFlight_.find(ticket);
  if (it == ticketFlight_.end()) return;
  std::string key = it->second;
  ticketFlight_.erase(it);
  immediateCallbacks_.erase(ticket);
  auto f = flights_.find(key);
  if (f == flights_.end()) return;
  auto& w = f->second->waiters;
  w.erase(std::remove_if(w.begin(), w.end(), [&](const Waiter& x) { return x.ticket == ticket; }), w.end());
}

void MintService::forget(const std::string& osUser, const net::Address& backend, const std::string& cookie) {
  auto it = cache_.find(osUser + "\n" + backend.str());
  if (it != cache_.end() && it->second.outcome.cookieValue == cookie) cache_.erase(it);
}

void MintService::onImmediate(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<MintService*>(arg);
  self->retired_.clear();
  auto pending = std::move(self->immediate_);
  self->immediate_.clear();
  for (auto& p : pending) {
    auto cb = self->immediateCallbacks_.find(p.ticket);
    if (cb == self->immediateCallbacks_.end()) continue;  // cancelled
    Callback callback = std::move(cb->second);
    self->immediateCallbacks_.erase(cb);
    self->ticketFlight_.erase(p.ticket);
    callback(p.outcome);
  }
}

std::vector<std::string> MintService::expandCommand(const MintTarget& t) const {
  std::vector<std::string> argv;
  for (const auto& arg : config_.command) {
    std::string out;
    for (size_t i = 0; i < arg.size();) {
      auto rest = std::string_view(arg).substr(i);
      if (rest.rfind("{os_user}", 0) == 0) {
        out += t.osUser;  // validated against validOsUser by the map
        i += 9;
      } else if (rest.rfind("{home}", 0) == 0) {
        out += t.home;
        i += 6;
      } else if (rest.rfind("{port}", 0) == 0) {
        out += std::to_string(t.backend.port());
        i += 6;
      } else {
        out.push_back(arg[i++]);
      }
    }
    argv.push_back(std::move(out));
  }
  return argv;
}

std::string MintService::exchangeBody(const std::string& credential) const {
  std::string escaped;
  std::string_view type = config_.exchangeContentType;
  if (type.rfind("application/json", 0) == 0 || type.find("+json") != std::string_view::npos)
    escaped = jsonEscape(credential);
  else if (type.rfind("application/x-www-form-urlencoded", 0) == 0)
    escaped = formEscape(credential);
  else
    escaped = credential;  // validCredential: no control characters
  std::string body;
  const std::string& tpl = config_.exchangeBody;
  size_t pos = 0;
  for (size_t at = tpl.find("{credential}"); at != std::string::npos; at = tpl.find("{credential}", pos)) {
    body.append(tpl, pos, at - pos).append(escaped);
    pos = at + 12;
  }
  body.append(tpl, pos);
  return body;
}

std::string MintService::redact(std::string text, const std::string& secret) const {
  if (secret.size() < 4) return text;
  for (size_t at = text.find(secret); at != std::string::npos; at = text.find(secret, at))
    text.replace(at, secret.size(), "[redacted]");
  return text;
}

void MintService::startFlight(const std::string& key) {
  Flight& f = *flights_[key];
  if (f.target.command.empty() && f.target.home.empty() && f.target.osUser.size() > 0) {
    for (const auto& a : config_.command)
      if (a.find("{home}") != std::string::npos) {
        complete(key, MintOutcome{false, 502, "mint_failed", "no_home"});
        return;
      }
  }
  f.child = std::make_unique<ChildProcess>(base_, f.target.command.empty() ? expandCommand(f.target) : f.target.command,
                                           config_.timeout, config_.maxOutput,
                                           [this, key](ChildResult& r) { onCommandDone(key, r); });
  if (!f.target.input.empty()) f.child->setInput(f.target.input);
  f.child->start();
}

void MintService::onCommandDone(const std::string& key, ChildResult& r) {
  auto it = flights_.find(key);
  if (it == flights_.end()) return;
  Flight& f = *it->second;
  f.commandTime = r.duration;
  MintOutcome fail{false, 502, "mint_failed", ""};
  std::string detail;
  switch (r.outcome) {
    case ChildResult::Outcome::SpawnFailed:
      detail = r.spawnErrno == ENOENT || r.spawnErrno == EACCES ? "command_missing" : "spawn_failed";
      break;
    case ChildResult::Outcome::Timeout:
      detail = "timeout";
      break;
    case ChildResult::Outcome::OutputTooLarge:
      detail = "output_too_large";
      break;
    case ChildResult::Outcome::Signaled:
      detail = "killed_by_signal";
      break;
    case ChildResult::Outcome::Exited:
      if (r.exitStatus != 0) detail = "exit_status";
      break;
  }
  std::string credential;
  if (detail.empty()) {
    auto doc = nlohmann::json::parse(r.stdoutData, nullptr, false);
    if (doc.is_discarded()) {
      detail = "not_json";
    } else {
      nlohmann::json::json_pointer ptr;
      bool ptrOk = true;
      try {
        ptr = nlohmann::json::json_pointer(config_.credentialPointer);
      } catch (const std::exception&) {
        ptrOk = false;
      }
      if (!ptrOk || !doc.contains(ptr) || !doc.at(ptr).is_string() ||
          !validCredential(doc.at(ptr).get_ref<const std::string&>())) {
        detail = "no_credential";
      } else {
        credential = doc.at(ptr).get<std::string>();
      }
    }
  }
  if (!r.stderrData.empty()) {
    // The command's own words, escaped and cut short; never a credential.
    std::string err = redact(r.stderrData.substr(0, 512), credential);
    spdlog::warn(LogLine("mint_stderr").kv("os_user", f.target.osUser).kv("stderr", err).str());
  }
  if (!detail.empty()) {
    LogLine line("mint_command");
    line.kv("os_user", f.target.osUser).kv("detail", detail);
    if (r.outcome == ChildResult::Outcome::Exited) line.kv("exit_status", r.exitStatus);
    if (r.outcome == ChildResult::Outcome::Signaled) line.kv("signal", r.signal);
    if (r.outcome == ChildResult::Outcome::SpawnFailed) line.kv("error", std::strerror(r.spawnErrno));
    spdlog::warn(line.str());
    fail.detail = detail;
    complete(key, fail);
    return;
  }
  f.credential = std::move(credential);
  startExchange(key);
}

void MintService::startExchange(const std::string& key) {
  Flight& f = *flights_[key];
  std::string body = exchangeBody(f.credential);
  std::vector<std::string> headers;
  if (config_.exchangeMethod != "GET" || !body.empty())
    headers.push_back("Content-Type: " + config_.exchangeContentType);
  headers.push_back("Accept: application/json");
  std::string request = HttpClient::buildRequest(config_.exchangeMethod, config_.exchangePath,
                                                 f.target.hostHeader, headers, body);
  askBackend(key, std::move(request), [this, key](HttpClientResult& r) {
    auto it = flights_.find(key);
    if (it == flights_.end()) return;
    Flight& fl = *it->second;
    if (!r.ok) {
      spdlog::warn(LogLine("mint_exchange").kv("os_user", fl.target.osUser).kv("error", r.error).str());
      complete(key, MintOutcome{false, 502, "mint_failed", "exchange_failed"});
      return;
    }
    if (r.status / 100 != 2) {
      spdlog::warn(LogLine("mint_exchange").kv("os_user", fl.target.osUser).kv("status", r.status).str());
      complete(key, MintOutcome{false, 502, "mint_failed", "exchange_status"});
      return;
    }
    MintOutcome ok{true, 200, "", ""};
    bool found = false;
    for (const auto& h : r.headers) {
      if (!http::iequals(h.name, "set-cookie")) continue;
      auto sc = parseSetCookie(h.value);
      if (sc && sc->name == config_.cookieName && !sc->value.empty() && validCookieValue(sc->value)) {
        ok.cookieValue = sc->value;
        ok.cookieExpires = sc->expires;
        ok.cookieMaxAge = sc->maxAge;
        found = true;
      }
    }
    if (!found) {
      complete(key, MintOutcome{false, 502, "mint_failed", "no_cookie"});
      return;
    }
    fl.outcome = ok;
    fl.http.reset();
    if (config_.sessionCheckPath.empty())
      complete(key, fl.outcome);
    else
      startSessionCheck(key);
  });
}

void MintService::startSessionCheck(const std::string& key) {
  Flight& f = *flights_[key];
  std::string request = HttpClient::buildRequest(
      "GET", config_.sessionCheckPath, f.target.hostHeader,
      {"Accept: application/json", "Cookie: " + config_.cookieName + "=" + f.outcome.cookieValue}, "");
  askBackend(key, std::move(request), [this, key](HttpClientResult& r) {
    auto it = flights_.find(key);
    if (it == flights_.end()) return;
    if (!r.ok || r.status / 100 != 2) {
      complete(key, MintOutcome{false, 502, "mint_failed", "session_check_failed"});
      return;
    }
    complete(key, it->second->outcome);
  });
}

// One request to the user's backend within what is left of the mint's time.
void MintService::askBackend(const std::string& key, std::string request, HttpClient::Done done) {
  Flight& f = *flights_[key];
  auto remaining =
      config_.timeout - std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - f.started);
  if (remaining.count() <= 0) {
    complete(key, MintOutcome{false, 502, "mint_failed", "timeout"});
    return;
  }
  f.http =
      std::make_unique<HttpClient>(base_, f.target.backend, std::move(request), remaining, std::move(done));
  f.http->start();
}

void MintService::complete(const std::string& key, MintOutcome outcome) {
  auto it = flights_.find(key);
  if (it == flights_.end()) return;
  std::unique_ptr<Flight> f = std::move(it->second);
  flights_.erase(it);
  double ms = std::chrono::duration<double, std::milli>(Clock::now() - f->started).count();
  double commandMs = std::chrono::duration<double, std::milli>(f->commandTime).count();
  metrics_.mintDuration.observe(ms / 1000.0);
  ++metrics_.mints[outcome.ok ? "ok" : outcome.detail];
  spdlog::info(LogLine("mint")
                   .kv("user", f->target.ssoName)
                   .kv("os_user", f->target.osUser)
                   .kv("backend", f->target.backend.str())
                   .kv("result", outcome.ok ? "ok" : outcome.detail)
                   .kv("duration_ms", ms)
                   .kv("command_ms", commandMs)
                   .kv("waiters", f->waiters.size())
                   .str());
  if (outcome.ok) cache_[key] = Cached{outcome, Clock::now()};
  // Children and clients are destroyed after their callbacks returned.
  f->credential.assign(f->credential.size(), '\0');
  auto waiters = std::move(f->waiters);
  for (auto& w : waiters) ticketFlight_.erase(w.ticket);
  // Deferred destruction: we may be inside the child's or client's callback.
  retired_.push_back(std::move(f));
  event_active(immediateEvent_.get(), EV_TIMEOUT, 0);
  for (auto& w : waiters) w.callback(outcome);
}

}  // namespace usher::dispatch
