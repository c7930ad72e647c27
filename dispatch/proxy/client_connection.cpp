#include "dispatch/proxy/client_connection.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "common/logfmt.h"
#include "common/usermap.h"
#include "dispatch/http/headers.h"
#include "dispatch/net/read_more.h"
#include "dispatch/server.h"
#include "dispatch/session/cookies.h"

namespace usher::dispatch {

using std::chrono::milliseconds;
using http::iequals;

namespace {

constexpr milliseconds kLingerTimeout{2000};
constexpr size_t kLingerDiscardMax = 1 << 20;

// Short, human-readable bodies for refusals: the person who sees one should
// know what happened and whom to ask.
std::string_view refusalText(std::string_view reason) {
  if (reason == "untrusted_peer") return "This address only accepts requests that come through the sign-in gateway.";
  if (reason == "missing_identity") return "You are not signed in: the sign-in gateway did not say who you are.";
  if (reason == "repeated_identity") return "The sign-in gateway named more than one user for this request.";
  if (reason == "malformed_identity") return "The signed-in user name is not valid here.";
  if (reason == "unmapped_user")
    return "You are signed in, but no workspace on this host is set up for you. Ask an administrator to add you.";
  if (reason == "no_backend") return "Your workspace is not provisioned yet. Try again in a minute, or ask an administrator.";
  if (reason == "backend_connect_failed") return "Your workspace is not reachable right now. Try again shortly.";
  if (reason == "backend_timeout") return "Your workspace did not answer in time.";
  if (reason == "backend_error") return "Your workspace sent an answer this gateway could not understand.";
  if (reason == "client_timeout") return "The request took too long to arrive.";
  if (reason == "mint_failed") return "Signing you in to your workspace failed. Try again in a moment; if it keeps failing, tell an administrator.";
  if (reason == "mint_rate_limited") return "Too many sign-in attempts for your workspace. Wait a minute and try again.";
  if (reason == "cross_site") return "This request came from another site and was refused to protect your workspace.";
  return "The request could not be understood.";
}

uint64_t nowMs(event_base* base) {
  timeval tv;
  event_base_gettimeofday_cached(base, &tv);
  return static_cast<uint64_t>(tv.tv_sec) * 1000 + static_cast<uint64_t>(tv.tv_usec) / 1000;
}

void appendChunk(evbuffer* out, std::string_view data) {
  if (data.empty()) return;
  char line[24];
  int n = std::snprintf(line, sizeof line, "%zx\r\n", data.size());
  evbuffer_add(out, line, static_cast<size_t>(n));
  evbuffer_add(out, data.data(), data.size());
  evbuffer_add(out, "\r\n", 2);
}

}  // namespace

ClientConnection::ClientConnection(Server& server, evutil_socket_t fd, const net::Address& peer, uint64_t id)
    : server_(server),
      id_(id),
      peer_(peer),
      request_(http::Limits{server.config().maxRequestLine, server.config().maxHeaderBytes,
                            server.config().maxHeaders, server.config().maxChunkLine,
                            server.config().maxBodyBytes}),
      response_(server.config().maxHeaders * 2,
                http::ResponseParser::Callbacks{
                    [this](http::ResponseHead& h) { return onResponseHead(h); },
                    [this](std::string_view d) { onResponseBody(d); },
                    [this]() { onResponseComplete(); },
                }) {
  client_.reset(bufferevent_socket_new(server.base(), fd, BEV_OPT_CLOSE_ON_FREE));
  timer_.reset(evtimer_new(server.base(), onTimer, this));
}

ClientConnection::~ClientConnection() = default;

bool ClientConnection::start() {
  if (!client_ || !timer_) return false;
  int one = 1;
  ::setsockopt(bufferevent_getfd(client_.get()), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  bufferevent_setcb(client_.get(), onClientRead, onClientWrite, onClientEvent, this);
  const auto& cfg = server_.config();
  // Reading stops when this much is buffered and unconsumed (a head being
  // assembled, or pipelined requests waiting their turn).
  bufferevent_setwatermark(client_.get(), EV_READ, 0,
                           std::max<size_t>(cfg.maxHeaderBytes + 1, cfg.bufferHighWatermark));
  bufferevent_setwatermark(client_.get(), EV_WRITE, cfg.bufferHighWatermark / 2, 0);
  // libevent's default is 16 KiB per write; bulk responses want fewer syscalls.
  bufferevent_set_max_single_write(client_.get(), 256 * 1024);
  bufferevent_enable(client_.get(), EV_READ | EV_WRITE);
  armTimer(cfg.clientHeader);
  return true;
}

// ---- trampolines ----------------------------------------------------------

void ClientConnection::onClientRead(bufferevent*, void* arg) { static_cast<ClientConnection*>(arg)->clientRead(); }
void ClientConnection::onClientWrite(bufferevent*, void* arg) { static_cast<ClientConnection*>(arg)->clientWrite(); }
void ClientConnection::onClientEvent(bufferevent*, short what, void* arg) {
  static_cast<ClientConnection*>(arg)->clientEvent(what);
}
void ClientConnection::onUpstreamRead(bufferevent*, void* arg) { static_cast<ClientConnection*>(arg)->upstreamRead(); }
void ClientConnection::onUpstreamWrite(bufferevent*, void* arg) {
  static_cast<ClientConnection*>(arg)->upstreamWrite();
}
void ClientConnection::onUpstreamEvent(bufferevent*, short what, void* arg) {
  static_cast<ClientConnection*>(arg)->upstreamEvent(what);
}
void ClientConnection::onTimer(evutil_socket_t, short, void* arg) { static_cast<ClientConnection*>(arg)->timeout(); }

// ---- timers ---------------------------------------------------------------

// One timer per connection. In the proxying and upgraded phases it is an
// inactivity timer: progress only records a time stamp (touch), and the timer
// re-arms itself for the remainder when it fires, so the hot path never
// touches the timer heap.
void ClientConnection::armTimer(milliseconds ms) {
  timerFor_ = ms;
  lastActivity_ = nowMs(server_.base());
  timeval tv = net::toTimeval(ms);
  evtimer_add(timer_.get(), &tv);
}

void ClientConnection::touch() { lastActivity_ = nowMs(server_.base()); }

bool ClientConnection::blockedOnClient() const {
  return client_ && clientOutputFull();
}

// The inactivity allowed in the current phase, judged when the timer fires.
milliseconds ClientConnection::phaseLimit() const {
  const auto& cfg = server_.config();
  if (state_ == State::Upgraded) return blockedOnClient() ? std::min(cfg.sendTimeout, cfg.upgradedIdle) : cfg.upgradedIdle;
  if (!upstream_ || !upstream_->connected) return cfg.backendConnect;
  if (blockedOnClient()) return cfg.sendTimeout;
  if (!requestDone_) return cfg.clientBody;
  return cfg.backendResponse;
}

void ClientConnection::timeout() {
  if (state_ == State::Proxying || state_ == State::Upgraded) {
    uint64_t idle = nowMs(server_.base()) - lastActivity_;
    milliseconds limit = phaseLimit();
    if (idle < static_cast<uint64_t>(limit.count())) {
      timeval tv = net::toTimeval(milliseconds(limit.count() - static_cast<int64_t>(idle)));
      evtimer_add(timer_.get(), &tv);
      return;
    }
    if (blockedOnClient()) {
      spdlog::info(LogLine("send_timeout").kv("conn", id_).kv("user", sso_).kv("upgraded", state_ == State::Upgraded).str());
      if (status_ == 0) status_ = 499;
      close();
      return;
    }
  }
  switch (state_) {
    case State::ReadingHead:
      if (headStarted_) {
        refuse(408, "client_timeout", "request head not received in time", true);
      } else {
        close();
      }
      return;
    case State::Proxying:
      if (upstream_ && !upstream_->connected) {
        ++server_.metrics().backendConnectErrors;
        failUpstream(504, "backend_timeout", "connect");
      } else if (!requestDone_) {
        if (responseStarted_) abortExchange("client body timeout");
        else refuse(408, "client_timeout", "request body stalled", true);
      } else if (!responseStarted_) {
        failUpstream(504, "backend_timeout", "response");
      } else {
        abortExchange("transfer stalled");
      }
      return;
    case State::Upgraded:
      spdlog::info(LogLine("upgraded_idle").kv("conn", id_).kv("user", sso_).str());
      close();
      return;
    case State::WaitingMint:
      if (mintTicket_) server_.mint()->cancel(mintTicket_);
      mintTicket_ = 0;
      refuse(502, "mint_failed", "timeout", !requestDone_);
      return;
    case State::Lingering:
    case State::Closed:
      close();
      return;
  }
}

// ---- client side ----------------------------------------------------------

void ClientConnection::clientRead() {
  switch (state_) {
    case State::ReadingHead:
      readHeads();
      return;
    case State::Proxying:
      if (!requestDone_) {
        if (!upstreamOutputFull()) net::readMore(client_.get(), server_.config().bufferHighWatermark);
        pumpRequestBody();
      }
      // Otherwise bytes of a pipelined request wait in the buffer (bounded by
      // the read watermark) until this exchange is over.
      return;
    case State::Upgraded:
      touch();
      if (!upstreamOutputFull()) net::readMore(client_.get(), server_.config().bufferHighWatermark);
      pumpUpgraded();
      return;
    case State::WaitingMint:
      // The body waits in the buffer (bounded by the read watermark) until
      // the session is there; nothing goes to the backend before.
      return;
    case State::Lingering: {
      evbuffer* in = bufferevent_get_input(client_.get());
      lingerDiscarded_ += evbuffer_get_length(in);
      evbuffer_drain(in, evbuffer_get_length(in));
      if (lingerDiscarded_ > kLingerDiscardMax) close();
      return;
    }
    case State::Closed:
      return;
  }
}

void ClientConnection::clientWrite() {
  evbuffer* out = bufferevent_get_output(client_.get());
  switch (state_) {
    case State::Proxying:
      touch();
      if (upstream_ && !clientOutputFull()) {
        if (!upstreamEof_) bufferevent_enable(upstream_->bev.get(), EV_READ);
        // Bytes read before we paused are not announced again by libevent.
        if (evbuffer_get_length(bufferevent_get_input(upstream_->bev.get())) > 0 || upstreamEof_) upstreamRead();
      }
      return;
    case State::Upgraded:
      touch();
      if (upstream_ && !upstreamEof_) bufferevent_enable(upstream_->bev.get(), EV_READ);
      pumpUpgraded();
      if (state_ == State::Upgraded && upstreamEof_ && evbuffer_get_length(out) == 0) {
        ::shutdown(bufferevent_getfd(client_.get()), SHUT_WR);
        maybeFinishUpgraded();
      }
      return;
    case State::Lingering:
      if (evbuffer_get_length(out) == 0 && !lingerWanted_) {
        close();
        return;
      }
      if (evbuffer_get_length(out) == 0 && !lingerShut_) {
        // Half-close, then keep reading (and discarding) for a moment, so that
        // unread request bytes do not turn our answer into a TCP reset.
        ::shutdown(bufferevent_getfd(client_.get()), SHUT_WR);
        lingerShut_ = true;
        armTimer(kLingerTimeout);
      }
      return;
    default:
      return;
  }
}

void ClientConnection::clientEvent(short what) {
  bool eof = (what & BEV_EVENT_EOF) != 0;
  switch (state_) {
    case State::ReadingHead:
    case State::Lingering:
      close();
      return;
    case State::WaitingMint:
      if (status_ == 0) status_ = 499;
      close();
      return;
    case State::Proxying:
      // nginx logs this as 499: the client went away before its answer.
      if (status_ == 0) status_ = 499;
      abortExchange(eof ? "client closed" : "client connection error");
      return;
    case State::Upgraded:
      if (!eof) {
        close();
        return;
      }
      clientEof_ = true;
      bufferevent_disable(client_.get(), EV_READ);
      pumpUpgraded();
      if (state_ == State::Upgraded && upstream_ &&
          evbuffer_get_length(bufferevent_get_output(upstream_->bev.get())) == 0) {
        ::shutdown(bufferevent_getfd(upstream_->bev.get()), SHUT_WR);
      }
      maybeFinishUpgraded();
      return;
    case State::Closed:
      return;
  }
}

void ClientConnection::readHeads() {
  const auto& cfg = server_.config();
  while (state_ == State::ReadingHead) {
    evbuffer* in = bufferevent_get_input(client_.get());
    size_t len = evbuffer_get_length(in);
    if (len == 0) return;
    if (!headStarted_) {
      headStarted_ = true;
      started_ = std::chrono::steady_clock::now();
      method_.clear();
      target_.clear();
      backendKey_.clear();
      armTimer(cfg.clientHeader);
    }
    size_t want = std::min<size_t>(len, cfg.maxHeaderBytes + 1);
    const char* p = reinterpret_cast<const char*>(evbuffer_pullup(in, static_cast<ev_ssize_t>(want)));
    auto status = request_.parseHead(std::string_view(p, want));
    if (status == http::RequestParser::Status::Incomplete) return;
    if (status == http::RequestParser::Status::Error) {
      refuse(request_.error().status, "bad_request", request_.error().reason, true);
      return;
    }
    bytesIn_ = request_.headBytes();
    evbuffer_drain(in, request_.headBytes());
    handleRequest();
  }
}

void ClientConnection::handleRequest() {
  auto& h = request_.head();
  method_ = h.method;
  target_ = h.target;
  status_ = 0;
  bytesOut_ = 0;
  retried_ = false;
  responseStarted_ = responseDone_ = responseBytesSeen_ = upgradeReady_ = false;
  upstreamEof_ = clientEof_ = false;
  chunkedToClient_ = closeDelimited_ = false;
  requestDone_ = h.framing == http::Framing::None ||
                 (h.framing == http::Framing::Length && h.contentLength == 0);
  requestBodyRemaining_ = h.framing == http::Framing::Length ? h.contentLength : 0;
  // HTTP/1.0 clients get one request per connection: simpler and safe.
  clientKeepAlive_ = h.keepAlive && h.versionMinor == 1 && !closeWhenDone_ && !server_.draining();
  expectUpgrade_ = h.upgrade;

  sessionBound_ = injected_ = remintTried_ = remintPending_ = resignBind_ = clearBind_ = false;
  browserAppCookie_.clear();
  if (!routeRequest()) return;
  if (minting_) {
    if (!originAllowed()) return;
    if (!sessionReady()) return;  // a mint is under way; onMintDone continues
  }
  proceedUpstream();
}

void ClientConnection::proceedUpstream() {
  // Per attempt (a re-mint sends the request again).
  responseBytesSeen_ = upgradeReady_ = upstreamEof_ = false;
  status_ = 0;
  state_ = State::Proxying;
  upstreamHead_ = buildUpstreamHead(backendKey_);
  if (!startUpstream(true)) return;
  pumpRequestBody();
}

// Cross-site requests must not ride an injected session (DESIGN.md, security
// model): WebSocket upgrades and state-changing methods are checked against
// the public origin(s) on Origin, else Sec-Fetch-Site. Clients that send
// neither (curl, scripts) are not browsers and carry no ambient cookies.
bool ClientConnection::originAllowed() {
  const auto& h = request_.head();
  auto m = h.methodCode;
  bool unsafe = h.upgrade || m == HTTP_POST || m == HTTP_PUT || m == HTTP_PATCH || m == HTTP_DELETE;
  if (!unsafe) return true;
  auto lower = [](std::string s) {
    for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
  };
  auto normalize = [&](std::string o) {
    o = lower(std::move(o));
    if (o.size() > 3 && o.rfind("http://", 0) == 0 && o.compare(o.size() - 3, 3, ":80") == 0) o.resize(o.size() - 3);
    if (o.size() > 4 && o.rfind("https://", 0) == 0 && o.compare(o.size() - 4, 4, ":443") == 0) o.resize(o.size() - 4);
    return o;
  };
  const http::Header* origin = h.find("origin");
  if (origin) {
    std::string o = normalize(origin->value);
    const auto& allowed = server_.config().mint.publicOrigins;
    bool ok = false;
    if (!allowed.empty()) {
      for (const auto& a : allowed)
        if (normalize(a) == o) ok = true;
    } else {
      const http::Header* proto = h.find("x-forwarded-proto");
      const http::Header* host = h.find("x-forwarded-host");
      if (!host) host = h.find("host");
      std::string scheme = proto && (proto->value == "https" || proto->value == "http") ? proto->value : "http";
      ok = host && normalize(scheme + "://" + host->value) == o;
    }
    if (!ok) {
      refuse(403, "cross_site", std::string("Origin ") + origin->value.substr(0, 128), !requestDone_);
      return false;
    }
    return true;
  }
  const http::Header* site = h.find("sec-fetch-site");
  if (site && !iequals(site->value, "same-origin") && !iequals(site->value, "none")) {
    refuse(403, "cross_site", "Sec-Fetch-Site " + site->value.substr(0, 32), !requestDone_);
    return false;
  }
  return true;
}

// Does this request carry a session bound to the identity it asserts? If
// not, a mint starts (or is joined) and false is returned.
bool ClientConnection::sessionReady() {
  const auto& m = server_.config().mint;
  std::string bindToken;
  std::string appCookie;
  for (const auto& hdr : request_.head().headers) {
    if (!iequals(hdr.name, "cookie")) continue;
    for (const auto& c : parseCookies(hdr.value)) {
      // The first of duplicates (browsers send the most specific first).
      if (c.name == m.bindCookieName && bindToken.empty()) bindToken = std::string(c.value);
      else if (c.name == m.cookieName && appCookie.empty()) appCookie = std::string(c.value);
    }
  }
  auto& checks = server_.metrics().bindChecks;
  if (!bindToken.empty()) {
    timeval tv;
    event_base_gettimeofday_cached(server_.base(), &tv);
    auto verdict = server_.bindKeys()->verify(bindToken, sso_, osUser_, backendKey_, tv.tv_sec,
                                              m.bindMaxAge.count() / 1000);
    switch (verdict) {
      case BindKeys::Verdict::Valid: ++checks["valid"]; break;
      case BindKeys::Verdict::ValidPrevious: ++checks["previous_key"]; break;
      case BindKeys::Verdict::Expired: ++checks["expired"]; break;
      case BindKeys::Verdict::Invalid: ++checks["invalid"]; break;
    }
    bool good = verdict == BindKeys::Verdict::Valid || verdict == BindKeys::Verdict::ValidPrevious;
    if (good && !appCookie.empty() && validCookieValue(appCookie)) {
      sessionBound_ = true;
      resignBind_ = verdict == BindKeys::Verdict::ValidPrevious;
      browserAppCookie_ = appCookie;
      return true;
    }
  } else {
    ++checks["absent"];
  }
  startMint("");
  return false;
}

void ClientConnection::startMint(const std::string& failedCookie) {
  state_ = State::WaitingMint;
  MintTarget target;
  target.ssoName = sso_;
  target.osUser = osUser_;
  target.backend = backendAddr_;
  target.hostHeader = backendKey_;
  if (!vmProfile_.empty()) {
    const auto& profiles = server_.config().vm;
    auto p = profiles.find(vmProfile_);
    if (p == profiles.end()) {  // gone with a config reload since the request was routed
      refuse(502, "mint_failed", "no_vm_profile", !requestDone_);
      return;
    }
    target.command = {p->second.provider, "mint"};
    target.input = providerRequest("mint", osUser_, p->second).dump() + "\n";
  } else {
    for (const auto& a : server_.config().mint.command) {
      if (a.find("{home}") != std::string::npos) {
        auto info = systemOsUserLookup()(osUser_);
        if (info) target.home = info->home;
        break;
      }
    }
  }
  // Past the mint's own deadline something is wrong; do not wait forever.
  armTimer(server_.config().mint.timeout + milliseconds(5000));
  mintTicket_ = server_.mint()->acquire(target, failedCookie, [this](const MintOutcome& o) { onMintDone(o); });
}

void ClientConnection::onMintDone(const MintOutcome& outcome) {
  mintTicket_ = 0;
  if (state_ != State::WaitingMint) return;
  if (!outcome.ok) {
    refuse(outcome.status, outcome.reason, outcome.detail, !requestDone_);
    return;
  }
  minted_ = outcome;
  injected_ = true;
  sessionBound_ = false;
  proceedUpstream();
}

// Trust, identity, map, state: each refusal has its status and audit reason.
bool ClientConnection::routeRequest() {
  const auto& cfg = server_.config();
  auto& h = request_.head();
  bool body = !requestDone_;
  if (!cfg.trustedProxies.contains(peer_.sa())) {
    refuse(403, "untrusted_peer", "", true);
    return false;
  }
  const http::Header* identity = nullptr;
  size_t count = 0;
  for (const auto& hdr : h.headers) {
    if (iequals(hdr.name, cfg.identityHeader)) {
      identity = &hdr;
      ++count;
    }
  }
  if (count == 0) {
    refuse(401, "missing_identity", "", body);
    return false;
  }
  if (count > 1) {
    refuse(400, "repeated_identity", "", body);
    return false;
  }
  if (!validSsoName(identity->value)) {
    refuse(400, "malformed_identity", identity->value.substr(0, 64), body);
    return false;
  }
  std::string sso = identity->value;
  Route route = server_.directory().resolve(sso);
  if (route.result == Route::Result::Unmapped) {
    sso_ = sso;
    refuse(403, "unmapped_user", "", body);
    return false;
  }
  sso_ = sso;
  osUser_ = route.entry->osUser;
  if (route.result == Route::Result::NoBackend) {
    refuse(503, "no_backend", "", body);
    return false;
  }
  auto addr = net::makeAddress(route.backend->address, route.backend->port);
  if (!addr) {
    refuse(503, "no_backend", "unusable backend address", body);
    return false;
  }
  backendAddr_ = *addr;
  backendKey_ = addr->str();
  // A VM's app is signed in to through its profile: the provider's `mint`
  // verb, or not at all (mint = none). The profile is the one the VM was
  // made with (state file), else the map's.
  minting_ = server_.mint() != nullptr;
  vmProfile_.clear();
  if (route.backend->kind == BackendKind::Vm) {
    std::string name = recordedVmProfile(route.backend->vm, route.entry->vmProfile);
    auto p = cfg.vm.find(name);
    if (p == cfg.vm.end()) {
      if (minting_) {
        refuse(502, "mint_failed", "no_vm_profile", body);
        return false;
      }
    } else if (p->second.mint == VmProfile::Mint::None) {
      minting_ = false;
    } else {
      vmProfile_ = std::move(name);  // looked up again when a mint starts: a reload may replace it
    }
  }
  return true;
}

// The request as the backend sees it: same method, target and end-to-end
// headers; our own framing; no hop-by-hop fields; no identity header in any
// spelling; X-Forwarded-* set by us.
std::string ClientConnection::buildUpstreamHead(const std::string& backendKey) {
  const auto& cfg = server_.config();
  const auto& h = request_.head();
  std::vector<std::string_view> connValues;
  for (const auto& hdr : h.headers)
    if (iequals(hdr.name, "connection")) connValues.push_back(hdr.value);
  auto dropped = http::connectionTokens(connValues);

  std::string out;
  out.reserve(512 + request_.headBytes());
  out.append(h.method).append(" ").append(h.target).append(" HTTP/1.1\r\n");
  std::string xff;
  std::string xfProto;
  std::string xfHost;
  const std::string* host = nullptr;
  for (const auto& hdr : h.headers) {
    const std::string& n = hdr.name;
    if (http::isHopByHop(n) || iequals(n, "content-length")) continue;
    if (http::sameNameLoosely(n, cfg.identityHeader)) continue;
    if (!cfg.forwardUserHeader.empty() && http::sameNameLoosely(n, cfg.forwardUserHeader)) continue;
    bool named = false;
    for (const auto& t : dropped)
      if (iequals(n, t)) named = true;
    if (named) continue;
    // Set below; from a trusted proxy we extend what it sent.
    if (iequals(n, "x-forwarded-for")) {
      if (!xff.empty()) xff += ", ";
      xff += hdr.value;
      continue;
    }
    if (iequals(n, "x-forwarded-proto")) {
      if (xfProto.empty()) xfProto = hdr.value;
      continue;
    }
    if (iequals(n, "x-forwarded-host")) {
      if (xfHost.empty()) xfHost = hdr.value;
      continue;
    }
    if (iequals(n, "cookie")) continue;  // rebuilt below without Usher's own cookies
    if (iequals(n, "host")) host = &hdr.value;
    out.append(n).append(": ").append(hdr.value).append("\r\n");
  }
  appendCookieHeader(out);
  if (h.framing == http::Framing::Length) {
    out.append("Content-Length: ").append(std::to_string(h.contentLength)).append("\r\n");
  } else if (h.framing == http::Framing::Chunked) {
    out.append("Transfer-Encoding: chunked\r\n");
  }
  if (expectUpgrade_) {
    const http::Header* up = h.find("upgrade");
    out.append("Connection: upgrade\r\nUpgrade: ").append(up ? up->value : "websocket").append("\r\n");
  }
  if (!xff.empty()) xff += ", ";
  xff += peer_.ip();
  out.append("X-Forwarded-For: ").append(xff).append("\r\n");
  if (xfProto != "http" && xfProto != "https") xfProto = "http";
  out.append("X-Forwarded-Proto: ").append(xfProto).append("\r\n");
  // We speak HTTP/1.1 to backends, which requires a Host (an HTTP/1.0
  // client may have sent none).
  if (!host) out.append("Host: ").append(backendKey).append("\r\n");
  if (xfHost.empty() && host) xfHost = *host;
  if (!xfHost.empty()) out.append("X-Forwarded-Host: ").append(xfHost).append("\r\n");
  if (!cfg.forwardUserHeader.empty()) out.append(cfg.forwardUserHeader).append(": ").append(sso_).append("\r\n");
  out.append("\r\n");
  return out;
}

bool ClientConnection::strippedCookie(std::string_view name) const {
  for (const auto& pattern : server_.config().stripCookies) {
    std::string_view p = pattern;
    if (!p.empty() && p.back() == '*') {
      if (name.substr(0, p.size() - 1) == p.substr(0, p.size() - 1)) return true;
    } else if (name == p) {
      return true;
    }
  }
  return false;
}

// One Cookie header for the backend: never Usher's bind cookie; the app's
// session cookie only when it is bound to this identity, or the one just
// minted for it.
void ClientConnection::appendCookieHeader(std::string& out) {
  const auto& m = server_.config().mint;
  bool minting = minting_;
  std::string cookies;
  bool appSent = false;
  for (const auto& hdr : request_.head().headers) {
    if (!iequals(hdr.name, "cookie")) continue;
    for (const auto& c : parseCookies(hdr.value)) {
      if (c.name == m.bindCookieName || strippedCookie(c.name)) continue;
      if (minting && c.name == m.cookieName) {
        // Only the copy the bind cookie vouched for (the first), never stale
        // duplicates, and none when a fresh one is injected.
        if (injected_ || !sessionBound_ || appSent || c.value != browserAppCookie_) continue;
        appSent = true;
      }
      if (!cookies.empty()) cookies.append("; ");
      if (!c.name.empty()) cookies.append(c.name).append("=");
      cookies.append(c.value);
    }
  }
  if (injected_) {
    if (!cookies.empty()) cookies.append("; ");
    cookies.append(m.cookieName).append("=").append(minted_.cookieValue);
  }
  if (!cookies.empty()) out.append("Cookie: ").append(cookies).append("\r\n");
}

// Set-Cookie lines for the browser: the minted app cookie with normalised
// attributes and a fresh bind cookie; or a re-signed bind cookie after key
// rotation; or the bind cookie's removal.
void ClientConnection::appendSessionCookies(std::string& head) {
  if (!minting_) return;
  const auto& m = server_.config().mint;
  timeval tv;
  event_base_gettimeofday_cached(server_.base(), &tv);
  if (injected_) {
    head.append("Set-Cookie: ")
        .append(formatSetCookie(m.cookieName, minted_.cookieValue, minted_.cookieExpires, minted_.cookieMaxAge,
                                m.secureCookies))
        .append("\r\n");
  }
  if (injected_ || resignBind_) {
    std::string token = server_.bindKeys()->sign(sso_, osUser_, backendKey_, tv.tv_sec);
    head.append("Set-Cookie: ")
        .append(formatSetCookie(m.bindCookieName, token, "", std::to_string(m.bindMaxAge.count() / 1000),
                                m.secureCookies))
        .append("\r\n");
  } else if (clearBind_) {
    head.append("Set-Cookie: ").append(formatDeleteCookie(m.bindCookieName, m.secureCookies)).append("\r\n");
  }
}

bool ClientConnection::startUpstream(bool allowPooled) {
  const auto& cfg = server_.config();
  auto& metrics = server_.metrics();
  UpstreamPtr conn = allowPooled ? server_.pool().acquire(backendKey_) : nullptr;
  if (conn) {
    conn->connected = true;
    ++metrics.upstreamReused;
  } else {
    conn = server_.pool().connect(backendAddr_, backendKey_);
    if (!conn) {
      ++metrics.backendConnectErrors;
      failUpstream(502, "backend_connect_failed", std::strerror(errno));
      return false;
    }
    ++metrics.upstreamNew;
  }
  upstream_ = std::move(conn);
  ++upstream_->requests;
  bufferevent* up = upstream_->bev.get();
  bufferevent_setcb(up, onUpstreamRead, onUpstreamWrite, onUpstreamEvent, this);
  bufferevent_setwatermark(up, EV_WRITE, cfg.bufferHighWatermark / 2, 0);
  bufferevent_setwatermark(up, EV_READ, 0, 0);
  bufferevent_set_max_single_write(up, 256 * 1024);
  bufferevent_enable(up, EV_READ | EV_WRITE);
  response_.reset(request_.head().methodCode == HTTP_HEAD);
  evbuffer_add(bufferevent_get_output(up), upstreamHead_.data(), upstreamHead_.size());
  armTimer(!upstream_->connected ? cfg.backendConnect : requestDone_ ? cfg.backendResponse : cfg.clientBody);
  return true;
}

bool ClientConnection::clientOutputFull() const {
  return evbuffer_get_length(bufferevent_get_output(client_.get())) >= server_.config().bufferHighWatermark;
}

bool ClientConnection::upstreamOutputFull() const {
  return upstream_ &&
         evbuffer_get_length(bufferevent_get_output(upstream_->bev.get())) >= server_.config().bufferHighWatermark;
}

// Streams the request body to the backend as it arrives, never holding more
// than the high watermark: past it, reading from the client stops until the
// backend has taken the excess (upstreamWrite re-enables it).
void ClientConnection::pumpRequestBody() {
  if (requestDone_ || !upstream_ || state_ != State::Proxying) return;
  evbuffer* in = bufferevent_get_input(client_.get());
  evbuffer* out = bufferevent_get_output(upstream_->bev.get());
  auto& h = request_.head();
  while (!requestDone_ && evbuffer_get_length(in) > 0) {
    if (upstreamOutputFull()) {
      bufferevent_disable(client_.get(), EV_READ);
      return;
    }
    touch();
    if (h.framing == http::Framing::Length) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(evbuffer_get_length(in), requestBodyRemaining_));
      evbuffer_remove_buffer(in, out, n);
      requestBodyRemaining_ -= n;
      bytesIn_ += n;
      if (requestBodyRemaining_ == 0) requestDone_ = true;
      continue;
    }
    evbuffer_iovec v;
    if (evbuffer_peek(in, -1, nullptr, &v, 1) < 1) break;
    auto r = request_.feedBody(std::string_view(static_cast<const char*>(v.iov_base), v.iov_len),
                               [out](std::string_view d) { appendChunk(out, d); });
    if (r.error) {
      const auto& e = request_.error();
      if (responseStarted_) {
        abortExchange(e.reason);
      } else {
        releaseUpstream(false);
        refuse(e.status, "bad_request", e.reason, true);
      }
      return;
    }
    evbuffer_drain(in, r.consumed);
    bytesIn_ += r.consumed;
    if (r.complete) {
      requestDone_ = true;
      evbuffer_add(out, "0\r\n\r\n", 5);
    } else if (r.consumed == 0) {
      break;
    }
  }
  if (requestDone_ && upstream_->connected && !responseStarted_) armTimer(server_.config().backendResponse);
  bufferevent_enable(client_.get(), EV_READ);
}

