/*
 * guest-app: the app inside the Usher test guest (tests/vm/guest/README.md).
 *
 * A small HTTP/1.1 server (keep-alive, Content-Length bodies, many connections in one poll
 * loop) that mirrors the login contract of the t3 app as Usher's VM minting uses it:
 *
 *   POST /api/auth/bootstrap  body {"credential": "..."} (Content-Type application/json,
 *        exactly that one field, a non-empty string), else 400 "Invalid bootstrap payload.".
 *        The credential is usher1.<unix seconds>.<nonce: 32 hex>.<hex HMAC-SHA256(key = the
 *        secret's 64-char hex text, message = "usher1.<unix seconds>.<nonce>.<vm name>")>. Accepted when the HMAC
 *        matches, |now - t| <= 120 s and it was not accepted before: 200 {"ok":true} with
 *        Set-Cookie: t3_session=<32 random hex>; Path=/; HttpOnly; SameSite=Lax.
 *        Otherwise 401 {"error": "..."}.
 *   GET  /api/auth/session    200 {"authenticated":true} with a live t3_session cookie,
 *                             else 401 {"authenticated":false}.
 *   GET  /healthz             200 "ok" (text/plain), no auth.
 *   GET  (any other path)     200 JSON, no auth: {"vm", "os_user", "hostname",
 *        "forwarded_user" (first X-Forwarded-User value or null), "forwarded_users" (all),
 *        "authenticated" (the request carries a live t3_session), "data_marker" (the data
 *        disk's marker or "none"), "data_marker_created" (written at this boot), "boot_id",
 *        "method", "path"}.
 *   anything else             405 JSON.
 *
 *   guest-app --config /etc/usher/vm.json [--state /run/usher] [--power-button]
 *   guest-app --selftest      checks SHA-256/HMAC against RFC vectors, the credential check
 *                             and the JSON reader; exit 0 when all pass
 *
 * vm.json: {"name": "...", "os_user": "...", "port": N, "secret": "<64 hex>"} (other fields
 * ignored). --state DIR: data-marker (the marker text) and data-marker-created, written by
 * /init. --power-button: power the guest off on the ACPI power button (evdev KEY_POWER), so
 * that `virsh shutdown` works. Logs to stderr (the serial console), never a secret, credential
 * or cookie.
 *
 * Static, no dependencies: SHA-256 and HMAC are implemented here (FIPS 180-4, RFC 2104).
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/input.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CRED_WINDOW_S 120
#define MAX_CONNS 256
#define MAX_HEAD 16384
#define MAX_BODY 65536
#define IDLE_TIMEOUT_S 120
#define MAX_SESSIONS 1024
#define SESSION_TTL_S (30 * 24 * 3600)
#define MAX_USED 1024
#define MAX_INPUTS 8

static void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logmsg(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("guest-app: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

/* ---------------------------------------------------------------- SHA-256 / HMAC */

typedef struct {
  uint32_t h[8];
  uint64_t bytes;
  uint8_t buf[64];
  size_t n;
} sha256_ctx;

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

static uint32_t ror(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void sha256_block(sha256_ctx *c, const uint8_t *p) {
  uint32_t w[64], a, b, cc, d, e, f, g, h;
  for (int i = 0; i < 16; i++)
    w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 |
           p[4 * i + 3];
  for (int i = 16; i < 64; i++) {
    uint32_t s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
    uint32_t s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  a = c->h[0], b = c->h[1], cc = c->h[2], d = c->h[3];
  e = c->h[4], f = c->h[5], g = c->h[6], h = c->h[7];
  for (int i = 0; i < 64; i++) {
    uint32_t t1 = h + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] + w[i];
    uint32_t t2 = (ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & cc) ^ (b & cc));
    h = g, g = f, f = e, e = d + t1, d = cc, cc = b, b = a, a = t1 + t2;
  }
  c->h[0] += a, c->h[1] += b, c->h[2] += cc, c->h[3] += d;
  c->h[4] += e, c->h[5] += f, c->h[6] += g, c->h[7] += h;
}

static void sha256_init(sha256_ctx *c) {
  static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  memcpy(c->h, iv, sizeof iv);
  c->bytes = 0;
  c->n = 0;
}

static void sha256_update(sha256_ctx *c, const void *data, size_t len) {
  const uint8_t *p = data;
  c->bytes += len;
  while (len > 0) {
    size_t take = 64 - c->n < len ? 64 - c->n : len;
    memcpy(c->buf + c->n, p, take);
    c->n += take, p += take, len -= take;
    if (c->n == 64) {
      sha256_block(c, c->buf);
      c->n = 0;
    }
  }
}

static void sha256_final(sha256_ctx *c, uint8_t out[32]) {
  uint64_t bits = c->bytes * 8;
  uint8_t pad = 0x80, zero = 0, len[8];
  sha256_update(c, &pad, 1);
  while (c->n != 56) sha256_update(c, &zero, 1);
  for (int i = 0; i < 8; i++) len[i] = (uint8_t)(bits >> (56 - 8 * i));
  sha256_update(c, len, 8);
  for (int i = 0; i < 8; i++) {
    out[4 * i] = (uint8_t)(c->h[i] >> 24), out[4 * i + 1] = (uint8_t)(c->h[i] >> 16);
    out[4 * i + 2] = (uint8_t)(c->h[i] >> 8), out[4 * i + 3] = (uint8_t)c->h[i];
  }
}

static void hmac_sha256(const void *key, size_t klen, const void *msg, size_t mlen,
                        uint8_t out[32]) {
  uint8_t k[64] = {0}, ipad[64], opad[64], inner[32];
  sha256_ctx c;
  if (klen > 64) {
    sha256_init(&c);
    sha256_update(&c, key, klen);
    sha256_final(&c, k);
  } else {
    memcpy(k, key, klen);
  }
  for (int i = 0; i < 64; i++) ipad[i] = k[i] ^ 0x36, opad[i] = k[i] ^ 0x5c;
  sha256_init(&c);
  sha256_update(&c, ipad, 64);
  sha256_update(&c, msg, mlen);
  sha256_final(&c, inner);
  sha256_init(&c);
  sha256_update(&c, opad, 64);
  sha256_update(&c, inner, 32);
  sha256_final(&c, out);
}

