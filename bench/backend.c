/*
 * backend.c — a small, fast HTTP/1.1 + WebSocket backend for the Usher benchmark.
 *
 *   backend --listen 127.0.0.1:PORT
 *
 *   GET /small  200, 100-byte body, Content-Length, keep-alive
 *   GET /1m     200, 1 MiB body from a static buffer (sent by reference, no copy)
 *   GET /ws     WebSocket (RFC 6455) echo: text/binary/continuation frames are sent back
 *               unmasked as they came, ping is answered with pong, close is echoed.
 *
 * Single-threaded libevent, raw bufferevents (no evhttp: it is slower and cannot hand a
 * connection over to a WebSocket). HEAD works on the two GET routes. Request bodies with a
 * Content-Length are read and discarded; chunked request bodies are refused (501, close).
 * Pipelined requests are answered in order. Output is bounded: while more than OUT_HIGH bytes
 * wait to be written, input is not read.
 *
 * Prints "event=ready listen=ADDR" on stderr once listening; SIGINT/SIGTERM stop it cleanly.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <openssl/evp.h>

#define SMALL_BODY_LEN 100
#define BIG_BODY_LEN (1024 * 1024)
#define MAX_HEAD 16384             /* request line + headers */
#define MAX_WS_FRAME (16u << 20)   /* larger frames are refused with close 1009 */
#define OUT_HIGH (4u << 20)        /* stop reading while this much output is pending */
#define IDLE_TIMEOUT_S 300

static const char WS_GUID[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

static char small_body[SMALL_BODY_LEN];
static char *big_body;

enum conn_state { ST_HTTP, ST_WS };

struct conn {
  struct bufferevent *bev;
  struct conn *prev, *next;
  enum conn_state state;
  uint64_t body_left;  /* request body bytes still to discard */
  bool closing;        /* close once the output is flushed */
  bool paused;         /* input processing paused for output backpressure */
};

static struct conn *conns;  /* every open connection, freed on exit */
static unsigned long n_conns;

static void conn_free(struct conn *c) {
  if (c->prev) c->prev->next = c->next; else conns = c->next;
  if (c->next) c->next->prev = c->prev;
  bufferevent_free(c->bev);
  free(c);
  n_conns--;
}

/* Stop reading; free the connection as soon as everything queued has been written. */
static void conn_close_after_flush(struct conn *c) {
  c->closing = true;
  bufferevent_disable(c->bev, EV_READ);
  if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) conn_free(c);
}

/* ---------- HTTP ---------- */

static bool ci_eq(const char *a, size_t alen, const char *lit) {
  size_t n = strlen(lit);
  return alen == n && strncasecmp(a, lit, n) == 0;
}

/* Does the comma-separated header value contain `token` (case-insensitive)? */
static bool has_token(const char *v, size_t vlen, const char *token) {
  size_t tl = strlen(token);
  size_t i = 0;
  while (i < vlen) {
    while (i < vlen && (v[i] == ' ' || v[i] == '\t' || v[i] == ',')) i++;
    size_t s = i;
    while (i < vlen && v[i] != ',') i++;
    size_t e = i;
    while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t')) e--;
    if (e - s == tl && strncasecmp(v + s, token, tl) == 0) return true;
  }
  return false;
}

static void send_simple(struct conn *c, int status, const char *reason, bool close_after) {
  struct evbuffer *out = bufferevent_get_output(c->bev);
  size_t rl = strlen(reason);
  evbuffer_add_printf(out,
                      "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n%s\r\n"
                      "%s\n",
                      status, reason, rl + 1, close_after ? "Connection: close\r\n" : "", reason);
  if (close_after) conn_close_after_flush(c);
}