// ---- upstream side --------------------------------------------------------

void ClientConnection::upstreamWrite() {
  if (state_ == State::Proxying) {
    touch();
    if (!requestDone_) {
      bufferevent_enable(client_.get(), EV_READ);
      pumpRequestBody();
    }
  } else if (state_ == State::Upgraded) {
    touch();
    if (!clientEof_) bufferevent_enable(client_.get(), EV_READ);
    pumpUpgraded();
    if (state_ == State::Upgraded && clientEof_ && upstream_ &&
        evbuffer_get_length(bufferevent_get_output(upstream_->bev.get())) == 0) {
      ::shutdown(bufferevent_getfd(upstream_->bev.get()), SHUT_WR);
      maybeFinishUpgraded();
    }
  }
}

void ClientConnection::upstreamEvent(short what) {
  if (what & BEV_EVENT_CONNECTED) {
    upstream_->connected = true;
    if (state_ == State::Proxying)
      armTimer(requestDone_ ? server_.config().backendResponse : server_.config().clientBody);
    return;
  }
  bool eof = (what & BEV_EVENT_EOF) != 0;
  int err = EVUTIL_SOCKET_ERROR();
  if (state_ == State::Upgraded) {
    if (!eof) {
      close();
      return;
    }
    upstreamEof_ = true;
    bufferevent_disable(upstream_->bev.get(), EV_READ);
    pumpUpgraded();
    if (state_ == State::Upgraded && evbuffer_get_length(bufferevent_get_output(client_.get())) == 0) {
      ::shutdown(bufferevent_getfd(client_.get()), SHUT_WR);
    }
    maybeFinishUpgraded();
    return;
  }
  if (state_ != State::Proxying || !upstream_) return;
  if (!upstream_->connected) {
    ++server_.metrics().backendConnectErrors;
    failUpstream(502, "backend_connect_failed", evutil_socket_error_to_string(err));
    return;
  }
  // A pooled connection the backend closed while we were reusing it: nothing
  // of ours was processed, so a request without a body is safe to send again.
  if (upstream_->reused && !responseBytesSeen_ && !retried_ &&
      request_.head().framing == http::Framing::None) {
    retried_ = true;
    upstreamEof_ = false;
    ++server_.metrics().upstreamRetries;
    releaseUpstream(false);
    startUpstream(false);
    return;
  }
  if (eof && responseBytesSeen_) {
    // Process what is still buffered first (it may be waiting for the client
    // to drain); upstreamRead sees the end of the stream once it is empty.
    upstreamEof_ = true;
    upstreamRead();
    return;
  }
  upstreamFailed(eof, err);
}

