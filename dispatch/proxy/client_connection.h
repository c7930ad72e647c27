// One client connection: reads requests, refuses or routes them, streams
// them to a backend and the response back, or splices an upgraded
// connection. Owns itself; closes through Server::retire.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "dispatch/http/request_parser.h"
#include "dispatch/http/response_parser.h"
#include "dispatch/net/address.h"
#include "dispatch/net/libevent.h"
#include "dispatch/proxy/upstream_pool.h"
#include "dispatch/session/mint_service.h"

namespace usher::dispatch {

class Server;

class ClientConnection {
public:
  ClientConnection(Server& server, evutil_socket_t fd, const net::Address& peer, uint64_t id);
  ~ClientConnection();
  ClientConnection(const ClientConnection&) = delete;
  ClientConnection& operator=(const ClientConnection&) = delete;

  bool start();
  // Closes now (idempotent). The object is freed later by the server.
  void close();
  // Graceful shutdown: close if idle, else after the current exchange.
  void drain();
  // The user this connection is serving right now ("" when idle).
  const std::string& ssoUser() const { return sso_; }
  const std::string& osUser() const { return osUser_; }
  bool upgraded() const { return state_ == State::Upgraded; }
  bool idle() const { return state_ == State::ReadingHead && !headStarted_; }

private:
  enum class State { ReadingHead, WaitingMint, Proxying, Upgraded, Lingering, Closed };

  // libevent trampolines
  static void onClientRead(bufferevent*, void* arg);
  static void onClientWrite(bufferevent*, void* arg);
  static void onClientEvent(bufferevent*, short what, void* arg);
  static void onUpstreamRead(bufferevent*, void* arg);
  static void onUpstreamWrite(bufferevent*, void* arg);
  static void onUpstreamEvent(bufferevent*, short what, void* arg);
  static void onTimer(evutil_socket_t, short, void* arg);

  void clientRead();
  void clientWrite();
  void clientEvent(short what);
  void upstreamRead();
  void upstreamWrite();
  void upstreamEvent(short what);
  void upstreamFailed(bool eof, int err);
  void timeout();

  // Request phase
  void readHeads();
  void handleRequest();
  bool routeRequest();
  // Transparent login
  bool originAllowed();
  bool sessionReady();
  void startMint(const std::string& failedCookie);
  void onMintDone(const MintOutcome& outcome);
  void proceedUpstream();
  void appendCookieHeader(std::string& out);
  bool strippedCookie(std::string_view name) const;
  void appendSessionCookies(std::string& head);
  std::string buildUpstreamHead(const std::string& backendKey);
  bool startUpstream(bool allowPooled);
  void pumpRequestBody();
  // Response phase
  size_t feedResponse(evbuffer* in);
  bool onResponseHead(http::ResponseHead& head);
  void onResponseBody(std::string_view data);
  void onResponseComplete();
  void finishExchange();
  void becomeUpgraded();
  void pumpUpgraded();
  void maybeFinishUpgraded();
  // Errors and endings
  void refuse(int status, std::string_view reason, std::string_view detail, bool closeAfter);
  std::string refusalBody(int status, std::string_view reason, std::string_view detail, std::string& contentType);
  void failUpstream(int status, std::string_view reason, std::string_view detail);
  void abortExchange(std::string_view why);
  void releaseUpstream(bool reusable);
  void closeAfterFlush();
  void logAccess();
  void armTimer(std::chrono::milliseconds ms);
  void touch();
  std::chrono::milliseconds phaseLimit() const;
  bool blockedOnClient() const;
  bool clientOutputFull() const;
  bool upstreamOutputFull() const;

  Server& server_;
  const uint64_t id_;
  const net::Address peer_;
  State state_ = State::ReadingHead;
  net::BufferEventPtr client_;
  UpstreamPtr upstream_;
  net::EventPtr timer_;
  http::RequestParser request_;
  http::ResponseParser response_;

  // Current exchange
  bool headStarted_ = false;     // bytes of the next head have arrived
  bool requestDone_ = false;     // request body fully read and forwarded
  bool responseStarted_ = false; // response head written to the client
  bool responseDone_ = false;
  bool clientKeepAlive_ = true;
  bool chunkedToClient_ = false; // re-framing the response body as chunked
  bool closeDelimited_ = false;  // response body ends when we close
  bool expectUpgrade_ = false;
  bool retried_ = false;
  bool closeWhenDone_ = false;   // drain requested
  uint64_t requestBodyRemaining_ = 0;
  uint64_t responseBodyRemaining_ = 0;
  int status_ = 0;
  uint64_t bytesIn_ = 0;
  uint64_t bytesOut_ = 0;
  std::string sso_;
  std::string osUser_;
  std::string backendKey_;
  bool minting_ = false;                // this request gets a session injected when it has none
  std::string vmProfile_;  // a VM backend minted through this profile's provider; "" otherwise
  net::Address backendAddr_;
  std::string upstreamHead_;     // kept until the response starts, for one retry
  std::string method_;
  std::string target_;
  std::chrono::steady_clock::time_point started_;
  bool responseBytesSeen_ = false;
  bool upgradeReady_ = false;    // 101 parsed; switch once the parser returns
  // Session (when minting is on)
  uint64_t mintTicket_ = 0;
  bool sessionBound_ = false;    // the browser's bind cookie matched this identity
  bool injected_ = false;        // a freshly minted cookie goes with this request
  bool remintTried_ = false;     // at most one re-mint per request
  bool remintPending_ = false;   // a 401 to an injected session is being swallowed
  bool resignBind_ = false;      // bind cookie signed with the previous key
  bool clearBind_ = false;       // tell the browser to drop its bind cookie
  std::string browserAppCookie_;
  MintOutcome minted_;
  // Upgraded splice
  bool clientEof_ = false;
  bool upstreamEof_ = false;
  // Lingering close
  bool lingerShut_ = false;
  bool lingerWanted_ = true;
  size_t lingerDiscarded_ = 0;
  // Inactivity timer
  std::chrono::milliseconds timerFor_{0};
  uint64_t lastActivity_ = 0;
};

}  // namespace usher::dispatch