static void send_body(struct conn *c, const char *type, const char *body, size_t len, bool head,
                      bool close_after) {
  struct evbuffer *out = bufferevent_get_output(c->bev);
  evbuffer_add_printf(out,
                      "HTTP/1.1 200 OK\r\nContent-Type: %s\r\n"
                      "Content-Length: %zu\r\n%s\r\n",
                      type, len, close_after ? "Connection: close\r\n" : "");
  if (!head) evbuffer_add_reference(out, body, len, NULL, NULL);
}

static bool ws_accept_key(const char *key, size_t klen, char out[29]) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;
  char buf[128];
  if (klen == 0 || klen + sizeof WS_GUID > sizeof buf) return false;
  memcpy(buf, key, klen);
  memcpy(buf + klen, WS_GUID, sizeof WS_GUID - 1);
  if (!EVP_Digest(buf, klen + sizeof WS_GUID - 1, md, &mdlen, EVP_sha1(), NULL) || mdlen != 20)
    return false;
  return EVP_EncodeBlock((unsigned char *)out, md, 20) == 28;
}

struct req {
  const char *method; size_t method_len;
  const char *path; size_t path_len;
  int minor;                       /* HTTP/1.minor */
  bool conn_close, conn_keepalive, conn_upgrade;
  bool upgrade_ws;
  const char *ws_key; size_t ws_key_len;
  bool ws_version_13;
  bool has_cl, has_te, bad;
  uint64_t content_length;
};

/* Parses the head [p, p+len) (ending in CRLF CRLF). Returns false on a malformed request. */
static bool parse_head(char *p, size_t len, struct req *r) {
  memset(r, 0, sizeof *r);
  char *end = p + len;
  char *eol = memmem(p, len, "\r\n", 2);
  if (!eol) return false;
  /* request line: METHOD SP target SP HTTP/1.x */
  char *sp1 = memchr(p, ' ', (size_t)(eol - p));
  if (!sp1 || sp1 == p) return false;
  char *sp2 = memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1));
  if (!sp2 || sp2 == sp1 + 1) return false;
  if (eol - sp2 - 1 != 8 || memcmp(sp2 + 1, "HTTP/1.", 7) != 0) return false;
  char m = sp2[8];
  if (m != '0' && m != '1') return false;
  r->minor = m - '0';
  r->method = p; r->method_len = (size_t)(sp1 - p);
  r->path = sp1 + 1; r->path_len = (size_t)(sp2 - sp1 - 1);
  char *q = memchr(r->path, '?', r->path_len);
  if (q) r->path_len = (size_t)(q - r->path);

  char *line = eol + 2;
  while (line < end) {
    eol = memmem(line, (size_t)(end - line), "\r\n", 2);
    if (!eol) return false;
    if (eol == line) break;  /* empty line: end of head */
    char *colon = memchr(line, ':', (size_t)(eol - line));
    if (!colon || colon == line) return false;
    if (line[0] == ' ' || line[0] == '\t') return false;  /* obs-fold */
    const char *name = line;
    size_t nlen = (size_t)(colon - line);
    if (name[nlen - 1] == ' ' || name[nlen - 1] == '\t') return false;
    const char *v = colon + 1;
    const char *ve = eol;
    while (v < ve && (*v == ' ' || *v == '\t')) v++;
    while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
    size_t vlen = (size_t)(ve - v);
    if (ci_eq(name, nlen, "connection")) {
      if (has_token(v, vlen, "close")) r->conn_close = true;
      if (has_token(v, vlen, "keep-alive")) r->conn_keepalive = true;
      if (has_token(v, vlen, "upgrade")) r->conn_upgrade = true;
    } else if (ci_eq(name, nlen, "upgrade")) {
      if (has_token(v, vlen, "websocket")) r->upgrade_ws = true;
    } else if (ci_eq(name, nlen, "sec-websocket-key")) {
      r->ws_key = v; r->ws_key_len = vlen;
    } else if (ci_eq(name, nlen, "sec-websocket-version")) {
      r->ws_version_13 = (vlen == 2 && memcmp(v, "13", 2) == 0);
    } else if (ci_eq(name, nlen, "content-length")) {
      uint64_t n = 0;
      if (vlen == 0 || vlen > 18) return false;
      for (size_t i = 0; i < vlen; i++) {
        if (v[i] < '0' || v[i] > '9') return false;
        n = n * 10 + (uint64_t)(v[i] - '0');
      }
      if (r->has_cl && n != r->content_length) return false;
      r->has_cl = true;
      r->content_length = n;
    } else if (ci_eq(name, nlen, "transfer-encoding")) {
      r->has_te = true;
    }
    line = eol + 2;
  }
  return true;
}