void ClientConnection::upstreamFailed(bool eof, int err) {
  if (!responseStarted_) {
    failUpstream(502, "backend_error", eof ? "backend closed the connection before answering"
                                           : evutil_socket_error_to_string(err));
  } else {
    abortExchange("backend closed mid-response");
  }
}

void ClientConnection::upstreamRead() {
  if (!upstream_) return;
  size_t hw = server_.config().bufferHighWatermark;
  if (state_ == State::Upgraded) {
    touch();
    if (!clientOutputFull()) net::readMore(upstream_->bev.get(), hw);
    pumpUpgraded();
    return;
  }
  if (state_ != State::Proxying) return;
  touch();
  if (!clientOutputFull() && !upstreamEof_) net::readMore(upstream_->bev.get(), hw);
  evbuffer* in = bufferevent_get_input(upstream_->bev.get());
  while (state_ == State::Proxying && !responseDone_ && evbuffer_get_length(in) > 0) {
    if (clientOutputFull()) {
      bufferevent_disable(upstream_->bev.get(), EV_READ);
      armTimer(phaseLimit());
      return;
    }
    responseBytesSeen_ = true;
    evbuffer_iovec v;
    if (evbuffer_peek(in, -1, nullptr, &v, 1) < 1) break;
    size_t n = response_.feed(std::string_view(static_cast<const char*>(v.iov_base), v.iov_len));
    if (state_ != State::Proxying) return;  // a callback closed us
    if (response_.failed()) {
      failUpstream(502, "backend_error", response_.error());
      return;
    }
    evbuffer_drain(in, n);
    if (remintPending_) {
      // Drop this backend connection (its 401 is unread) and ask for a new
      // session; the request goes out again once it is there.
      remintPending_ = false;
      remintTried_ = true;
      std::string failed = injected_ ? minted_.cookieValue : browserAppCookie_;
      releaseUpstream(false);
      spdlog::info(LogLine("remint").kv("conn", id_).kv("user", sso_).kv("os_user", osUser_).str());
      startMint(failed);
      return;
    }
    if (upgradeReady_) {
      becomeUpgraded();
      return;
    }
    if (n == 0) break;
  }
  if (state_ != State::Proxying) return;
  if (!responseDone_ && upstreamEof_ && evbuffer_get_length(in) == 0) {
    // The backend closed: that ends a body delimited by closing; anything
    // else is a truncated response.
    response_.feedEof();
    if (!responseDone_) {
      upstreamFailed(true, 0);
      return;
    }
  }
  if (responseDone_) finishExchange();
}