static void to_hex(const uint8_t *b, size_t n, char *out) {
  static const char hx[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) out[2 * i] = hx[b[i] >> 4], out[2 * i + 1] = hx[b[i] & 15];
  out[2 * n] = 0;
}

static int hexval(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* 0 when equal; time independent of where they differ */
static int ct_diff(const uint8_t *a, const uint8_t *b, size_t n) {
  uint8_t d = 0;
  for (size_t i = 0; i < n; i++) d |= a[i] ^ b[i];
  return d;
}

/* ---------------------------------------------------------------- JSON (reading) */

/* A reader for one JSON object of scalar members: validates the whole text as JSON
 * (nested values are checked and skipped) and hands out its top-level members. */
enum jtype { J_STRING, J_NUMBER, J_OBJECT, J_ARRAY, J_TRUE, J_FALSE, J_NULL };
struct jmember {
  char key[64];
  enum jtype type;
  const char *val; /* raw text of the value (strings: inside the quotes) */
  size_t len;
};

static const char *jws(const char *p, const char *e) {
  while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
  return p;
}

/* p at '"': returns past the closing quote, or NULL */
static const char *jstring_end(const char *p, const char *e) {
  for (p++; p < e; p++) {
    unsigned char c = (unsigned char)*p;
    if (c == '"') return p + 1;
    if (c < 0x20) return NULL;
    if (c == '\\') {
      if (++p >= e) return NULL;
      if (*p == 'u') {
        if (e - p < 5) return NULL;
        for (int i = 1; i <= 4; i++)
          if (hexval(p[i]) < 0) return NULL;
        p += 4;
      } else if (!strchr("\"\\/bfnrt", *p)) {
        return NULL;
      }
    }
  }
  return NULL;
}

static const char *jvalue(const char *p, const char *e, int depth, enum jtype *type) {
  p = jws(p, e);
  if (p >= e || depth > 32) return NULL;
  if (*p == '"') {
    *type = J_STRING;
    return jstring_end(p, e);
  }
  if (*p == '{' || *p == '[') {
    char close = *p == '{' ? '}' : ']';
    enum jtype t;
    *type = *p == '{' ? J_OBJECT : J_ARRAY;
    p = jws(p + 1, e);
    if (p < e && *p == close) return p + 1;
    for (;;) {
      if (close == '}') {
        if (p >= e || *p != '"' || !(p = jstring_end(p, e))) return NULL;
        p = jws(p, e);
        if (p >= e || *p++ != ':') return NULL;
      }
      if (!(p = jvalue(p, e, depth + 1, &t))) return NULL;
      p = jws(p, e);
      if (p < e && *p == ',') {
        p = jws(p + 1, e);
        continue;
      }
      if (p < e && *p == close) return p + 1;
      return NULL;
    }
  }
  static const struct {
    const char *word;
    enum jtype type;
  } words[] = {{"true", J_TRUE}, {"false", J_FALSE}, {"null", J_NULL}};
  for (size_t i = 0; i < 3; i++) {
    size_t n = strlen(words[i].word);
    if ((size_t)(e - p) >= n && !memcmp(p, words[i].word, n)) {
      *type = words[i].type;
      return p + n;
    }
  }
  /* number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
  const char *s = p;
  if (p < e && *p == '-') p++;
  if (p < e && *p == '0') p++;
  else if (p < e && isdigit((unsigned char)*p)) while (p < e && isdigit((unsigned char)*p)) p++;
  else return NULL;
  if (p < e && *p == '.') {
    if (++p >= e || !isdigit((unsigned char)*p)) return NULL;
    while (p < e && isdigit((unsigned char)*p)) p++;
  }
  if (p < e && (*p == 'e' || *p == 'E')) {
    p++;
    if (p < e && (*p == '+' || *p == '-')) p++;
    if (p >= e || !isdigit((unsigned char)*p)) return NULL;
    while (p < e && isdigit((unsigned char)*p)) p++;
  }
  *type = J_NUMBER;
  return p > s ? p : NULL;
}

/* Decodes the JSON string text s[0..n) (inside the quotes, already validated) to UTF-8 in
 * out (NUL terminated). -1 when it does not fit or holds a NUL. */
static int junescape(const char *s, size_t n, char *out, size_t cap) {
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned long cp;
    char c = s[i];
    if (c != '\\') {
      if (o + 1 >= cap) return -1;
      out[o++] = c;
      continue;
    }
    c = s[++i];
    if (c != 'u') {
      const char *from = "\"\\/bfnrt", *to = "\"\\/\b\f\n\r\t";
      if (o + 1 >= cap) return -1;
      out[o++] = to[strchr(from, c) - from];
      continue;
    }
    cp = 0;
    for (int k = 1; k <= 4; k++) cp = cp << 4 | (unsigned long)hexval(s[i + k]);
    i += 4;
    if (cp >= 0xD800 && cp <= 0xDBFF && i + 6 < n && s[i + 1] == '\\' && s[i + 2] == 'u') {
      unsigned long lo = 0;
      for (int k = 3; k <= 6; k++) lo = lo << 4 | (unsigned long)hexval(s[i + k]);
      if (lo >= 0xDC00 && lo <= 0xDFFF) {
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        i += 6;
      }
    }
    if (cp == 0) return -1;
    if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xFFFD; /* lone surrogate */
    if (o + 5 >= cap) return -1;
    if (cp < 0x80) {
      out[o++] = (char)cp;
    } else if (cp < 0x800) {
      out[o++] = (char)(0xC0 | cp >> 6), out[o++] = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out[o++] = (char)(0xE0 | cp >> 12), out[o++] = (char)(0x80 | ((cp >> 6) & 0x3F));
      out[o++] = (char)(0x80 | (cp & 0x3F));
    } else {
      out[o++] = (char)(0xF0 | cp >> 18), out[o++] = (char)(0x80 | ((cp >> 12) & 0x3F));
      out[o++] = (char)(0x80 | ((cp >> 6) & 0x3F)), out[o++] = (char)(0x80 | (cp & 0x3F));
    }
  }
  out[o] = 0;
  return (int)o;
}

/* The members of the JSON object text[0..n). Returns their count, -1 when the text is not
 * one JSON object (or has more than max members, or a duplicate or overlong key). */
static int jobject(const char *text, size_t n, struct jmember *m, int max) {
  const char *p = text, *e = text + n;
  int count = 0;
  enum jtype t;
  const char *end = jvalue(p, e, 0, &t);
  if (!end || t != J_OBJECT || jws(end, e) != e) return -1;
  p = jws(p, e) + 1;
  p = jws(p, e);
  if (*p == '}') return 0;
  for (;;) {
    const char *ks = p, *ke = jstring_end(p, e);
    if (count >= max) return -1;
    if (junescape(ks + 1, (size_t)(ke - ks - 2), m[count].key, sizeof m[count].key) < 0)
      return -1;
    for (int i = 0; i < count; i++)
      if (!strcmp(m[i].key, m[count].key)) return -1;
    p = jws(ke, e) + 1; /* ':' */
    p = jws(p, e);
    const char *vs = p;
    p = jvalue(p, e, 1, &m[count].type);
    if (m[count].type == J_STRING) {
      m[count].val = vs + 1;
      m[count].len = (size_t)(p - vs - 2);
    } else {
      m[count].val = vs;
      m[count].len = (size_t)(p - vs);
    }
    count++;
    p = jws(p, e);
    if (*p == '}') return count;
    p = jws(p + 1, e); /* ',' */
  }
}

static const struct jmember *jfind(const struct jmember *m, int n, const char *key) {
  for (int i = 0; i < n; i++)
    if (!strcmp(m[i].key, key)) return &m[i];
  return NULL;
}

/* ---------------------------------------------------------------- JSON (writing) */

struct buf {
  char *p;
  size_t len, cap;
};

static void buf_reserve(struct buf *b, size_t more) {
  if (b->len + more + 1 <= b->cap) return;
  size_t cap = b->cap ? b->cap : 1024;
  while (cap < b->len + more + 1) cap *= 2;
  char *p = realloc(b->p, cap);
  if (!p) {
    logmsg("out of memory");
    abort();
  }
  b->p = p, b->cap = cap;
}

static void buf_add(struct buf *b, const void *data, size_t n) {
  buf_reserve(b, n);
  memcpy(b->p + b->len, data, n);
  b->len += n;
  b->p[b->len] = 0;
}

#define ADD(b, lit) buf_add(b, lit, sizeof(lit) - 1)

static void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void buf_printf(struct buf *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  buf_reserve(b, (size_t)n);
  va_start(ap, fmt);
  vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
}

/* length of the valid UTF-8 sequence at s (0 when invalid) */
static size_t utf8_len(const unsigned char *s, size_t n) {
  size_t len;
  unsigned long cp;
  if (s[0] < 0x80) return 1;
  if ((s[0] & 0xE0) == 0xC0) len = 2, cp = s[0] & 0x1F;
  else if ((s[0] & 0xF0) == 0xE0) len = 3, cp = s[0] & 0x0F;
  else if ((s[0] & 0xF8) == 0xF0) len = 4, cp = s[0] & 0x07;
  else return 0;
  if (len > n) return 0;
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xC0) != 0x80) return 0;
    cp = cp << 6 | (s[i] & 0x3F);
  }
  if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
      cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
    return 0;
  return len;
}