static void ws_process(struct conn *c);

/* Handles one parsed request. Returns false when the connection is gone or closing. */
static bool handle_request(struct conn *c, const struct req *r) {
  bool keep = r->minor == 1 ? !r->conn_close : (r->conn_keepalive && !r->conn_close);
  bool is_get = ci_eq(r->method, r->method_len, "GET");
  bool is_head = ci_eq(r->method, r->method_len, "HEAD");

  if (r->has_te) {
    send_simple(c, 501, "Not Implemented", true);
    return false;
  }
  c->body_left = r->has_cl ? r->content_length : 0;

  if (r->path_len == 3 && memcmp(r->path, "/ws", 3) == 0) {
    char accept[29];
    if (!is_get || !r->upgrade_ws || !r->conn_upgrade || !r->ws_version_13 || r->minor != 1 ||
        c->body_left != 0 || !ws_accept_key(r->ws_key, r->ws_key_len, accept)) {
      send_simple(c, 400, "Bad WebSocket Handshake", true);
      return false;
    }
    evbuffer_add_printf(bufferevent_get_output(c->bev),
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                        accept);
    c->state = ST_WS;
    return true;
  }
  if (!is_get && !is_head) {
    send_simple(c, 405, "Method Not Allowed", !keep);
  } else if (r->path_len == 6 && memcmp(r->path, "/small", 6) == 0) {
    send_body(c, "text/plain", small_body, sizeof small_body, is_head, !keep);
  } else if (r->path_len == 3 && memcmp(r->path, "/1m", 3) == 0) {
    send_body(c, "application/octet-stream", big_body, BIG_BODY_LEN, is_head, !keep);
  } else {
    send_simple(c, 404, "Not Found", !keep);
    return keep;
  }
  if (!keep) {
    conn_close_after_flush(c);
    return false;
  }
  return true;
}

/* Parses and answers every complete request in the input buffer. */
static void http_process(struct conn *c) {
  struct evbuffer *in = bufferevent_get_input(c->bev);
  struct evbuffer *out = bufferevent_get_output(c->bev);
  for (;;) {
    if (c->body_left) {
      size_t avail = evbuffer_get_length(in);
      size_t n = avail < c->body_left ? avail : (size_t)c->body_left;
      evbuffer_drain(in, n);
      c->body_left -= n;
      if (c->body_left) return;
    }
    if (c->state == ST_WS) {
      ws_process(c);
      return;
    }
    if (evbuffer_get_length(out) > OUT_HIGH) {
      c->paused = true;  /* resumed by the write callback once the output drains */
      bufferevent_disable(c->bev, EV_READ);
      return;
    }
    size_t avail = evbuffer_get_length(in);
    if (avail == 0) return;
    struct evbuffer_ptr pos = evbuffer_search(in, "\r\n\r\n", 4, NULL);
    if (pos.pos < 0) {
      if (avail > MAX_HEAD) send_simple(c, 431, "Request Header Fields Too Large", true);
      return;
    }
    size_t head_len = (size_t)pos.pos + 4;
    if (head_len > MAX_HEAD) {
      send_simple(c, 431, "Request Header Fields Too Large", true);
      return;
    }
    char *head = (char *)evbuffer_pullup(in, (ev_ssize_t)head_len);
    if (!head) {
      conn_free(c);
      return;
    }
    struct req r;
    bool ok = parse_head(head, head_len, &r);
    if (!ok) {
      evbuffer_drain(in, head_len);
      send_simple(c, 400, "Bad Request", true);
      return;
    }
    /* r points into the input buffer: handle before draining. */
    bool go_on = handle_request(c, &r);
    if (!go_on) return;  /* closing: c may already be freed */
    evbuffer_drain(in, head_len);
  }
}