bool ClientConnection::onResponseHead(http::ResponseHead& rh) {
  evbuffer* out = bufferevent_get_output(client_.get());
  if (rh.status / 100 == 1 && rh.status != 101) {
    // Interim (100 Continue, 103 Early Hints): relayed to HTTP/1.1 clients.
    // Its fields matter (103's Link is the point of Early Hints); hop-by-hop
    // ones still stay behind.
    if (request_.head().versionMinor == 1) {
      std::string line = fmt::format("HTTP/1.1 {} {}\r\n", rh.status, http::reasonPhrase(rh.status));
      for (const auto& hdr : rh.headers)
        if (!http::isHopByHop(hdr.name) && !iequals(hdr.name, "content-length"))
          line.append(hdr.name).append(": ").append(hdr.value).append("\r\n");
      line.append("\r\n");
      evbuffer_add(out, line.data(), line.size());
    }
    return true;
  }
  if (rh.status == 101 && !expectUpgrade_) return false;  // never switch unasked
  if (rh.status == 401 && (injected_ || sessionBound_)) {
    // The app refused a session Usher vouched for (expired, revoked). A
    // request without a body can be replayed: mint again and retry, once.
    if (request_.head().framing == http::Framing::None && !remintTried_) {
      remintPending_ = true;
      return true;
    }
    server_.mint()->forget(osUser_, backendAddr_, injected_ ? minted_.cookieValue : browserAppCookie_);
    clearBind_ = true;
    injected_ = false;
    resignBind_ = false;
  }
  status_ = rh.status;
  responseStarted_ = true;
  upstreamHead_.clear();
  if (!requestDone_) clientKeepAlive_ = false;  // answered before the body ended
  if (closeWhenDone_ || server_.draining()) clientKeepAlive_ = false;

  std::vector<std::string_view> connValues;
  for (const auto& hdr : rh.headers)
    if (iequals(hdr.name, "connection")) connValues.push_back(hdr.value);
  auto dropped = http::connectionTokens(connValues);

  std::string head;
  head.reserve(256);
  std::string_view reason = rh.reason;
  if (reason.empty()) reason = http::reasonPhrase(rh.status);
  head.append(fmt::format("HTTP/1.1 {} ", rh.status)).append(reason).append("\r\n");
  bool bodyless = rh.framing == http::ResponseFraming::None;
  // A response carrying a session cookie must never sit in a shared cache
  // (an edge CDN would hand one person's session to the next).
  bool settingCookies = minting_ && (injected_ || resignBind_ || clearBind_);
  if (settingCookies) head.append("Cache-Control: private, no-store\r\n");
  for (const auto& hdr : rh.headers) {
    const std::string& n = hdr.name;
    if (http::isHopByHop(n)) continue;
    if (settingCookies && iequals(n, "cache-control")) continue;
    if (iequals(n, "content-length")) {
      // Metadata only for HEAD and 304; never for 1xx and 204 (RFC 9110 §8.6).
      if (bodyless && rh.status != 204 && rh.status / 100 != 1) head.append("Content-Length: ").append(hdr.value).append("\r\n");
      continue;
    }
    bool named = false;
    for (const auto& t : dropped)
      if (iequals(n, t)) named = true;
    if (named) continue;
    head.append(n).append(": ").append(hdr.value).append("\r\n");
  }
  if (rh.upgrade) {
    const http::Header* up = nullptr;
    for (const auto& hdr : rh.headers)
      if (iequals(hdr.name, "upgrade")) up = &hdr;
    head.append("Connection: upgrade\r\nUpgrade: ").append(up ? up->value : "websocket").append("\r\n");
    appendSessionCookies(head);
    head.append("\r\n");
    evbuffer_add(out, head.data(), head.size());
    return true;
  }
  switch (rh.framing) {
    case http::ResponseFraming::Length:
      head.append("Content-Length: ").append(std::to_string(rh.contentLength)).append("\r\n");
      break;
    case http::ResponseFraming::Chunked:
    case http::ResponseFraming::UntilClose:
      if (request_.head().versionMinor == 1) {
        head.append("Transfer-Encoding: chunked\r\n");
        chunkedToClient_ = true;
      } else {
        closeDelimited_ = true;
        clientKeepAlive_ = false;
      }
      break;
    case http::ResponseFraming::None:
      break;
  }
  if (!clientKeepAlive_) head.append("Connection: close\r\n");
  appendSessionCookies(head);
  head.append("\r\n");
  evbuffer_add(out, head.data(), head.size());
  return true;
}