/* a JSON string of s[0..n); bytes that are not UTF-8 become U+FFFD */
static void buf_jstr(struct buf *b, const char *s, size_t n) {
  ADD(b, "\"");
  for (size_t i = 0; i < n;) {
    unsigned char c = (unsigned char)s[i];
    if (c == '"' || c == '\\') {
      ADD(b, "\\");
      buf_add(b, &s[i++], 1);
    } else if (c < 0x20 || c == 0x7F) {
      buf_printf(b, "\\u%04x", c);
      i++;
    } else {
      size_t l = utf8_len((const unsigned char *)s + i, n - i);
      if (l == 0) {
        ADD(b, "\\ufffd");
        i++;
      } else {
        buf_add(b, s + i, l);
        i += l;
      }
    }
  }
  ADD(b, "\"");
}

static void buf_jstrz(struct buf *b, const char *s) { buf_jstr(b, s, strlen(s)); }

/* ---------------------------------------------------------------- the app's state */

static struct {
  char name[256];
  char os_user[256];
  int port;
  char secret[65]; /* the 64 hex characters: the HMAC key is this text */
  char data_marker[128];
  bool data_marker_created;
  char boot_id[64];
} cfg;

static struct session {
  char token[33];
  time_t created;
} sessions[MAX_SESSIONS];
static size_t session_next;

static struct used {
  uint8_t mac[32];
  int64_t t;
  bool set;
} used[MAX_USED];

static void random_bytes(void *p, size_t n) {
  uint8_t *b = p;
  while (n > 0) {
    ssize_t r = getrandom(b, n, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      logmsg("getrandom: %s", strerror(errno));
      abort();
    }
    b += r, n -= (size_t)r;
  }
}

static const char *session_new(void) {
  uint8_t r[16];
  struct session *s = &sessions[session_next++ % MAX_SESSIONS]; /* the oldest goes */
  random_bytes(r, sizeof r);
  to_hex(r, sizeof r, s->token);
  s->created = time(NULL);
  return s->token;
}

