/*
 * wsload.c — WebSocket echo load generator for the Usher benchmark.
 *
 *   wsload [-c CONNS] [-s BYTES] [-d SECONDS] [-T SETUP_TIMEOUT] [-b] [-H 'Name: value']... \
 *          ws://HOST:PORT/PATH
 *
 * Opens CONNS connections (default 50) and performs the RFC 6455 handshake on each (checking
 * Sec-WebSocket-Accept), sending every -H header with the upgrade request. Once every
 * connection is up (or has failed, or SETUP_TIMEOUT seconds have passed) the measurement
 * starts: each connection sends one masked message of BYTES bytes (default 64; text frames of
 * ASCII, or binary with -b), waits for the complete echo, checks it byte for byte, records the
 * round trip, and sends the next, for SECONDS seconds (default 10). Messages still in flight at
 * the end are not counted.
 *
 * Prints one parseable line on stdout:
 *   msgs_per_s=N p50_us=N p99_us=N max_us=N errors=N conns=N msgs=N stalled=N duration_s=N
 * errors counts connections that failed (connect, handshake, protocol, payload mismatch,
 * unexpected close); stalled counts connections whose last message got no echo within 1 s.
 * Details of the first few errors go to stderr. Exit status 0 when at least one message
 * completed, 1 otherwise, 2 on bad usage.
 */
#define _GNU_SOURCE
#include <errno.h>
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
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#define MAX_RESP_HEAD 16384
#define MAX_CONNS 100000
#define MAX_MSG (64u << 20)
#define MAX_EXTRA_HEADERS 64
#define MAX_ERROR_REPORTS 5