void ClientConnection::onResponseBody(std::string_view data) {
  if (remintPending_) return;  // the swallowed 401's body
  evbuffer* out = bufferevent_get_output(client_.get());
  bytesOut_ += data.size();
  if (chunkedToClient_) appendChunk(out, data);
  else evbuffer_add(out, data.data(), data.size());
}

void ClientConnection::onResponseComplete() {
  if (remintPending_) return;
  const auto& rh = response_.head();
  if (rh.status / 100 == 1 && rh.status != 101) {
    response_.reset(request_.head().methodCode == HTTP_HEAD);
    return;
  }
  if (rh.status == 101) {
    upgradeReady_ = true;
    return;
  }
  responseDone_ = true;
  if (chunkedToClient_) evbuffer_add(bufferevent_get_output(client_.get()), "0\r\n\r\n", 5);
}

void ClientConnection::finishExchange() {
  evbuffer* leftover = upstream_ ? bufferevent_get_input(upstream_->bev.get()) : nullptr;
  bool reusable = response_.head().keepAlive && requestDone_ && leftover && evbuffer_get_length(leftover) == 0;
  releaseUpstream(reusable);
  server_.metrics().countStatus(status_);
  logAccess();
  sso_.clear();
  osUser_.clear();
  if (!requestDone_ || !clientKeepAlive_ || closeDelimited_ || closeWhenDone_) {
    closeAfterFlush();
    return;
  }
  state_ = State::ReadingHead;
  headStarted_ = false;
  request_.reset();
  bufferevent_enable(client_.get(), EV_READ);
  armTimer(server_.config().keepaliveIdle);
  readHeads();
}

