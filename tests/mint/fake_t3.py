#!/usr/bin/python3
"""A fake t3 that honours t3's auth contract byte for byte (see "Discovered auth
contract" in seeds/per-user-auto-provisioning-design.md), for Usher's mint tests.

    fake_t3.py serve --host 127.0.0.1 --port 0 --base-dir DIR [--port-file F]
    fake_t3.py auth pairing create --base-dir DIR --ttl 5m --json
    fake_t3.py revoke --base-dir DIR          every session issued so far -> 401
    fake_t3.py fault --base-dir DIR MODE      server fault injection (MODE "none" clears)

The contract, as t3 implements it:
  POST /api/auth/bootstrap  body {"credential": "<one-time token>"} (JSON; exactly that one
                            field, a string that is non-empty once trimmed). Anything else:
                            400 with the body `Invalid bootstrap payload.`. An unknown, used or
                            expired credential: 401. A valid one is consumed and answered 200
                            with `set-cookie: t3_session=<JWT>; Path=/; Expires=<+30d>;
                            HttpOnly; SameSite=Lax`.
  GET /api/auth/session     200 {"authenticated": true, ...} with a live t3_session, else 401.
  anything else             401 without a live t3_session cookie.
Header names are sent lower-case, as t3 (Node) sends them.

With a live cookie (the test surface):
  GET  /          an HTML page naming the OS user and uid this server runs as; its script
                  opens a WebSocket to /ws, sends a message and shows the echo (PAGE_WS)
  GET  /static    a CSS asset with cache-control: public, max-age=86400
  GET  /whoami    JSON {user, uid, gid, pid, cookie (the raw Cookie header(s) received),
                  session_cookies (every t3_session value received), sid, headers}
  POST /echo      reads the body streaming (Content-Length or chunked); JSON {bytes, sha256}
  GET  /read?path=P   tries to read P as this uid: JSON {ok, errno, size}
  GET  /ws        WebSocket echo (RFC 6455); 401 before the upgrade without the cookie

Files under --base-dir (the server and the CLI share them, as t3's state dir):
  secret            HMAC key of the session tokens (created by the server, 0600)
  pairing/<sha256>  one pending one-time credential (only its hash is stored)
  pairing-used/     consumed credentials (a rename makes consumption atomic)
  mints.log         one JSON line per `auth pairing create` (the tests count mints here);
                    no credential in it
  issued.secret     test hook: every credential and session token issued, one per line
                    (0600), so that the tests can grep logs for them; not a log
  server.log        one JSON line per request (no credential or cookie value in it)
  revoked-before    written by `revoke`: sessions issued before this time are refused
  fault             written by `fault`: bootstrap_500, bootstrap_no_cookie,
                    bootstrap_401, session_401 (the session check fails for valid cookies),
                    app_401 (every app path answers 401, even with a live cookie),
                    bootstrap_odd_attrs (the cookie comes with Domain, Path=/api,
                    SameSite=None, Secure and no HttpOnly), bootstrap_slow (the bootstrap
                    answers after 5 s)
  cli-delay-ms      if present, `auth pairing create` sleeps this many ms first (lets the
                    tests hold a mint in flight)
  port              the bound port, when --port-file is not given
"""

import argparse
import base64
import datetime
import email.utils
import hashlib
import hmac
import json
import os
import pwd
import secrets
import socket
import sys
import threading
import time
import urllib.parse

COOKIE = "t3_session"
SESSION_TTL = 30 * 24 * 3600
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
INVALID_PAYLOAD = b"Invalid bootstrap payload."


# --- small helpers ---------------------------------------------------------------

def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def write_atomic(path, data, mode=0o600):
    tmp = "%s.tmp-%d-%d" % (path, os.getpid(), threading.get_ident())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.rename(tmp, path)


def append_line(path, line, mode=0o600):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, mode)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def read_text(path, default=None):
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        return default


def parse_ttl(s):
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    for suffix in ("ms", "s", "m", "h", "d"):
        if s.endswith(suffix) and s[:-len(suffix)].isdigit():
            return int(s[:-len(suffix)]) * units[suffix]
    if s.isdigit():
        return int(s)
    raise SystemExit("fake_t3: bad --ttl %r" % s)


def iso(ts):
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def ensure_base_dir(base):
    os.makedirs(base, mode=0o700, exist_ok=True)
    for sub in ("pairing", "pairing-used"):
        os.makedirs(os.path.join(base, sub), mode=0o700, exist_ok=True)


def whoami():
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    return name, uid


# --- the pairing CLI -------------------------------------------------------------