static const char WS_GUID[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/* ---------- latency histogram: log-linear, ~0.2% relative precision, in ns ---------- */

#define H_SUB_BITS 9                     /* 512 sub-buckets per power of two */
#define H_LINEAR (1u << (H_SUB_BITS + 1)) /* values below 1024 ns are exact */
#define H_BUCKETS (H_LINEAR + (64 - (H_SUB_BITS + 1)) * (1u << H_SUB_BITS))

static uint64_t hist[H_BUCKETS];
static uint64_t hist_count;
static uint64_t hist_max;

static unsigned msb64(uint64_t v) { return 63u - (unsigned)__builtin_clzll(v); }

static size_t hist_index(uint64_t v) {
  if (v < H_LINEAR) return (size_t)v;
  unsigned e = msb64(v); /* >= H_SUB_BITS + 1 */
  uint64_t m = (v >> (e - H_SUB_BITS)) & ((1u << H_SUB_BITS) - 1);
  return H_LINEAR + (size_t)(e - (H_SUB_BITS + 1)) * (1u << H_SUB_BITS) + (size_t)m;
}

/* Midpoint of the bucket's range. */
static uint64_t hist_value(size_t idx) {
  if (idx < H_LINEAR) return idx;
  size_t r = idx - H_LINEAR;
  unsigned e = (unsigned)(r >> H_SUB_BITS) + H_SUB_BITS + 1;
  uint64_t m = r & ((1u << H_SUB_BITS) - 1);
  uint64_t lo = ((uint64_t)(1u << H_SUB_BITS) + m) << (e - H_SUB_BITS);
  return lo + ((uint64_t)1 << (e - H_SUB_BITS)) / 2;
}

static void hist_record(uint64_t ns) {
  hist[hist_index(ns)]++;
  hist_count++;
  if (ns > hist_max) hist_max = ns;
}

static uint64_t hist_percentile(double p) {
  if (hist_count == 0) return 0;
  uint64_t rank = (uint64_t)(p / 100.0 * (double)hist_count + 0.999999);
  if (rank < 1) rank = 1;
  uint64_t seen = 0;
  for (size_t i = 0; i < H_BUCKETS; i++) {
    seen += hist[i];
    if (seen >= rank) {
      uint64_t v = hist_value(i);
      return v > hist_max ? hist_max : v;
    }
  }
  return hist_max;
}

/* ---------- configuration and global state ---------- */

static int opt_conns = 50;
static size_t opt_size = 64;
static double opt_duration = 10.0;
static double opt_setup_timeout = 10.0;
static bool opt_binary;
static const char *extra_headers[MAX_EXTRA_HEADERS];
static int n_extra_headers;
static char url_host[256], url_port[16], url_path[2048];

static struct event_base *base;
static struct sockaddr_storage target;
static socklen_t target_len;
static unsigned char *payload;

enum wstate { W_CONNECTING, W_HANDSHAKE, W_READY, W_DEAD };

struct wconn {
  struct bufferevent *bev;
  enum wstate state;
  int idx;
  char accept[29];        /* expected Sec-WebSocket-Accept */
  unsigned char *frame;   /* the outgoing frame: header + masked payload */
  size_t frame_hdr;
  bool waiting;           /* a message is in flight */
  uint64_t sent_ns;
  size_t got;             /* echo bytes received for the message in flight */
};

static struct wconn *wc;
static int n_settled;     /* ready or failed during setup */
static int n_ready;
static bool measuring, finished;
static uint64_t t_start, t_end;
static uint64_t msgs;
static unsigned long errors;
static int error_reports;
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static struct event *setup_timer, *end_timer;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* xorshift64*: masks must vary per frame; they need not be cryptographically strong here. */
static uint32_t rng32(void) {
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return (uint32_t)((rng_state * 0x2545F4914F6CDD1Dull) >> 32);
}

static void start_measuring(void);

static void maybe_start(void) {
  if (!measuring && !finished && n_settled == opt_conns) start_measuring();
}

/* Counts an error, reports it (the first few), and drops the connection. */
static void conn_fail(struct wconn *c, const char *why, const char *detail) {
  if (c->state == W_DEAD) return;
  errors++;
  if (error_reports < MAX_ERROR_REPORTS) {
    error_reports++;
    fprintf(stderr, "wsload: conn %d: %s%s%s\n", c->idx, why, detail ? ": " : "", detail ? detail : "");
  } else if (error_reports == MAX_ERROR_REPORTS) {
    error_reports++;
    fprintf(stderr, "wsload: (further errors not shown)\n");
  }
  bool was_setup = c->state == W_CONNECTING || c->state == W_HANDSHAKE;
  if (c->state == W_READY) n_ready--;
  c->state = W_DEAD;
  bufferevent_free(c->bev);
  c->bev = NULL;
  free(c->frame);
  c->frame = NULL;
  if (was_setup) {
    n_settled++;
    maybe_start();
  }
}

/* ---------- sending ---------- */

static int build_frame(struct wconn *c) {
  size_t hl = 2 + 4;
  if (opt_size >= 126) hl += opt_size <= 0xffff ? 2 : 8;
  c->frame = malloc(hl + opt_size);
  if (!c->frame) return -1;
  c->frame_hdr = hl;
  unsigned char *f = c->frame;
  f[0] = (unsigned char)(0x80 | (opt_binary ? 0x2 : 0x1));
  if (opt_size < 126) {
    f[1] = (unsigned char)(0x80 | opt_size);
  } else if (opt_size <= 0xffff) {
    f[1] = 0x80 | 126;
    f[2] = (unsigned char)(opt_size >> 8);
    f[3] = (unsigned char)opt_size;
  } else {
    f[1] = 0x80 | 127;
    for (int i = 0; i < 8; i++) f[2 + i] = (unsigned char)((uint64_t)opt_size >> (56 - 8 * i));
  }
  return 0;
}

static void xor_mask(unsigned char *dst, const unsigned char *src, size_t l, const unsigned char m[4]) {
  unsigned char m8[8] = {m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]};
  uint64_t mw;
  memcpy(&mw, m8, 8);
  size_t k = 0;
  for (; k + 8 <= l; k += 8) {
    uint64_t w;
    memcpy(&w, src + k, 8);
    w ^= mw;
    memcpy(dst + k, &w, 8);
  }
  for (; k < l; k++) dst[k] = src[k] ^ m8[k & 7];
}