void ClientConnection::releaseUpstream(bool reusable) {
  if (!upstream_) return;
  if (reusable) {
    server_.pool().release(std::move(upstream_));
  } else {
    upstream_.reset();
  }
}

// ---- upgraded splice ------------------------------------------------------

void ClientConnection::becomeUpgraded() {
  state_ = State::Upgraded;
  status_ = 101;
  ++server_.metrics().websocketsActive;
  ++server_.metrics().upgradesTotal;
  server_.metrics().countStatus(101);
  const auto& cfg = server_.config();
  // Both directions are plain byte streams now; watermarks bound what we hold.
  bufferevent_setwatermark(client_.get(), EV_READ, 0, 0);
  bufferevent_enable(client_.get(), EV_READ);
  bufferevent_enable(upstream_->bev.get(), EV_READ);
  armTimer(cfg.upgradedIdle);
  pumpUpgraded();
}

void ClientConnection::pumpUpgraded() {
  if (state_ != State::Upgraded || !upstream_) return;
  evbuffer* clientIn = bufferevent_get_input(client_.get());
  evbuffer* clientOut = bufferevent_get_output(client_.get());
  evbuffer* upIn = bufferevent_get_input(upstream_->bev.get());
  evbuffer* upOut = bufferevent_get_output(upstream_->bev.get());
  if (evbuffer_get_length(upIn) > 0) {
    bytesOut_ += evbuffer_get_length(upIn);
    evbuffer_add_buffer(clientOut, upIn);
  }
  if (evbuffer_get_length(clientIn) > 0) {
    bytesIn_ += evbuffer_get_length(clientIn);
    evbuffer_add_buffer(upOut, clientIn);
  }
  if (clientOutputFull()) {
    bufferevent_disable(upstream_->bev.get(), EV_READ);
    armTimer(phaseLimit());
  }
  if (upstreamOutputFull()) bufferevent_disable(client_.get(), EV_READ);
}