/* ---------- WebSocket ---------- */

static void ws_send_close(struct conn *c, uint16_t code) {
  unsigned char f[4] = {0x88, 2, (unsigned char)(code >> 8), (unsigned char)code};
  evbuffer_add(bufferevent_get_output(c->bev), f, sizeof f);
  conn_close_after_flush(c);
}

/* XORs d[0..l) with the mask, the first byte being at payload offset `phase`. */
static void xor_mask(unsigned char *d, size_t l, const unsigned char mask[4], size_t phase) {
  unsigned char m8[8];
  for (int i = 0; i < 8; i++) m8[i] = mask[(phase + (size_t)i) & 3];
  uint64_t m;
  memcpy(&m, m8, 8);
  size_t k = 0;
  for (; k + 8 <= l; k += 8) {
    uint64_t w;
    memcpy(&w, d + k, 8);
    w ^= m;
    memcpy(d + k, &w, 8);
  }
  for (; k < l; k++) d[k] ^= m8[k & 7];
}

/* XORs `len` bytes of `buf` starting at byte offset `off` with the 4-byte mask, in place. */
static void unmask_range(struct evbuffer *buf, size_t off, size_t len, const unsigned char mask[4]) {
  struct evbuffer_ptr p;
  if (evbuffer_ptr_set(buf, &p, off, EVBUFFER_PTR_SET) < 0) return;
  size_t done = 0;
  while (done < len) {
    struct evbuffer_iovec v[8];
    int n = evbuffer_peek(buf, (ev_ssize_t)(len - done), &p, v, 8);
    if (n <= 0) return;
    if (n > 8) n = 8; /* evbuffer_peek returns how many it would need */
    for (int i = 0; i < n && done < len; i++) {
      unsigned char *d = v[i].iov_base;
      size_t l = v[i].iov_len;
      if (l > len - done) l = len - done;
      xor_mask(d, l, mask, done);
      done += l;
    }
    if (done < len && evbuffer_ptr_set(buf, &p, off + done, EVBUFFER_PTR_SET) < 0) return;
  }
}