static void send_message(struct wconn *c) {
  uint32_t r = rng32();
  unsigned char *mask = c->frame + c->frame_hdr - 4;
  memcpy(mask, &r, 4);
  xor_mask(c->frame + c->frame_hdr, payload, opt_size, mask);
  c->waiting = true;
  c->got = 0;
  c->sent_ns = now_ns();
  if (evbuffer_add(bufferevent_get_output(c->bev), c->frame, c->frame_hdr + opt_size) < 0)
    conn_fail(c, "cannot queue message", NULL);
}

static void send_control(struct wconn *c, unsigned op, const unsigned char *data, size_t len) {
  unsigned char f[2 + 4 + 125];
  if (len > 125) len = 125;
  uint32_t r = rng32();
  f[0] = (unsigned char)(0x80 | op);
  f[1] = (unsigned char)(0x80 | len);
  memcpy(f + 2, &r, 4);
  xor_mask(f + 6, data, len, f + 2);
  evbuffer_add(bufferevent_get_output(c->bev), f, 6 + len);
}

/* ---------- receiving ---------- */

/* Compares `len` bytes of `buf` from offset `off` with `want`. */
static bool range_equals(struct evbuffer *buf, size_t off, size_t len, const unsigned char *want) {
  struct evbuffer_ptr p;
  if (evbuffer_ptr_set(buf, &p, off, EVBUFFER_PTR_SET) < 0) return false;
  size_t done = 0;
  while (done < len) {
    struct evbuffer_iovec v[8];
    int n = evbuffer_peek(buf, (ev_ssize_t)(len - done), &p, v, 8);
    if (n <= 0) return false;
    if (n > 8) n = 8; /* evbuffer_peek returns how many it would need */
    for (int i = 0; i < n && done < len; i++) {
      size_t l = v[i].iov_len;
      if (l > len - done) l = len - done;
      if (memcmp(v[i].iov_base, want + done, l) != 0) return false;
      done += l;
    }
    if (done < len && evbuffer_ptr_set(buf, &p, off + done, EVBUFFER_PTR_SET) < 0) return false;
  }
  return true;
}

static void on_message_done(struct wconn *c) {
  uint64_t t = now_ns();
  c->waiting = false;
  if (!measuring) return;
  hist_record(t - c->sent_ns);
  msgs++;
  send_message(c);
}

static void process_frames(struct wconn *c) {
  struct evbuffer *in = bufferevent_get_input(c->bev);
  for (;;) {
    size_t avail = evbuffer_get_length(in);
    if (avail < 2) return;
    unsigned char h[10];
    size_t hl = avail < sizeof h ? avail : sizeof h;
    evbuffer_copyout(in, h, hl);
    bool fin = h[0] & 0x80;
    unsigned op = h[0] & 0x0f;
    uint64_t plen = h[1] & 0x7f;
    size_t need = 2;
    if (plen == 126) need += 2;
    else if (plen == 127) need += 8;
    if (h[1] & 0x80) {
      conn_fail(c, "server sent a masked frame", NULL);
      return;
    }
    if (h[0] & 0x70) {
      conn_fail(c, "server frame has RSV bits set", NULL);
      return;
    }
    if (hl < need) return;
    if (plen == 126) {
      plen = ((uint64_t)h[2] << 8) | h[3];
    } else if (plen == 127) {
      plen = 0;
      for (int i = 0; i < 8; i++) plen = (plen << 8) | h[2 + i];
    }
    if (plen > MAX_MSG) {
      conn_fail(c, "server frame too large", NULL);
      return;
    }
    if (avail < need + plen) return;

    if (op & 0x8) { /* control */
      if (!fin || plen > 125) {
        conn_fail(c, "bad control frame", NULL);
        return;
      }
      unsigned char data[125];
      evbuffer_drain(in, need);
      evbuffer_remove(in, data, (size_t)plen);
      if (op == 0x9) {
        send_control(c, 0xA, data, (size_t)plen);
      } else if (op == 0x8) {
        char why[64];
        unsigned code = plen >= 2 ? ((unsigned)data[0] << 8 | data[1]) : 0;
        snprintf(why, sizeof why, "%u", code);
        conn_fail(c, "server closed the WebSocket, code", why);
        return;
      } else if (op != 0xA) {
        conn_fail(c, "unknown control opcode", NULL);
        return;
      }
      continue;
    }
    if (op != 0x0 && op != 0x1 && op != 0x2) {
      conn_fail(c, "unknown data opcode", NULL);
      return;
    }
    if (!c->waiting) {
      conn_fail(c, "unsolicited data frame", NULL);
      return;
    }
    if (c->got + plen > opt_size || !range_equals(in, need, (size_t)plen, payload + c->got)) {
      conn_fail(c, "echo does not match the message sent", NULL);
      return;
    }
    evbuffer_drain(in, need + (size_t)plen);
    c->got += (size_t)plen;
    if (fin) {
      if (c->got != opt_size) {
        conn_fail(c, "echo is shorter than the message sent", NULL);
        return;
      }
      on_message_done(c);
      if (c->state == W_DEAD) return;
    }
  }
}