void ClientConnection::maybeFinishUpgraded() {
  if (state_ != State::Upgraded) return;
  if (clientEof_ && upstreamEof_ && evbuffer_get_length(bufferevent_get_output(client_.get())) == 0 &&
      evbuffer_get_length(bufferevent_get_output(upstream_->bev.get())) == 0) {
    close();
  }
}

// ---- refusals, failures, endings -----------------------------------------

void ClientConnection::refuse(int status, std::string_view reason, std::string_view detail, bool closeAfter) {
  if (state_ == State::Closed || state_ == State::Lingering) return;
  auto& metrics = server_.metrics();
  ++metrics.refusals[std::string(reason)];
  LogLine audit("audit");
  audit.kv("reason", reason).kv("status", status).kv("client", peer_.str()).kv("conn", id_);
  if (!sso_.empty()) audit.kv("user", sso_);
  if (!osUser_.empty()) audit.kv("os_user", osUser_);
  if (!method_.empty()) audit.kv("method", method_).kv("target", std::string_view(target_).substr(0, 512));
  if (!detail.empty()) audit.kv("detail", detail);
  spdlog::warn(audit.str());

  std::string contentType;
  std::string body = refusalBody(status, reason, detail, contentType);
  bool close = closeAfter || !clientKeepAlive_ || !requestDone_;
  std::string head = fmt::format(
      "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n"
      "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n{}",
      status, http::reasonPhrase(status), contentType, body.size(), close ? "Connection: close\r\n" : "");
  head.append("\r\n");
  evbuffer* out = bufferevent_get_output(client_.get());
  evbuffer_add(out, head.data(), head.size());
  if (request_.head().methodCode != HTTP_HEAD || method_.empty()) evbuffer_add(out, body.data(), body.size());
  status_ = status;
  responseStarted_ = true;
  bytesOut_ = body.size();
  metrics.countStatus(status);
  logAccess();
  releaseUpstream(false);
  sso_.clear();
  osUser_.clear();
  if (close) {
    closeAfterFlush();
    return;
  }
  state_ = State::ReadingHead;
  headStarted_ = false;
  request_.reset();
  method_.clear();
  armTimer(server_.config().keepaliveIdle);
}