static void ws_process(struct conn *c) {
  struct evbuffer *in = bufferevent_get_input(c->bev);
  struct evbuffer *out = bufferevent_get_output(c->bev);
  for (;;) {
    if (evbuffer_get_length(out) > OUT_HIGH) {
      c->paused = true;
      bufferevent_disable(c->bev, EV_READ);
      return;
    }
    size_t avail = evbuffer_get_length(in);
    if (avail < 2) return;
    unsigned char h[14];
    size_t hl = avail < sizeof h ? avail : sizeof h;
    if (evbuffer_copyout(in, h, hl) != (ev_ssize_t)hl) {
      conn_free(c);
      return;
    }
    bool fin = h[0] & 0x80;
    unsigned op = h[0] & 0x0f;
    bool masked = h[1] & 0x80;
    uint64_t plen = h[1] & 0x7f;
    size_t need = 2;
    if (plen == 126) need += 2;
    else if (plen == 127) need += 8;
    if (masked) need += 4;
    if (hl < need) return;
    if (plen == 126) {
      plen = ((uint64_t)h[2] << 8) | h[3];
    } else if (plen == 127) {
      plen = 0;
      for (int i = 0; i < 8; i++) plen = (plen << 8) | h[2 + i];
    }
    if ((h[0] & 0x70) || !masked) {  /* RSV bits without an extension, or unmasked client frame */
      ws_send_close(c, 1002);
      return;
    }
    bool control = op & 0x8;
    if (control && (!fin || plen > 125)) {
      ws_send_close(c, 1002);
      return;
    }
    if (op != 0x0 && op != 0x1 && op != 0x2 && op != 0x8 && op != 0x9 && op != 0xA) {
      ws_send_close(c, 1002);
      return;
    }
    if (plen > MAX_WS_FRAME) {
      ws_send_close(c, 1009);
      return;
    }
    if (avail < need + plen) {
      /* Wait for the rest of the frame; read it in big pieces. */
      return;
    }
    unsigned char mask[4];
    memcpy(mask, h + need - 4, 4);
    unmask_range(in, need, (size_t)plen, mask);
    evbuffer_drain(in, need);

    if (op == 0xA) {  /* pong: ignore */
      evbuffer_drain(in, (size_t)plen);
      continue;
    }
    unsigned char oh[10];
    size_t ohl;
    unsigned oop = op == 0x9 ? 0xA : op;
    oh[0] = (unsigned char)((fin ? 0x80 : 0) | oop);
    if (plen < 126) {
      oh[1] = (unsigned char)plen;
      ohl = 2;
    } else if (plen <= 0xffff) {
      oh[1] = 126;
      oh[2] = (unsigned char)(plen >> 8);
      oh[3] = (unsigned char)plen;
      ohl = 4;
    } else {
      oh[1] = 127;
      for (int i = 0; i < 8; i++) oh[2 + i] = (unsigned char)(plen >> (56 - 8 * i));
      ohl = 10;
    }
    if (evbuffer_add(out, oh, ohl) < 0 ||
        evbuffer_remove_buffer(in, out, (size_t)plen) != (int)plen) {
      conn_free(c);
      return;
    }
    if (op == 0x8) {  /* close: echoed above; done */
      conn_close_after_flush(c);
      return;
    }
  }
}

/* ---------- callbacks ---------- */

static void read_cb(struct bufferevent *bev, void *arg) {
  (void)bev;
  struct conn *c = arg;
  if (c->closing) {
    evbuffer_drain(bufferevent_get_input(c->bev), evbuffer_get_length(bufferevent_get_input(c->bev)));
    return;
  }
  http_process(c);
}

static void write_cb(struct bufferevent *bev, void *arg) {
  (void)bev;
  struct conn *c = arg;
  if (c->closing) {
    conn_free(c);
    return;
  }
  if (c->paused) {
    c->paused = false;
    bufferevent_enable(c->bev, EV_READ);
    http_process(c);
  }
}

static void event_cb(struct bufferevent *bev, short what, void *arg) {
  (void)bev;
  (void)what;  /* EOF, error or timeout: all end the connection */
  conn_free(arg);
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
                      void *arg) {
  (void)sa;
  (void)salen;
  (void)arg;
  struct event_base *base = evconnlistener_get_base(l);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  struct conn *c = calloc(1, sizeof *c);
  if (!c) {
    evutil_closesocket(fd);
    return;
  }
  c->bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
  if (!c->bev) {
    evutil_closesocket(fd);
    free(c);
    return;
  }
  c->next = conns;
  if (conns) conns->prev = c;
  conns = c;
  n_conns++;
  bufferevent_set_max_single_write(c->bev, 1 << 20);
  bufferevent_set_max_single_read(c->bev, 256 * 1024);
  bufferevent_setcb(c->bev, read_cb, write_cb, event_cb, c);
  struct timeval idle = {IDLE_TIMEOUT_S, 0};
  bufferevent_set_timeouts(c->bev, &idle, &idle);
  if (bufferevent_enable(c->bev, EV_READ | EV_WRITE) < 0) conn_free(c);
}