static bool header_value(const char *head, size_t len, const char *name, const char **v, size_t *vlen) {
  size_t nl = strlen(name);
  const char *p = memmem(head, len, "\r\n", 2);
  const char *end = head + len;
  while (p && p + 2 < end) {
    const char *line = p + 2;
    const char *eol = memmem(line, (size_t)(end - line), "\r\n", 2);
    if (!eol || eol == line) break;
    if ((size_t)(eol - line) > nl && line[nl] == ':' && strncasecmp(line, name, nl) == 0) {
      const char *s = line + nl + 1, *e = eol;
      while (s < e && (*s == ' ' || *s == '\t')) s++;
      while (e > s && (e[-1] == ' ' || e[-1] == '\t')) e--;
      *v = s;
      *vlen = (size_t)(e - s);
      return true;
    }
    p = eol;
  }
  return false;
}

static void process_handshake(struct wconn *c) {
  struct evbuffer *in = bufferevent_get_input(c->bev);
  struct evbuffer_ptr pos = evbuffer_search(in, "\r\n\r\n", 4, NULL);
  if (pos.pos < 0) {
    if (evbuffer_get_length(in) > MAX_RESP_HEAD) conn_fail(c, "handshake response too large", NULL);
    return;
  }
  size_t hl = (size_t)pos.pos + 4;
  if (hl > MAX_RESP_HEAD) {
    conn_fail(c, "handshake response too large", NULL);
    return;
  }
  const char *head = (const char *)evbuffer_pullup(in, (ev_ssize_t)hl);
  if (!head) {
    conn_fail(c, "out of memory", NULL);
    return;
  }
  const char *eol = memmem(head, hl, "\r\n", 2);
  char status[128];
  size_t sl = (size_t)(eol - head);
  if (sl >= sizeof status) sl = sizeof status - 1;
  memcpy(status, head, sl);
  status[sl] = '\0';
  for (size_t i = 0; i < sl; i++)
    if ((unsigned char)status[i] < 0x20 || (unsigned char)status[i] > 0x7e) status[i] = '?';
  if (strncmp(status, "HTTP/1.1 101", 12) != 0 || (status[12] != ' ' && status[12] != '\0')) {
    conn_fail(c, "handshake refused", status);
    return;
  }
  const char *v;
  size_t vl;
  if (!header_value(head, hl, "sec-websocket-accept", &v, &vl) || vl != 28 ||
      memcmp(v, c->accept, 28) != 0) {
    conn_fail(c, "bad or missing Sec-WebSocket-Accept", NULL);
    return;
  }
  evbuffer_drain(in, hl);
  c->state = W_READY;
  n_ready++;
  n_settled++;
  if (build_frame(c) < 0) conn_fail(c, "out of memory", NULL);
  else if (evbuffer_get_length(in) > 0) conn_fail(c, "data before the first message", NULL);
  maybe_start();
}