static bool session_live(const char *tok, size_t n) {
  time_t now = time(NULL);
  if (n != 32) return false;
  for (size_t i = 0; i < MAX_SESSIONS; i++) {
    struct session *s = &sessions[i];
    if (s->token[0] && now - s->created < SESSION_TTL_S &&
        !ct_diff((const uint8_t *)s->token, (const uint8_t *)tok, 32))
      return true;
  }
  return false;
}

/* Checks a credential; NULL when accepted (and remembered as used), else the reason. */
static const char *credential_check(const char *cred, size_t n, time_t now) {
  static const char prefix[] = "usher1.";
  const size_t pl = sizeof prefix - 1;
  size_t i = pl, ts, te;
  int64_t t = 0;
  uint8_t mac[32], want[32];
  char msg[512];

  if (n < pl || memcmp(cred, prefix, pl)) return "not an usher1 credential";
  ts = i;
  while (i < n && cred[i] >= '0' && cred[i] <= '9') {
    if (i - ts >= 18) return "malformed credential (time)";
    t = t * 10 + (cred[i] - '0');
    i++;
  }
  te = i;
  if (te == ts || i >= n || cred[i] != '.') return "malformed credential (time)";
  i++;
  size_t ns = i;
  while (i < n && i - ns < 32 && hexval(cred[i]) >= 0) i++;
  if (i - ns != 32 || i >= n || cred[i] != '.') return "malformed credential (nonce)";
  i++;
  if (n - i != 64) return "malformed credential (signature)";
  for (int k = 0; k < 32; k++) {
    int hi = hexval(cred[i + 2 * k]), lo = hexval(cred[i + 2 * k + 1]);
    if (hi < 0 || lo < 0) return "malformed credential (signature)";
    mac[k] = (uint8_t)(hi << 4 | lo);
  }
  int ml = snprintf(msg, sizeof msg, "usher1.%.*s.%.32s.%s", (int)(te - ts), cred + ts, cred + ns, cfg.name);
  if (ml < 0 || (size_t)ml >= sizeof msg) return "malformed credential";
  hmac_sha256(cfg.secret, strlen(cfg.secret), msg, (size_t)ml, want);
  if (ct_diff(mac, want, 32)) return "bad signature";
  if (t < (int64_t)now - CRED_WINDOW_S) return "credential expired";
  if (t > (int64_t)now + CRED_WINDOW_S) return "credential from the future (clock skew?)";
  /* Remembered until it is out of the window anyway; when the table is full of live ones
   * the one closest to expiry makes room. */
  struct used *slot = NULL;
  for (size_t k = 0; k < MAX_USED; k++) {
    struct used *u = &used[k];
    if (u->set && u->t < (int64_t)now - CRED_WINDOW_S) u->set = false;
    if (u->set && !ct_diff(u->mac, mac, 32)) return "credential already used";
    if (!u->set) {
      if (!slot || slot->set) slot = u;
    } else if (!slot || (slot->set && u->t < slot->t)) {
      slot = u;
    }
  }
  memcpy(slot->mac, mac, 32);
  slot->t = t;
  slot->set = true;
  return NULL;
}

/* ---------------------------------------------------------------- configuration */

static char *read_file(const char *path, size_t max, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  char *p = malloc(max + 1);
  size_t n = p ? fread(p, 1, max + 1, f) : 0;
  fclose(f);
  if (!p || n > max) {
    free(p);
    errno = EFBIG;
    return NULL;
  }
  p[n] = 0;
  if (len) *len = n;
  return p;
}

static void read_line_file(const char *path, char *out, size_t cap) {
  char *s = read_file(path, 4096, NULL);
  out[0] = 0;
  if (!s) return;
  s[strcspn(s, "\r\n")] = 0;
  snprintf(out, cap, "%s", s);
  free(s);
}

static int load_config(const char *path) {
  size_t n;
  struct jmember m[32];
  char *text = read_file(path, 65536, &n);
  if (!text) {
    logmsg("cannot read %s: %s", path, strerror(errno));
    return -1;
  }
  int count = jobject(text, n, m, 32);
  int rc = -1;
  const struct jmember *name = jfind(m, count, "name"), *user = jfind(m, count, "os_user"),
                       *port = jfind(m, count, "port"), *secret = jfind(m, count, "secret");
  if (count < 0) {
    logmsg("%s is not a JSON object", path);
  } else if (!name || name->type != J_STRING ||
             junescape(name->val, name->len, cfg.name, sizeof cfg.name) <= 0) {
    logmsg("%s: \"name\" missing or not a non-empty string", path);
  } else if (user && (user->type != J_STRING ||
                      junescape(user->val, user->len, cfg.os_user, sizeof cfg.os_user) < 0)) {
    logmsg("%s: \"os_user\" is not a string", path);
  } else if (!port || port->type != J_NUMBER || port->len > 5 ||
             strspn(port->val, "0123456789") < port->len ||
             (cfg.port = atoi(port->val)) < 1 || cfg.port > 65535) {
    logmsg("%s: \"port\" missing or not an integer in 1..65535", path);
  } else if (!secret || secret->type != J_STRING || secret->len != 64 ||
             junescape(secret->val, secret->len, cfg.secret, sizeof cfg.secret) != 64 ||
             strspn(cfg.secret, "0123456789abcdefABCDEF") != 64) {
    logmsg("%s: \"secret\" missing or not 64 hex characters", path);
  } else {
    rc = 0;
  }
  explicit_bzero(text, n);
  free(text);
  return rc;
}

/* ---------------------------------------------------------------- HTTP */

struct conn {
  int fd;
  struct buf in, out;
  size_t out_off;
  time_t last;
  bool closing; /* close once out is written */
  bool peer_done;
};

static struct conn conns[MAX_CONNS];