static void accept_error_cb(struct evconnlistener *l, void *arg) {
  (void)arg;
  int err = EVUTIL_SOCKET_ERROR();
  /* EMFILE/ENFILE/ENOBUFS: keep serving the open connections; the listener retries. */
  fprintf(stderr, "backend: accept: %s\n", evutil_socket_error_to_string(err));
  (void)l;
}

static void signal_cb(evutil_socket_t sig, short what, void *arg) {
  (void)sig;
  (void)what;
  event_base_loopbreak(arg);
}

static int parse_listen(const char *spec, struct addrinfo **res) {
  char host[256];
  const char *colon = strrchr(spec, ':');
  if (!colon || colon == spec || !colon[1]) return -1;
  size_t hl = (size_t)(colon - spec);
  const char *h = spec;
  if (spec[0] == '[' && hl >= 2 && spec[hl - 1] == ']') {
    h = spec + 1;
    hl -= 2;
  }
  if (hl >= sizeof host) return -1;
  memcpy(host, h, hl);
  host[hl] = '\0';
  struct addrinfo hints = {0};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;
  int rc = getaddrinfo(host, colon + 1, &hints, res);
  if (rc != 0) {
    fprintf(stderr, "backend: bad --listen '%s': %s\n", spec, gai_strerror(rc));
    return -1;
  }
  return 0;
}

static void usage(void) {
  fprintf(stderr, "usage: backend --listen HOST:PORT\n");
}

int main(int argc, char **argv) {
  const char *listen_spec = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc) {
      listen_spec = argv[++i];
    } else if (strncmp(argv[i], "--listen=", 9) == 0) {
      listen_spec = argv[i] + 9;
    } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
      usage();
      return 0;
    } else {
      usage();
      return 2;
    }
  }
  if (!listen_spec) {
    usage();
    return 2;
  }
  struct addrinfo *ai = NULL;
  if (parse_listen(listen_spec, &ai) < 0) return 2;

  for (size_t i = 0; i < sizeof small_body; i++) small_body[i] = (char)('a' + i % 26);
  small_body[sizeof small_body - 1] = '\n';
  big_body = malloc(BIG_BODY_LEN);
  if (!big_body) {
    freeaddrinfo(ai);
    fprintf(stderr, "backend: out of memory\n");
    return 1;
  }
  for (size_t i = 0; i < BIG_BODY_LEN; i++) big_body[i] = (char)('A' + i % 26);

  signal(SIGPIPE, SIG_IGN);
  struct event_config *cfg = event_config_new();
  struct event_base *base = cfg ? event_base_new_with_config(cfg) : NULL;
  if (cfg) event_config_free(cfg);
  if (!base) {
    fprintf(stderr, "backend: cannot create event base\n");
    freeaddrinfo(ai);
    free(big_body);
    return 1;
  }
  struct evconnlistener *lst =
      evconnlistener_new_bind(base, accept_cb, NULL, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE,
                              4096, ai->ai_addr, (int)ai->ai_addrlen);
  freeaddrinfo(ai);
  if (!lst) {
    fprintf(stderr, "backend: cannot listen on %s: %s\n", listen_spec, strerror(errno));
    event_base_free(base);
    free(big_body);
    return 1;
  }
  evconnlistener_set_error_cb(lst, accept_error_cb);
  struct event *sigint = evsignal_new(base, SIGINT, signal_cb, base);
  struct event *sigterm = evsignal_new(base, SIGTERM, signal_cb, base);
  if (!sigint || !sigterm || event_add(sigint, NULL) < 0 || event_add(sigterm, NULL) < 0) {
    fprintf(stderr, "backend: cannot install signal handlers\n");
    return 1;
  }
  fprintf(stderr, "event=ready listen=%s\n", listen_spec);

  event_base_dispatch(base);

  while (conns) conn_free(conns);
  event_free(sigint);
  event_free(sigterm);
  evconnlistener_free(lst);
  event_base_free(base);
  free(big_body);
  return 0;
}