def pairing_create(args):
    base = args.base_dir
    ensure_base_dir(base)
    delay = read_text(os.path.join(base, "cli-delay-ms"))
    if delay:
        time.sleep(int(delay) / 1000.0)
    ttl = parse_ttl(args.ttl)
    now = time.time()
    credential = secrets.token_urlsafe(24)
    pid = secrets.token_hex(8)
    digest = hashlib.sha256(credential.encode()).hexdigest()
    record = {"id": pid, "created": now, "expires": now + ttl}
    write_atomic(os.path.join(base, "pairing", digest), json.dumps(record).encode())
    name, uid = whoami()
    append_line(os.path.join(base, "issued.secret"), credential)
    append_line(os.path.join(base, "mints.log"), json.dumps(
        {"time": now, "id": pid, "user": name, "uid": uid, "ttl_s": ttl,
         "argv": sys.argv[1:], "env_keys": sorted(os.environ)}), mode=0o644)
    out = {"id": pid, "credential": credential, "role": "client", "expiresAt": iso(now + ttl)}
    if args.json:
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
    else:
        sys.stdout.write("Pairing credential: %s\nExpires: %s\n" % (credential, out["expiresAt"]))
    return 0


# --- sessions ----------------------------------------------------------------------

class Sessions:
    def __init__(self, base):
        self.base = base
        path = os.path.join(base, "secret")
        key = None
        try:
            with open(path, "rb") as f:
                key = f.read()
        except FileNotFoundError:
            pass
        if not key or len(key) < 32:
            key = secrets.token_bytes(32)
            write_atomic(path, key)
        self.key = key
        self.lock = threading.Lock()

    def sign(self, data):
        return b64url(hmac.new(self.key, data.encode(), hashlib.sha256).digest())

    def issue(self):
        now = time.time()
        header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
        claims = {"v": 1, "kind": "session", "sid": secrets.token_hex(12), "sub": "owner",
                  "role": "owner", "method": "browser-session-cookie", "iat": int(now),
                  "exp": int(now) + SESSION_TTL, "iat_ns": time.time_ns()}
        payload = b64url(json.dumps(claims, separators=(",", ":")).encode())
        token = "%s.%s.%s" % (header, payload, self.sign(header + "." + payload))
        append_line(os.path.join(self.base, "issued.secret"), token)
        return token, claims

    def verify(self, token):
        """The claims of a live session token, else None."""
        parts = token.split(".")
        if len(parts) != 3:
            return None
        if not hmac.compare_digest(self.sign(parts[0] + "." + parts[1]), parts[2]):
            return None
        try:
            claims = json.loads(unb64url(parts[1]))
        except ValueError:
            return None
        if claims.get("kind") != "session" or claims.get("exp", 0) <= time.time():
            return None
        revoked = read_text(os.path.join(self.base, "revoked-before"))
        if revoked and claims.get("iat_ns", 0) <= int(revoked):
            return None
        return claims

    def consume(self, credential):
        """True when `credential` is a pending, unexpired one-time credential (now used)."""
        digest = hashlib.sha256(credential.encode()).hexdigest()
        src = os.path.join(self.base, "pairing", digest)
        dst = os.path.join(self.base, "pairing-used", digest)
        try:
            with open(src) as f:
                record = json.load(f)
            os.rename(src, dst)  # atomic: only one consumer wins
        except (FileNotFoundError, ValueError):
            return False
        return record.get("expires", 0) > time.time()


# --- HTTP --------------------------------------------------------------------------

class PeerClosed(Exception):
    pass


class Request:
    def __init__(self, head):
        lines = head.decode("latin-1").split("\r\n")
        self.method, self.target, self.version = lines[0].split(" ", 2)
        self.headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers.append((name.strip(), value.strip(" \t")))
        u = urllib.parse.urlsplit(self.target)
        self.path = u.path
        self.query = urllib.parse.parse_qs(u.query)

    def get(self, name, default=None):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return default

    def get_all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def tokens(self, name):
        return [t.strip().lower() for v in self.get_all(name) for t in v.split(",") if t.strip()]

    def cookies(self):
        """[(name, value)] from every Cookie header, in order."""
        out = []
        for v in self.get_all("cookie"):
            for part in v.split(";"):
                name, sep, value = part.strip().partition("=")
                if sep:
                    out.append((name, value))
        return out