// Browsers get a short page, API clients JSON, everything else plain text.
std::string ClientConnection::refusalBody(int status, std::string_view reason, std::string_view detail,
                                          std::string& contentType) {
  std::string text(refusalText(reason));
  if (reason == "bad_request" && !detail.empty()) text.append(" (").append(detail).append(")");
  std::string_view accept;
  if (!method_.empty())
    if (const http::Header* a = request_.head().find("accept")) accept = a->value;
  size_t json = accept.find("application/json");
  size_t html = accept.find("text/html");
  if (json != std::string_view::npos && (html == std::string_view::npos || json < html)) {
    contentType = "application/json";
    nlohmann::json j = {{"status", status}, {"error", reason}, {"message", text}};
    if (!detail.empty() && reason != "bad_request") j["detail"] = detail;
    return j.dump() + "\n";
  }
  if (html != std::string_view::npos) {
    contentType = "text/html; charset=utf-8";
    auto escape = [](std::string_view s) {
      std::string o;
      for (char c : s) {
        switch (c) {
          case '<': o += "&lt;"; break;
          case '>': o += "&gt;"; break;
          case '&': o += "&amp;"; break;
          case '"': o += "&quot;"; break;
          default: o.push_back(c);
        }
      }
      return o;
    };
    return fmt::format(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{} {}</title>"
        "<style>body{{font-family:system-ui,sans-serif;max-width:36em;margin:4em auto;padding:0 1em;color:#222}}"
        "small{{color:#777}}</style></head>\n<body><h1>{}</h1><p>{}</p><p><small>{} {}{}</small></p></body></html>\n",
        status, http::reasonPhrase(status), escape(http::reasonPhrase(status)), escape(text), status,
        escape(reason), detail.empty() || reason == "bad_request" ? "" : " &middot; " + escape(detail));
  }
  contentType = "text/plain; charset=utf-8";
  return text + "\n";
}

void ClientConnection::failUpstream(int status, std::string_view reason, std::string_view detail) {
  if (responseStarted_) {
    abortExchange(detail);
    return;
  }
  LogLine line("backend_failure");
  line.kv("conn", id_).kv("backend", backendKey_).kv("user", sso_).kv("reason", reason).kv("detail", detail);
  spdlog::warn(line.str());
  releaseUpstream(false);
  refuse(status, reason, detail, !requestDone_);
}

void ClientConnection::abortExchange(std::string_view why) {
  spdlog::info(LogLine("abort").kv("conn", id_).kv("user", sso_).kv("backend", backendKey_).kv("why", why).str());
  close();
}

void ClientConnection::closeAfterFlush() {
  releaseUpstream(false);
  // Lingering (half-close, then read and discard for a moment) matters only
  // when the client may still be sending: an unread request body, a refused
  // head, pipelined bytes. Otherwise close as soon as the answer is out.
  lingerWanted_ = !requestDone_ || status_ >= 400 ||
                  evbuffer_get_length(bufferevent_get_input(client_.get())) > 0;
  state_ = State::Lingering;
  lingerShut_ = false;
  lingerDiscarded_ = 0;
  bufferevent_setwatermark(client_.get(), EV_WRITE, 0, 0);
  bufferevent_setwatermark(client_.get(), EV_READ, 0, 0);
  bufferevent_enable(client_.get(), EV_READ | EV_WRITE);
  armTimer(kLingerTimeout);
  clientWrite();
}

void ClientConnection::drain() {
  closeWhenDone_ = true;
  if (idle()) close();
}

void ClientConnection::logAccess() {
  if (!server_.config().accessLog || method_.empty()) return;
  double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started_).count();
  LogLine line("access");
  line.kv("client", peer_.str())
      .kv("user", sso_)
      .kv("os_user", osUser_)
      .kv("method", method_)
      .kv("target", std::string_view(target_).substr(0, 2048))
      .kv("status", status_)
      .kv("backend", backendKey_)
      .kv("bytes_in", bytesIn_)
      .kv("bytes_out", bytesOut_)
      .kv("duration_ms", ms)
      .kv("conn", id_);
  spdlog::info(line.str());
}

void ClientConnection::close() {
  if (state_ == State::Closed) return;
  if (state_ == State::Upgraded) {
    --server_.metrics().websocketsActive;
    logAccess();
  } else if (state_ == State::Proxying || state_ == State::WaitingMint) {
    if (status_ == 0) status_ = 502;
    logAccess();
  }
  state_ = State::Closed;
  if (mintTicket_ && server_.mint()) server_.mint()->cancel(mintTicket_);
  mintTicket_ = 0;
  upstream_.reset();
  if (timer_) evtimer_del(timer_.get());
  // Freed here even inside its own callback: libevent holds a reference for
  // the duration of the callback.
  client_.reset();
  server_.retire(this);
}

}  // namespace usher::dispatch