struct request {
  const char *method, *target;
  size_t method_len, target_len;
  int minor;
  bool keep_alive;
  const char *ctype;
  size_t ctype_len;
  const char *body;
  size_t body_len;
  bool authenticated;
  const char *fwd[8];
  size_t fwd_len[8];
  int nfwd;
};

static const char *reason_of(int status) {
  switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Content Too Large";
    case 431: return "Request Header Fields Too Large";
    case 501: return "Not Implemented";
    case 505: return "HTTP Version Not Supported";
    default: return "Error";
  }
}

static void respond(struct conn *c, const struct request *r, int status, const char *ctype,
                    const char *extra, const char *body, size_t blen) {
  bool head_only = r && r->method_len == 4 && !memcmp(r->method, "HEAD", 4);
  bool keep = r && r->keep_alive && !c->closing;
  buf_printf(&c->out,
             "HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %zu\r\n"
             "cache-control: no-store\r\n%sconnection: %s\r\n\r\n",
             status, reason_of(status), ctype, blen, extra ? extra : "",
             keep ? "keep-alive" : "close");
  if (!head_only) buf_add(&c->out, body, blen);
  if (!keep) c->closing = true;
}

static void respond_json(struct conn *c, const struct request *r, int status, const char *extra,
                         struct buf *body) {
  ADD(body, "\n");
  respond(c, r, status, "application/json", extra, body->p, body->len);
}

static void respond_error(struct conn *c, const struct request *r, int status, const char *msg) {
  struct buf b = {0};
  ADD(&b, "{\"error\":");
  buf_jstrz(&b, msg);
  ADD(&b, "}");
  respond_json(c, r, status, NULL, &b);
  free(b.p);
}

static bool tok_eq(const char *s, size_t n, const char *lit) {
  return strlen(lit) == n && !strncasecmp(s, lit, n);
}

static void handle_bootstrap(struct conn *c, struct request *r) {
  static const char invalid[] = "Invalid bootstrap payload.";
  struct jmember m[4];
  char cred[256];
  size_t ctl = r->ctype_len;
  const char *semi = r->ctype ? memchr(r->ctype, ';', r->ctype_len) : NULL;
  if (semi) ctl = (size_t)(semi - r->ctype);
  while (ctl > 0 && (r->ctype[ctl - 1] == ' ' || r->ctype[ctl - 1] == '\t')) ctl--;
  int n = -1;
  if (r->ctype && tok_eq(r->ctype, ctl, "application/json"))
    n = jobject(r->body, r->body_len, m, 4);
  int cl = -1;
  if (n == 1 && !strcmp(m[0].key, "credential") && m[0].type == J_STRING)
    cl = junescape(m[0].val, m[0].len, cred, sizeof cred);
  /* as t3: trimmed, non-empty */
  char *cs = cred;
  if (cl > 0) {
    while (*cs == ' ' || *cs == '\t' || *cs == '\n' || *cs == '\r') cs++, cl--;
    while (cl > 0 && strchr(" \t\r\n", cs[cl - 1])) cs[--cl] = 0;
  }
  if (cl <= 0) {
    logmsg("bootstrap: 400 invalid payload");
    respond(c, r, 400, "text/plain; charset=utf-8", NULL, invalid, sizeof invalid - 1);
    return;
  }
  const char *why = credential_check(cs, (size_t)cl, time(NULL));
  explicit_bzero(cred, sizeof cred);
  if (why) {
    logmsg("bootstrap: 401 %s", why);
    respond_error(c, r, 401, why);
    return;
  }
  char extra[160];
  snprintf(extra, sizeof extra, "set-cookie: t3_session=%s; Path=/; HttpOnly; SameSite=Lax\r\n",
           session_new());
  logmsg("bootstrap: 200 session issued");
  struct buf b = {0};
  ADD(&b, "{\"ok\":true}");
  respond_json(c, r, 200, extra, &b);
  free(b.p);
}

static void handle_info(struct conn *c, struct request *r) {
  char host[256] = "";
  struct buf b = {0};
  gethostname(host, sizeof host - 1);
  const char *q = memchr(r->target, '?', r->target_len);
  size_t plen = q ? (size_t)(q - r->target) : r->target_len;
  ADD(&b, "{\"vm\":");
  buf_jstrz(&b, cfg.name);
  ADD(&b, ",\"os_user\":");
  buf_jstrz(&b, cfg.os_user);
  ADD(&b, ",\"hostname\":");
  buf_jstrz(&b, host);
  ADD(&b, ",\"forwarded_user\":");
  if (r->nfwd > 0) buf_jstr(&b, r->fwd[0], r->fwd_len[0]);
  else ADD(&b, "null");
  ADD(&b, ",\"forwarded_users\":[");
  for (int i = 0; i < r->nfwd; i++) {
    if (i) ADD(&b, ",");
    buf_jstr(&b, r->fwd[i], r->fwd_len[i]);
  }
  buf_printf(&b, "],\"authenticated\":%s,\"data_marker\":",
             r->authenticated ? "true" : "false");
  buf_jstrz(&b, cfg.data_marker[0] ? cfg.data_marker : "none");
  buf_printf(&b, ",\"data_marker_created\":%s,\"boot_id\":",
             cfg.data_marker_created ? "true" : "false");
  buf_jstrz(&b, cfg.boot_id);
  ADD(&b, ",\"method\":");
  buf_jstr(&b, r->method, r->method_len);
  ADD(&b, ",\"path\":");
  buf_jstr(&b, r->target, plen);
  ADD(&b, "}");
  respond_json(c, r, 200, NULL, &b);
  free(b.p);
}