class Server:
    def __init__(self, base, sock):
        self.base = base
        self.sock = sock
        self.sessions = Sessions(base)
        self.log_lock = threading.Lock()
        self.user, self.uid = whoami()

    def log(self, **rec):
        rec["time"] = time.time()
        with self.log_lock:
            append_line(os.path.join(self.base, "server.log"), json.dumps(rec), mode=0o644)

    def fault(self):
        return read_text(os.path.join(self.base, "fault"), "")

    def serve_forever(self):
        while True:
            conn, _ = self.sock.accept()
            threading.Thread(target=Connection(self, conn).run, daemon=True).start()


class Connection:
    def __init__(self, server, sock):
        self.s = server
        self.sock = sock
        self.buf = bytearray()
        self.rec = None

    # -- reading
    def fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise PeerClosed()
        self.buf += data

    def read_head(self):
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                head = bytes(self.buf[:i])
                del self.buf[:i + 4]
                return head
            if len(self.buf) > 1 << 20:
                raise PeerClosed()
            self.fill()

    def read_line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return line
            self.fill()

    def read_exact(self, n):
        while len(self.buf) < n:
            self.fill()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def body_pieces(self, req):
        te = req.tokens("transfer-encoding")
        if te and te[-1] == "chunked":
            while True:
                size = int(self.read_line().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.read_line() != b"":
                        pass
                    return
                while size:
                    if not self.buf:
                        self.fill()
                    n = min(size, len(self.buf))
                    piece = bytes(self.buf[:n])
                    del self.buf[:n]
                    size -= n
                    yield piece
                self.read_line()
        else:
            remaining = int(req.get("content-length", "0"))
            while remaining:
                if not self.buf:
                    self.fill()
                n = min(remaining, len(self.buf))
                piece = bytes(self.buf[:n])
                del self.buf[:n]
                remaining -= n
                yield piece

    # -- writing
    def respond(self, req, status, reason, body=b"", ctype="text/plain; charset=utf-8",
                extra=()):
        if isinstance(body, str):
            body = body.encode()
        head = "HTTP/1.1 %d %s\r\n" % (status, reason)
        for k, v in extra:
            head += "%s: %s\r\n" % (k, v)
        if body or status not in (204, 304):
            head += "content-type: %s\r\n" % ctype
        head += "content-length: %d\r\n" % len(body)
        head += "date: %s\r\n" % email.utils.formatdate(usegmt=True)
        head += "connection: %s\r\n\r\n" % ("keep-alive" if self.keep_alive(req) else "close")
        self.flush_log(status)
        self.sock.sendall(head.encode("latin-1") + (body if req.method != "HEAD" else b""))

    def respond_json(self, req, status, reason, obj, extra=()):
        self.respond(req, status, reason, json.dumps(obj), "application/json", extra)

    @staticmethod
    def keep_alive(req):
        if "close" in req.tokens("connection"):
            return False
        return req.version == "HTTP/1.1"

    # -- the loop
    def run(self):
        try:
            while True:
                req = Request(self.read_head())
                status = self.handle(req)
                if status == 101 or not self.keep_alive(req):
                    break
        except (PeerClosed, ConnectionError, ValueError, OSError):
            pass
        finally:
            try:
                self.sock.close()
            except OSError:
                pass

    def session(self, req):
        """(claims or None, [every t3_session value received])."""
        values = [v for k, v in req.cookies() if k == COOKIE]
        for v in values:
            claims = self.s.sessions.verify(v)
            if claims:
                return claims, values
        return None, values

    def handle(self, req):
        claims, values = self.session(req)
        rec = {"event": "request", "method": req.method, "path": req.path,
               "cookie_names": [k for k, _ in req.cookies()], "session_cookies": len(values),
               "sid": claims and claims["sid"], "content_type": req.get("content-type"),
               "header_names": [k.lower() for k, _ in req.headers]}
        # logged by respond(), before the response leaves: a client that has the response
        # can read the record
        self.rec = rec
        if req.method == "POST" and req.path == "/api/auth/bootstrap":
            status = self.bootstrap(req, rec)
        elif req.path == "/api/auth/session":
            self.drain(req)
            if claims and self.s.fault() != "session_401":
                status = 200
                self.respond_json(req, 200, "OK", {
                    "authenticated": True, "role": claims["role"],
                    "sessionMethod": claims["method"], "expiresAt": iso(claims["exp"])})
            else:
                status = 401
                self.respond_json(req, 401, "Unauthorized", {"authenticated": False})
        elif not claims or self.s.fault() == "app_401":
            self.drain(req)
            status = 401
            self.respond(req, 401, "Unauthorized", "Unauthorized")
        else:
            status, _ = self.app(req, claims, values)
        self.flush_log(status)
        return status

    def flush_log(self, status):
        if self.rec is not None:
            self.rec["status"] = status
            self.s.log(**self.rec)
            self.rec = None

    def drain(self, req):
        for _ in self.body_pieces(req):
            pass

    def bootstrap(self, req, rec):
        raw = b"".join(self.body_pieces(req))
        credential = None
        try:
            ctype = (req.get("content-type") or "").split(";")[0].strip().lower()
            payload = json.loads(raw.decode("utf-8")) if ctype == "application/json" else None
        except (ValueError, UnicodeDecodeError):
            payload = None
        if (isinstance(payload, dict) and list(payload) == ["credential"]
                and isinstance(payload["credential"], str)
                and payload["credential"].strip()):
            credential = payload["credential"].strip()
        if credential is None:
            rec["result"] = "invalid_payload"
            self.respond(req, 400, "Bad Request", INVALID_PAYLOAD)
            return 400
        fault = self.s.fault()
        if fault == "bootstrap_slow":
            time.sleep(5)
        if fault == "bootstrap_500":
            rec["result"] = "fault"
            self.respond_json(req, 500, "Internal Server Error", {"error": "Internal error"})
            return 500
        if fault == "bootstrap_401" or not self.s.sessions.consume(credential):
            rec["result"] = "invalid_credential"
            self.respond_json(req, 401, "Unauthorized",
                              {"error": "Invalid or expired bootstrap credential."})
            return 401
        token, claims = self.s.sessions.issue()
        rec["result"] = "ok"
        rec["new_sid"] = claims["sid"]
        expires = email.utils.formatdate(claims["exp"], usegmt=True)
        extra = []
        if fault == "bootstrap_odd_attrs":
            extra.append(("set-cookie", "%s=%s; Domain=127.0.0.1; Path=/api; Expires=%s; "
                          "SameSite=None; Secure" % (COOKIE, token, expires)))
        elif fault != "bootstrap_no_cookie":
            extra.append(("set-cookie", "%s=%s; Path=/; Expires=%s; HttpOnly; SameSite=Lax"
                          % (COOKIE, token, expires)))
        self.respond_json(req, 200, "OK", {
            "authenticated": True, "role": claims["role"],
            "sessionMethod": claims["method"], "expiresAt": iso(claims["exp"])}, extra)
        return 200

    def app(self, req, claims, values):
        p = req.path
        if p == "/" and req.method in ("GET", "HEAD"):
            self.drain(req)
            page = ("<!doctype html><title>t3 (fake)</title>"
                    "<p>t3 of <b id=user>%s</b> running as uid <b id=uid>%d</b></p>\n"
                    % (self.s.user, self.s.uid)) + PAGE_WS
            self.respond(req, 200, "OK", page, "text/html; charset=utf-8")
            return 200, None
        if p == "/static" and req.method in ("GET", "HEAD"):
            self.drain(req)
            self.respond(req, 200, "OK", "/* an asset */\n", "text/css",
                         [("cache-control", "public, max-age=86400")])
            return 200, None
        if p == "/whoami":
            n = sum(len(x) for x in self.body_pieces(req))
            self.rec["body_bytes"] = n
            self.respond_json(req, 200, "OK", {
                "user": self.s.user, "uid": os.getuid(), "gid": os.getgid(), "pid": os.getpid(),
                "cookie": req.get_all("cookie"), "session_cookies": values,
                "sid": claims["sid"], "method": req.method, "target": req.target,
                "headers": req.headers, "body_bytes": n})
            return 200, n
        if p == "/echo" and req.method in ("POST", "PUT"):
            if "100-continue" in req.tokens("expect"):
                self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            h = hashlib.sha256()
            n = 0
            for piece in self.body_pieces(req):
                h.update(piece)
                n += len(piece)
            self.rec["body_bytes"] = n
            self.respond_json(req, 200, "OK", {"bytes": n, "sha256": h.hexdigest(),
                                               "cookie": req.get_all("cookie"),
                                               "user": self.s.user, "uid": os.getuid()})
            return 200, n
        if p == "/read" and req.method == "GET":
            self.drain(req)
            path = req.query.get("path", [""])[0]
            try:
                with open(path, "rb") as f:
                    data = f.read()
                out = {"ok": True, "size": len(data), "errno": None}
            except OSError as e:
                out = {"ok": False, "errno": e.errno, "error": e.strerror}
            self.respond_json(req, 200, "OK", out)
            return 200, None
        if p == "/ws" and req.method == "GET" and "websocket" in req.tokens("upgrade"):
            return self.websocket(req), None
        self.drain(req)
        self.respond(req, 404, "Not Found", "Not Found")
        return 404, None

    # -- WebSocket echo
    def websocket(self, req):
        key = req.get("sec-websocket-key")
        if not key or req.get("sec-websocket-version") != "13":
            self.respond(req, 400, "Bad Request", "bad websocket handshake")
            return 400
        accept = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
        self.flush_log(101)
        self.sock.sendall(("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
                           "connection: Upgrade\r\nsec-websocket-accept: %s\r\n\r\n"
                           % accept).encode())
        try:
            while True:
                b0, b1 = self.read_exact(2)
                op = b0 & 0x0F
                n = b1 & 0x7F
                if n == 126:
                    n = int.from_bytes(self.read_exact(2), "big")
                elif n == 127:
                    n = int.from_bytes(self.read_exact(8), "big")
                mask = self.read_exact(4) if b1 & 0x80 else None
                payload = self.read_exact(n)
                if mask:
                    payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
                if op == 8:
                    self.sock.sendall(ws_frame(8, payload[:2]))
                    break
                if op == 9:
                    self.sock.sendall(ws_frame(10, payload))
                elif op in (1, 2):
                    self.sock.sendall(ws_frame(op, payload))
        except (PeerClosed, OSError):
            pass
        return 101


# The page's live part (for the browser test, tests/e2e): it opens a WebSocket to /ws on the
# page's own origin, sends one message and shows what comes back, so a person (or a headless
# browser) sees the upgrade work through every proxy in front of this app.
PAGE_WS = """<p>WebSocket <b id=ws-state>connecting</b></p>
<p>sent <code id=ws-sent></code><br>received <code id=ws-echo></code></p>
<script>
(function () {
  var $ = function (id) { return document.getElementById(id); };
  var msg = "hello from " + $("user").textContent + " " + Math.random().toString(36).slice(2, 10);
  var ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
  ws.onopen = function () { $("ws-state").textContent = "open"; $("ws-sent").textContent = msg; ws.send(msg); };
  ws.onmessage = function (e) { $("ws-echo").textContent = e.data; };
  ws.onerror = function () { $("ws-state").textContent = "error"; };
  ws.onclose = function (e) { $("ws-state").textContent = "closed (" + e.code + ")"; };
})();
</script>
"""


def ws_frame(op, payload):
    head = bytearray([0x80 | op])
    n = len(payload)
    if n < 126:
        head.append(n)
    elif n < 65536:
        head.append(126)
        head += n.to_bytes(2, "big")
    else:
        head.append(127)
        head += n.to_bytes(8, "big")
    return bytes(head) + payload


def serve(args):
    base = args.base_dir
    ensure_base_dir(base)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(256)
    port = sock.getsockname()[1]
    write_atomic(args.port_file or os.path.join(base, "port"), b"%d\n" % port, 0o644)
    server = Server(base, sock)
    server.log(event="listening", port=port, user=server.user, uid=server.uid)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def revoke(args):
    write_atomic(os.path.join(args.base_dir, "revoked-before"), b"%d\n" % time.time_ns(), 0o644)
    return 0


def fault(args):
    path = os.path.join(args.base_dir, "fault")
    if args.mode == "none":
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    else:
        write_atomic(path, args.mode.encode() + b"\n", 0o644)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="t3", description="fake t3 (auth contract only)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--base-dir", required=True)
    s.add_argument("--port-file")
    a = sub.add_parser("auth")
    asub = a.add_subparsers(dest="auth_cmd", required=True)
    p = asub.add_parser("pairing")
    psub = p.add_subparsers(dest="pairing_cmd", required=True)
    c = psub.add_parser("create")
    c.add_argument("--base-dir", required=True)
    c.add_argument("--ttl", default="5m")
    c.add_argument("--json", action="store_true")
    r = sub.add_parser("revoke")
    r.add_argument("--base-dir", required=True)
    f = sub.add_parser("fault")
    f.add_argument("--base-dir", required=True)
    f.add_argument("mode", choices=["none", "bootstrap_500", "bootstrap_no_cookie",
                                    "bootstrap_401", "session_401", "app_401",
                                    "bootstrap_odd_attrs", "bootstrap_slow"])
    args = ap.parse_args(argv)
    if args.cmd == "serve":
        return serve(args)
    if args.cmd == "auth":
        return pairing_create(args)
    if args.cmd == "revoke":
        return revoke(args)
    return fault(args)


if __name__ == "__main__":
    sys.exit(main())
