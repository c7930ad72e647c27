#!/usr/bin/python3
"""A second, non-t3 app for Usher's mint tests: "notes", whose login is also "a CLI mints a
one-time credential, an HTTP call trades it for a cookie", but spelled differently everywhere,
so that a test shows Usher needs only configuration for it.

    fake_notes.py serve --store DIR --user OS_USER [--port 0] [--port-file F]
    fake_notes.py otp --store DIR --user OS_USER --home HOME --port PORT

The CLI prints {"ok": true, "data": {"otp": "<one-time code>", "ttl": 120}}: the credential is
at JSON pointer /data/otp. The code is standard base64 and always contains '+' and '/', so it
only survives the exchange if it is percent-encoded in the form body. The CLI checks that
--home is the passwd home of --user (Usher's {home} placeholder) and logs its argv.

The exchange: POST /login, Content-Type application/x-www-form-urlencoded, body exactly
`otp=<code>`. A valid unused code -> 204 with
    Set-Cookie: notes_sid=<hex>; Path=/; Max-Age=86400
(no HttpOnly, no SameSite: Usher must add them). A bad body -> 400, a bad code -> 403.
Every other path needs a live notes_sid: GET / -> 200 JSON {app, user, cookie}; else 401.

Files under --store/<user>/: pending/<sha256> (one per unused code), otp.log (one JSON line per
CLI run: argv, the port it was given, --tag, the names of its environment variables; never
the code), issued.secret (the codes, for the
tests' secret grep), sessions (live session ids), server.log.
"""

import argparse
import base64
import hashlib
import json
import os
import pwd
import secrets
import socket
import sys
import threading
import time
import urllib.parse

COOKIE = "notes_sid"


def append_line(path, line):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def user_dir(store, user):
    d = os.path.join(store, user)
    os.makedirs(os.path.join(d, "pending"), exist_ok=True)
    return d


def otp(args):
    home = pwd.getpwnam(args.user).pw_dir
    if args.home != home:
        sys.stderr.write("notes: --home %r is not %s's home\n" % (args.home, args.user))
        return 2
    d = user_dir(args.store, args.user)
    while True:
        code = base64.b64encode(secrets.token_bytes(24)).decode()
        if "+" in code and "/" in code:
            break
    digest = hashlib.sha256(code.encode()).hexdigest()
    with open(os.path.join(d, "pending", digest), "w") as f:
        f.write(json.dumps({"expires": time.time() + 120}))
    append_line(os.path.join(d, "issued.secret"), code)
    append_line(os.path.join(d, "otp.log"), json.dumps(
        {"time": time.time(), "argv": sys.argv[1:], "port": args.port, "uid": os.getuid(),
         "tag": args.tag, "env": sorted(os.environ)}))
    sys.stdout.write(json.dumps({"ok": True, "data": {"otp": code, "ttl": 120}}) + "\n")
    return 0


class Handler:
    def __init__(self, d, user, sock):
        self.d, self.user, self.sock = d, user, sock
        self.buf = bytearray()

    def fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        self.buf += data

    def run(self):
        try:
            while True:
                while b"\r\n\r\n" not in self.buf:
                    self.fill()
                i = self.buf.index(b"\r\n\r\n")
                head = self.buf[:i].decode("latin-1").split("\r\n")
                del self.buf[:i + 4]
                method, target, _ = head[0].split(" ", 2)
                headers = {}
                cookies = []
                for line in head[1:]:
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
                    if k.strip().lower() == "cookie":
                        cookies.append(v.strip())
                n = int(headers.get("content-length", "0"))
                while len(self.buf) < n:
                    self.fill()
                body = bytes(self.buf[:n])
                del self.buf[:n]
                self.handle(method, target, headers, cookies, body)
        except (EOFError, OSError, ValueError):
            pass
        finally:
            self.sock.close()

    def send(self, status, reason, body=b"", extra=()):
        head = "HTTP/1.1 %d %s\r\n" % (status, reason)
        for k, v in extra:
            head += "%s: %s\r\n" % (k, v)
        if status != 204:
            head += "Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
        self.sock.sendall(head.encode() + b"\r\n" + body)

    def sessions(self):
        try:
            with open(os.path.join(self.d, "sessions")) as f:
                return set(f.read().split())
        except FileNotFoundError:
            return set()

    def handle(self, method, target, headers, cookies, body):
        path = urllib.parse.urlsplit(target).path
        rec = {"time": time.time(), "method": method, "path": path}
        if method == "POST" and path == "/login":
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            try:
                form = urllib.parse.parse_qs(body.decode("ascii"), strict_parsing=True)
            except (ValueError, UnicodeDecodeError):
                form = {}
            if ctype != "application/x-www-form-urlencoded" or list(form) != ["otp"] \
                    or len(form["otp"]) != 1:
                rec["result"] = "bad_body"
                self.send(400, "Bad Request", b'{"error":"bad login form"}')
            else:
                digest = hashlib.sha256(form["otp"][0].encode()).hexdigest()
                try:
                    os.unlink(os.path.join(self.d, "pending", digest))
                    ok = True
                except FileNotFoundError:
                    ok = False
                if not ok:
                    rec["result"] = "bad_otp"
                    self.send(403, "Forbidden", b'{"error":"bad otp"}')
                else:
                    sid = secrets.token_hex(20)
                    append_line(os.path.join(self.d, "sessions"), sid)
                    rec["result"] = "ok"
                    self.send(204, "No Content", extra=[
                        ("Set-Cookie", "notes_theme=light; Path=/"),
                        ("Set-Cookie", "%s=%s; Path=/; Max-Age=86400" % (COOKIE, sid))])
        else:
            live = self.sessions()
            sent = [v for c in cookies for part in c.split(";")
                    for k, _, v in [part.strip().partition("=")] if k == COOKIE]
            if any(s in live for s in sent):
                rec["result"] = "ok"
                self.send(200, "OK", json.dumps({"app": "notes", "user": self.user,
                                                 "uid": os.getuid(), "cookie": cookies}).encode())
            else:
                rec["result"] = "unauthorized"
                self.send(401, "Unauthorized", b'{"error":"login required"}')
        append_line(os.path.join(self.d, "server.log"), json.dumps(rec))


def serve(args):
    d = user_dir(args.store, args.user)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(64)
    port_file = args.port_file or os.path.join(d, "port")
    with open(port_file + ".tmp", "w") as f:
        f.write("%d\n" % sock.getsockname()[1])
    os.rename(port_file + ".tmp", port_file)
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=Handler(d, args.user, conn).run, daemon=True).start()


def main():
    ap = argparse.ArgumentParser(prog="notes")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--store", required=True)
    s.add_argument("--user", required=True)
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--port-file")
    o = sub.add_parser("otp")
    o.add_argument("--store", required=True)
    o.add_argument("--user", required=True)
    o.add_argument("--home", required=True)
    o.add_argument("--port", required=True, type=int)
    o.add_argument("--tag", help="recorded as given (shows how the command line was split)")
    args = ap.parse_args()
    return serve(args) if args.cmd == "serve" else otp(args)


if __name__ == "__main__":
    sys.exit(main())