static void route(struct conn *c, struct request *r) {
  const char *q = memchr(r->target, '?', r->target_len);
  size_t plen = q ? (size_t)(q - r->target) : r->target_len;
  bool get = (r->method_len == 3 && !memcmp(r->method, "GET", 3)) ||
             (r->method_len == 4 && !memcmp(r->method, "HEAD", 4));
  bool post = r->method_len == 4 && !memcmp(r->method, "POST", 4);
#define PATH_IS(lit) (plen == sizeof(lit) - 1 && !memcmp(r->target, lit, plen))
  if (PATH_IS("/api/auth/bootstrap")) {
    if (post) handle_bootstrap(c, r);
    else respond_error(c, r, 405, "POST only");
  } else if (PATH_IS("/api/auth/session")) {
    static const char yes[] = "{\"authenticated\":true}\n", no[] = "{\"authenticated\":false}\n";
    if (r->authenticated) respond(c, r, 200, "application/json", NULL, yes, sizeof yes - 1);
    else respond(c, r, 401, "application/json", NULL, no, sizeof no - 1);
  } else if (!get) {
    respond_error(c, r, 405, "method not allowed");
  } else if (PATH_IS("/healthz")) {
    respond(c, r, 200, "text/plain; charset=utf-8", NULL, "ok\n", 3);
  } else {
    handle_info(c, r);
  }
#undef PATH_IS
}

/* Parses one complete request at the front of c->in and answers it. Returns the bytes it
 * used, 0 when the request is not complete yet, -1 after answering an error (close). */
static ssize_t process(struct conn *c) {
  char *s = c->in.p;
  size_t n = c->in.len;
  char *end = memmem(s, n < MAX_HEAD ? n : MAX_HEAD, "\r\n\r\n", 4);
  if (!end) {
    if (n >= MAX_HEAD) {
      c->closing = true;
      respond_error(c, NULL, 431, "request head too large");
      return -1;
    }
    return 0;
  }
  size_t head_len = (size_t)(end - s) + 4;
  struct request r = {0};
  long long clen = 0;
  bool have_clen = false, chunked = false, conn_close = false, conn_keep = false;

  char *line_end = memmem(s, head_len, "\r\n", 2);
  char *sp1 = memchr(s, ' ', (size_t)(line_end - s));
  char *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(line_end - sp1 - 1)) : NULL;
  if (!sp1 || !sp2 || sp1 == s || sp2 == sp1 + 1 || line_end - sp2 - 1 != 8 ||
      memcmp(sp2 + 1, "HTTP/1.", 7) || (sp2[8] != '0' && sp2[8] != '1')) {
    c->closing = true;
    if (sp2 && line_end - sp2 - 1 == 8 && !memcmp(sp2 + 1, "HTTP/", 5))
      respond_error(c, NULL, 505, "HTTP/1.0 and HTTP/1.1 only");
    else
      respond_error(c, NULL, 400, "malformed request line");
    return -1;
  }
  r.method = s, r.method_len = (size_t)(sp1 - s);
  r.target = sp1 + 1, r.target_len = (size_t)(sp2 - sp1 - 1);
  r.minor = sp2[8] - '0';

  for (char *p = line_end + 2; p < end;) {
    char *le = memmem(p, (size_t)(end + 2 - p), "\r\n", 2);
    char *colon = memchr(p, ':', (size_t)(le - p));
    if (!colon || colon == p || *p == ' ' || *p == '\t') {
      c->closing = true;
      respond_error(c, NULL, 400, "malformed header line");
      return -1;
    }
    for (char *k = p; k < colon; k++)
      if (*k <= ' ' || *k >= 0x7F) {
        c->closing = true;
        respond_error(c, NULL, 400, "malformed header name");
        return -1;
      }
    size_t nl = (size_t)(colon - p);
    char *v = colon + 1, *ve = le;
    while (v < ve && (*v == ' ' || *v == '\t')) v++;
    while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
    size_t vl = (size_t)(ve - v);
    if (tok_eq(p, nl, "content-length")) {
      long long val = 0;
      if (vl == 0 || vl > 12 || strspn(v, "0123456789") < vl) goto bad_length;
      for (size_t i = 0; i < vl; i++) val = val * 10 + (v[i] - '0');
      if (have_clen && val != clen) goto bad_length;
      clen = val, have_clen = true;
    } else if (tok_eq(p, nl, "transfer-encoding")) {
      chunked = true;
    } else if (tok_eq(p, nl, "connection")) {
      /* a list of tokens */
      for (char *t = v; t < ve;) {
        char *te = memchr(t, ',', (size_t)(ve - t));
        if (!te) te = ve;
        char *a = t, *b = te;
        while (a < b && (*a == ' ' || *a == '\t')) a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t')) b--;
        if (tok_eq(a, (size_t)(b - a), "close")) conn_close = true;
        if (tok_eq(a, (size_t)(b - a), "keep-alive")) conn_keep = true;
        t = te + 1;
      }
    } else if (tok_eq(p, nl, "content-type")) {
      r.ctype = v, r.ctype_len = vl;
    } else if (tok_eq(p, nl, "x-forwarded-user")) {
      if (r.nfwd < 8) r.fwd[r.nfwd] = v, r.fwd_len[r.nfwd++] = vl;
    } else if (tok_eq(p, nl, "cookie")) {
      for (char *t = v; t < ve && !r.authenticated;) {
        char *te = memchr(t, ';', (size_t)(ve - t));
        if (!te) te = ve;
        while (t < te && *t == ' ') t++;
        if ((size_t)(te - t) > 11 && !memcmp(t, "t3_session=", 11)) {
          char *tv = t + 11, *tve = te;
          while (tve > tv && tve[-1] == ' ') tve--;
          if (session_live(tv, (size_t)(tve - tv))) r.authenticated = true;
        }
        t = te + 1;
      }
    }
    p = le + 2;
  }
  if (chunked) {
    c->closing = true;
    respond_error(c, NULL, 501, "chunked request bodies are not supported; send Content-Length");
    return -1;
  }
  if (clen > MAX_BODY) {
    c->closing = true;
    respond_error(c, NULL, 413, "request body too large");
    return -1;
  }
  if (n - head_len < (size_t)clen) return 0;
  r.body = s + head_len, r.body_len = (size_t)clen;
  r.keep_alive = r.minor == 1 ? !conn_close : (conn_keep && !conn_close);
  route(c, &r);
  return (ssize_t)(head_len + (size_t)clen);