/* ---------- callbacks ---------- */

static void read_cb(struct bufferevent *bev, void *arg) {
  (void)bev;
  struct wconn *c = arg;
  if (c->state == W_HANDSHAKE) {
    process_handshake(c);
    return;
  }
  if (c->state == W_READY) process_frames(c);
}

static bool make_key(char key[25], char accept[29]) {
  unsigned char raw[16];
  if (RAND_bytes(raw, sizeof raw) != 1) return false;
  if (EVP_EncodeBlock((unsigned char *)key, raw, sizeof raw) != 24) return false;
  char buf[24 + sizeof WS_GUID];
  memcpy(buf, key, 24);
  memcpy(buf + 24, WS_GUID, sizeof WS_GUID - 1);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;
  if (!EVP_Digest(buf, 24 + sizeof WS_GUID - 1, md, &mdlen, EVP_sha1(), NULL) || mdlen != 20)
    return false;
  return EVP_EncodeBlock((unsigned char *)accept, md, 20) == 28;
}

static void event_cb(struct bufferevent *bev, short what, void *arg) {
  struct wconn *c = arg;
  if (what & BEV_EVENT_CONNECTED) {
    int one = 1;
    setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char key[25];
    if (!make_key(key, c->accept)) {
      conn_fail(c, "cannot make a handshake key", NULL);
      return;
    }
    struct evbuffer *out = bufferevent_get_output(bev);
    evbuffer_add_printf(out,
                        "GET %s HTTP/1.1\r\nHost: %s:%s\r\nUpgrade: websocket\r\n"
                        "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                        "Sec-WebSocket-Version: 13\r\n",
                        url_path, url_host, url_port, key);
    for (int i = 0; i < n_extra_headers; i++) evbuffer_add_printf(out, "%s\r\n", extra_headers[i]);
    evbuffer_add(out, "\r\n", 2);
    c->state = W_HANDSHAKE;
    return;
  }
  if (finished) return;
  if (what & BEV_EVENT_EOF) {
    conn_fail(c, "connection closed by peer", NULL);
  } else if (what & BEV_EVENT_ERROR) {
    int err = EVUTIL_SOCKET_ERROR();
    conn_fail(c, c->state == W_CONNECTING ? "connect failed" : "socket error",
              err ? evutil_socket_error_to_string(err) : NULL);
  } else {
    conn_fail(c, "timeout", NULL);
  }
}

static void end_cb(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  (void)arg;
  t_end = now_ns();
  measuring = false;
  finished = true;
  event_base_loopbreak(base);
}

static void start_measuring(void) {
  if (measuring || finished) return;
  evtimer_del(setup_timer);
  measuring = true;
  t_start = now_ns();
  struct timeval tv = {(time_t)opt_duration,
                       (suseconds_t)((opt_duration - (double)(time_t)opt_duration) * 1e6)};
  evtimer_add(end_timer, &tv);
  if (n_ready == 0) {
    /* nothing to measure: end at once */
    evtimer_del(end_timer);
    end_cb(-1, 0, NULL);
    return;
  }
  for (int i = 0; i < opt_conns; i++)
    if (wc[i].state == W_READY) send_message(&wc[i]);
}

static void setup_timeout_cb(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  (void)arg;
  for (int i = 0; i < opt_conns; i++)
    if (wc[i].state == W_CONNECTING || wc[i].state == W_HANDSHAKE)
      conn_fail(&wc[i], "setup timed out", NULL);
  start_measuring();
}

static void signal_cb(evutil_socket_t sig, short what, void *arg) {
  (void)sig;
  (void)what;
  (void)arg;
  if (measuring) end_cb(-1, 0, NULL);
  else {
    finished = true;
    t_start = t_end = now_ns();
    event_base_loopbreak(base);
  }
}

/* ---------- main ---------- */