bad_length:
  c->closing = true;
  respond_error(c, NULL, 400, "bad Content-Length");
  return -1;
}

static void conn_close(struct conn *c) {
  close(c->fd);
  free(c->in.p);
  free(c->out.p);
  memset(c, 0, sizeof *c);
  c->fd = -1;
}

/* Writes what it can; false when the connection is finished (closed). */
static bool conn_flush(struct conn *c) {
  while (c->out_off < c->out.len) {
    ssize_t w = send(c->fd, c->out.p + c->out_off, c->out.len - c->out_off, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
      conn_close(c);
      return false;
    }
    c->out_off += (size_t)w;
  }
  c->out.len = c->out_off = 0;
  if (c->closing || c->peer_done) {
    if (c->closing) shutdown(c->fd, SHUT_WR);
    conn_close(c);
    return false;
  }
  return true;
}

static void conn_read(struct conn *c) {
  char tmp[16384];
  for (;;) {
    ssize_t got = recv(c->fd, tmp, sizeof tmp, 0);
    if (got < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      conn_close(c);
      return;
    }
    if (got == 0) {
      c->peer_done = true;
      break;
    }
    c->last = time(NULL);
    if (!c->closing) buf_add(&c->in, tmp, (size_t)got);
    if (c->in.len > MAX_HEAD + MAX_BODY + 16384) break;
  }
  while (!c->closing && c->in.len > 0) {
    ssize_t used_n = process(c);
    if (used_n <= 0) break;
    memmove(c->in.p, c->in.p + used_n, c->in.len - (size_t)used_n);
    c->in.len -= (size_t)used_n;
  }
  if (c->closing) c->in.len = 0;
  if (c->peer_done && !c->closing && c->in.len > 0 && c->out.len == 0) c->closing = true;
  conn_flush(c);
}

/* ---------------------------------------------------------------- the power button */

static int inputs[MAX_INPUTS], ninputs;

static void open_power_button(void) {
  DIR *d = opendir("/dev/input");
  struct dirent *de;
  if (!d) {
    logmsg("no /dev/input: virsh shutdown will not work (evdev missing?)");
    return;
  }
  while ((de = readdir(d)) && ninputs < MAX_INPUTS) {
    char path[300];
    if (strncmp(de->d_name, "event", 5)) continue;
    snprintf(path, sizeof path, "/dev/input/%s", de->d_name);
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd >= 0) inputs[ninputs++] = fd;
  }
  closedir(d);
  logmsg("watching %d input device(s) for the power button", ninputs);
}

static void read_input(int fd) {
  struct input_event ev[16];
  ssize_t n = read(fd, ev, sizeof ev);
  for (ssize_t i = 0; n > 0 && i < n / (ssize_t)sizeof ev[0]; i++) {
    if (ev[i].type == EV_KEY && ev[i].code == KEY_POWER && ev[i].value == 1) {
      logmsg("power button: powering off");
      sync();
      reboot(RB_POWER_OFF);
      logmsg("power off failed: %s", strerror(errno));
    }
  }
}

/* ---------------------------------------------------------------- self-test */