static void usage(FILE *f) {
  fprintf(f,
          "usage: wsload [-c CONNS] [-s BYTES] [-d SECONDS] [-T SETUP_TIMEOUT] [-b]\n"
          "              [-H 'Name: value']... ws://HOST:PORT/PATH\n");
}

static int parse_url(const char *url) {
  if (strncmp(url, "ws://", 5) != 0) return -1;
  const char *h = url + 5;
  const char *slash = strchr(h, '/');
  const char *hend = slash ? slash : h + strlen(h);
  snprintf(url_path, sizeof url_path, "%s", slash ? slash : "/");
  if (strlen(slash ? slash : "/") >= sizeof url_path) return -1;
  const char *colon = NULL;
  if (*h == '[') {
    const char *rb = memchr(h, ']', (size_t)(hend - h));
    if (!rb) return -1;
    if ((size_t)(rb - h - 1) >= sizeof url_host) return -1;
    memcpy(url_host, h + 1, (size_t)(rb - h - 1));
    url_host[rb - h - 1] = '\0';
    if (rb + 1 < hend && rb[1] == ':') colon = rb + 1;
  } else {
    colon = memchr(h, ':', (size_t)(hend - h));
    const char *e = colon ? colon : hend;
    if (e == h || (size_t)(e - h) >= sizeof url_host) return -1;
    memcpy(url_host, h, (size_t)(e - h));
    url_host[e - h] = '\0';
  }
  if (colon) {
    size_t pl = (size_t)(hend - colon - 1);
    if (pl == 0 || pl >= sizeof url_port) return -1;
    memcpy(url_port, colon + 1, pl);
    url_port[pl] = '\0';
  } else {
    strcpy(url_port, "80");
  }
  for (const char *p = url_path; *p; p++)
    if ((unsigned char)*p <= 0x20 || *p == 0x7f) return -1;
  return 0;
}

static bool parse_double(const char *s, double *out) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || *end || v <= 0 || v > 86400) return false;
  *out = v;
  return true;
}

int main(int argc, char **argv) {
  int opt;
  while ((opt = getopt(argc, argv, "c:s:d:T:bH:h")) != -1) {
    switch (opt) {
      case 'c': {
        char *end;
        long v = strtol(optarg, &end, 10);
        if (*end || v < 1 || v > MAX_CONNS) {
          fprintf(stderr, "wsload: -c must be 1..%d\n", MAX_CONNS);
          return 2;
        }
        opt_conns = (int)v;
        break;
      }
      case 's': {
        char *end;
        long long v = strtoll(optarg, &end, 10);
        if (*end || v < 1 || v > (long long)MAX_MSG) {
          fprintf(stderr, "wsload: -s must be 1..%u\n", MAX_MSG);
          return 2;
        }
        opt_size = (size_t)v;
        break;
      }
      case 'd':
        if (!parse_double(optarg, &opt_duration)) {
          fprintf(stderr, "wsload: bad -d\n");
          return 2;
        }
        break;
      case 'T':
        if (!parse_double(optarg, &opt_setup_timeout)) {
          fprintf(stderr, "wsload: bad -T\n");
          return 2;
        }
        break;
      case 'b': opt_binary = true; break;
      case 'H':
        if (n_extra_headers == MAX_EXTRA_HEADERS || !strchr(optarg, ':') ||
            strpbrk(optarg, "\r\n") || optarg[0] == ':') {
          fprintf(stderr, "wsload: bad or too many -H (want 'Name: value')\n");
          return 2;
        }
        extra_headers[n_extra_headers++] = optarg;
        break;
      case 'h': usage(stdout); return 0;
      default: usage(stderr); return 2;
    }
  }
  if (optind != argc - 1 || parse_url(argv[optind]) < 0) {
    usage(stderr);
    return 2;
  }

  struct addrinfo hints = {0}, *ai = NULL;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  int rc = getaddrinfo(url_host, url_port, &hints, &ai);
  if (rc != 0 || !ai) {
    fprintf(stderr, "wsload: cannot resolve %s:%s: %s\n", url_host, url_port, gai_strerror(rc));
    return 2;
  }
  memcpy(&target, ai->ai_addr, ai->ai_addrlen);
  target_len = ai->ai_addrlen;
  freeaddrinfo(ai);

  payload = malloc(opt_size);
  wc = calloc((size_t)opt_conns, sizeof *wc);
  base = event_base_new();
  if (!payload || !wc || !base) {
    fprintf(stderr, "wsload: out of memory\n");
    return 1;
  }
  for (size_t i = 0; i < opt_size; i++) payload[i] = (unsigned char)('a' + (i * 7) % 26);
  uint64_t seed;
  if (RAND_bytes((unsigned char *)&seed, sizeof seed) == 1 && seed) rng_state = seed;
  signal(SIGPIPE, SIG_IGN);

  setup_timer = evtimer_new(base, setup_timeout_cb, NULL);
  end_timer = evtimer_new(base, end_cb, NULL);
  struct event *sigint = evsignal_new(base, SIGINT, signal_cb, NULL);
  struct event *sigterm = evsignal_new(base, SIGTERM, signal_cb, NULL);
  if (!setup_timer || !end_timer || !sigint || !sigterm || event_add(sigint, NULL) < 0 ||
      event_add(sigterm, NULL) < 0) {
    fprintf(stderr, "wsload: cannot create events\n");
    return 1;
  }
  struct timeval stv = {(time_t)opt_setup_timeout,
                        (suseconds_t)((opt_setup_timeout - (double)(time_t)opt_setup_timeout) * 1e6)};
  evtimer_add(setup_timer, &stv);

  for (int i = 0; i < opt_conns && !measuring && !finished; i++) {
    struct wconn *c = &wc[i];
    c->idx = i;
    c->state = W_CONNECTING;
    c->bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (!c->bev) {
      c->state = W_DEAD;
      errors++;
      n_settled++;
      continue;
    }
    bufferevent_setcb(c->bev, read_cb, NULL, event_cb, c);
    bufferevent_set_max_single_read(c->bev, 256 * 1024);
    bufferevent_set_max_single_write(c->bev, 1 << 20);
    if (bufferevent_enable(c->bev, EV_READ | EV_WRITE) < 0 ||
        bufferevent_socket_connect(c->bev, (struct sockaddr *)&target, (int)target_len) < 0) {
      /* bufferevent_socket_connect may already have reported the error through event_cb */
      if (c->state != W_DEAD) conn_fail(c, "connect failed", strerror(errno));
    }
  }
  if (n_settled == opt_conns) start_measuring();

  if (!finished) event_base_dispatch(base);
  if (!finished) { /* loop ran dry: every connection failed */
    t_start = t_end = now_ns();
  }

  int stalled = 0;
  for (int i = 0; i < opt_conns; i++) {
    if (wc[i].state != W_DEAD && wc[i].waiting && t_end > wc[i].sent_ns &&
        t_end - wc[i].sent_ns > 1000000000ull)
      stalled++;
    if (wc[i].bev) bufferevent_free(wc[i].bev);
    free(wc[i].frame);
  }
  double secs = (double)(t_end - t_start) / 1e9;
  double rate = secs > 0 ? (double)msgs / secs : 0.0;
  printf("msgs_per_s=%.0f p50_us=%.1f p99_us=%.1f max_us=%.1f errors=%lu conns=%d msgs=%llu "
         "stalled=%d duration_s=%.2f\n",
         rate, (double)hist_percentile(50) / 1000.0, (double)hist_percentile(99) / 1000.0,
         (double)hist_max / 1000.0, errors, opt_conns, (unsigned long long)msgs, stalled, secs);
  fflush(stdout);

  event_free(setup_timer);
  event_free(end_timer);
  event_free(sigint);
  event_free(sigterm);
  event_base_free(base);
  free(wc);
  free(payload);
  return msgs > 0 ? 0 : 1;
}