static int selftest(void) {
  int fails = 0;
  uint8_t mac[32];
  char hex[65];
#define CHECK(cond, what)                           \
  do {                                              \
    if (!(cond)) {                                  \
      fprintf(stderr, "selftest FAILED: %s\n", what); \
      fails++;                                      \
    }                                               \
  } while (0)
  /* FIPS 180-2 */
  sha256_ctx c;
  sha256_init(&c);
  sha256_update(&c, "abc", 3);
  sha256_final(&c, mac);
  to_hex(mac, 32, hex);
  CHECK(!strcmp(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"), "sha256 abc");
  sha256_init(&c);
  char thousand[1000];
  memset(thousand, 'a', sizeof thousand);
  for (int i = 0; i < 1000; i++) sha256_update(&c, thousand, sizeof thousand);
  sha256_final(&c, mac);
  to_hex(mac, 32, hex);
  CHECK(!strcmp(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"), "sha256 million a");
  /* RFC 4231 cases 1, 2 and 6 (key longer than a block) */
  uint8_t k1[20];
  memset(k1, 0x0b, sizeof k1);
  hmac_sha256(k1, 20, "Hi There", 8, mac);
  to_hex(mac, 32, hex);
  CHECK(!strcmp(hex, "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"), "hmac rfc4231 1");
  hmac_sha256("Jefe", 4, "what do ya want for nothing?", 28, mac);
  to_hex(mac, 32, hex);
  CHECK(!strcmp(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"), "hmac rfc4231 2");
  uint8_t k6[131];
  memset(k6, 0xaa, sizeof k6);
  const char *m6 = "Test Using Larger Than Block-Size Key - Hash Key First";
  hmac_sha256(k6, 131, m6, strlen(m6), mac);
  to_hex(mac, 32, hex);
  CHECK(!strcmp(hex, "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"), "hmac rfc4231 6");

  /* the credential check, against a credential made the documented way */
  snprintf(cfg.name, sizeof cfg.name, "usher-carol");
  snprintf(cfg.secret, sizeof cfg.secret, "%s",
           "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff");
  time_t now = 1700000000;
  char msg[320], cred[160];
  static const char nonce[] = "0123456789abcdef0123456789abcdef";
  snprintf(msg, sizeof msg, "usher1.%lld.%s.%s", (long long)now - 5, nonce, cfg.name);
  hmac_sha256(cfg.secret, 64, msg, strlen(msg), mac);
  to_hex(mac, 32, hex);
  snprintf(cred, sizeof cred, "usher1.%lld.%s.%s", (long long)now - 5, nonce, hex);
  CHECK(credential_check(cred, strlen(cred), now) == NULL, "credential accepted");
  CHECK(credential_check(cred, strlen(cred), now) != NULL, "replay refused");
  CHECK(credential_check(cred, strlen(cred), now + 200) != NULL, "expired refused");
  cred[strlen(cred) - 1] ^= 1;
  CHECK(credential_check(cred, strlen(cred), now) != NULL, "bad mac refused");
  CHECK(credential_check("usher1..", 8, now) != NULL, "malformed refused");

  /* JSON */
  struct jmember m[8];
  const char *j = "{\"name\":\"a\\u00e9\\\"b\",\"port\":8080,\"x\":{\"y\":[1,2,{\"z\":null}]},\"t\":true}";
  int n = jobject(j, strlen(j), m, 8);
  char out[64];
  CHECK(n == 4, "json members");
  CHECK(n == 4 && junescape(m[0].val, m[0].len, out, sizeof out) > 0 &&
            !strcmp(out, "a\xc3\xa9\"b"), "json unescape");
  CHECK(n == 4 && m[1].type == J_NUMBER && m[1].len == 4, "json number");
  CHECK(jobject("{\"a\":1,}", 8, m, 8) < 0, "json trailing comma");
  CHECK(jobject("{\"a\":1,\"a\":2}", 13, m, 8) < 0, "json duplicate key");
  CHECK(jobject("{\"a\":1} x", 9, m, 8) < 0, "json trailing garbage");
  CHECK(jobject("[1]", 3, m, 8) < 0, "json not an object");
  memset(&cfg, 0, sizeof cfg);
  memset(used, 0, sizeof used);
  if (!fails) printf("selftest: all passed\n");
  return fails ? 1 : 0;
}

/* ---------------------------------------------------------------- main */

int main(int argc, char **argv) {
  const char *config = "/etc/usher/vm.json", *state = NULL;
  bool power_button = false;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--selftest")) return selftest();
    if (!strcmp(argv[i], "--config") && i + 1 < argc) config = argv[++i];
    else if (!strcmp(argv[i], "--state") && i + 1 < argc) state = argv[++i];
    else if (!strcmp(argv[i], "--power-button")) power_button = true;
    else {
      fprintf(stderr,
              "usage: guest-app [--config FILE] [--state DIR] [--power-button] | --selftest\n");
      return 2;
    }
  }
  setvbuf(stderr, NULL, _IOLBF, 0);
  signal(SIGPIPE, SIG_IGN);
  if (load_config(config) < 0) return 1;
  if (state) {
    char path[4096];
    snprintf(path, sizeof path, "%s/data-marker", state);
    read_line_file(path, cfg.data_marker, sizeof cfg.data_marker);
    snprintf(path, sizeof path, "%s/data-marker-created", state);
    cfg.data_marker_created = access(path, F_OK) == 0;
  }
  read_line_file("/proc/sys/kernel/random/boot_id", cfg.boot_id, sizeof cfg.boot_id);

  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)cfg.port),
                           .sin_addr.s_addr = htonl(INADDR_ANY)};
  if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
      bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lfd, 128) < 0) {
    logmsg("cannot listen on 0.0.0.0:%d: %s", cfg.port, strerror(errno));
    return 1;
  }
  if (power_button) open_power_button();
  for (int i = 0; i < MAX_CONNS; i++) conns[i].fd = -1;
  logmsg("vm %s (os_user %s) listening on 0.0.0.0:%d, data marker %s%s", cfg.name,
         cfg.os_user[0] ? cfg.os_user : "-", cfg.port,
         cfg.data_marker[0] ? cfg.data_marker : "none",
         cfg.data_marker_created ? " (new)" : "");

  struct pollfd pfd[1 + MAX_INPUTS + MAX_CONNS];
  int map[MAX_CONNS];
  for (;;) {
    int np = 0, nc = 0;
    int active = 0;
    for (int i = 0; i < MAX_CONNS; i++) active += conns[i].fd >= 0;
    pfd[np++] = (struct pollfd){.fd = active < MAX_CONNS ? lfd : -1, .events = POLLIN};
    for (int i = 0; i < ninputs; i++) pfd[np++] = (struct pollfd){.fd = inputs[i], .events = POLLIN};
    for (int i = 0; i < MAX_CONNS; i++) {
      struct conn *c = &conns[i];
      if (c->fd < 0) continue;
      short ev = c->out.len > c->out_off ? POLLOUT : 0;
      if (!c->peer_done && !c->closing) ev |= POLLIN;
      map[nc++] = i;
      pfd[np++] = (struct pollfd){.fd = c->fd, .events = ev};
    }
    int r = poll(pfd, (nfds_t)np, 1000);
    if (r < 0 && errno != EINTR) {
      logmsg("poll: %s", strerror(errno));
      return 1;
    }
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    } /* orphans reparented to us, should we run as PID 1 */
    time_t now = time(NULL);
    if (r > 0 && (pfd[0].revents & POLLIN)) {
      for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) break;
        int k = 0;
        while (k < MAX_CONNS && conns[k].fd >= 0) k++;
        if (k == MAX_CONNS) {
          close(fd);
          break;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conns[k].fd = fd;
        conns[k].last = now;
      }
    }
    for (int i = 0; r > 0 && i < ninputs; i++)
      if (pfd[1 + i].revents & POLLIN) read_input(inputs[i]);
    for (int j = 0; j < nc; j++) {
      struct conn *c = &conns[map[j]];
      short re = pfd[1 + ninputs + j].revents;
      if (c->fd < 0 || c->fd != pfd[1 + ninputs + j].fd) continue;
      if (re & POLLOUT) {
        if (!conn_flush(c)) continue;
      }
      if (re & (POLLIN | POLLHUP | POLLERR)) {
        conn_read(c);
        continue;
      }
      if (now - c->last > IDLE_TIMEOUT_S) conn_close(c);
    }
  }
}
