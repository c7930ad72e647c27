#!/usr/bin/python3
"""An SSO stand-in for Usher's browser test and demo: the part of an Authentik proxy outpost
that nginx talks to, with a login form of its own instead of a real identity provider.

    sso.py --fd N | --listen HOST:PORT  --users FILE [--log FILE]

FILE is JSON {"alice": "password", ...}: who may sign in. Paths, as Authentik's outpost has
them behind nginx (its documented nginx snippet is what tests/e2e/nginx.conf.in follows):

  GET  /outpost.goauthentik.io/auth/nginx   nginx's auth_request subrequest. With a live
                                            session cookie: 200 and the identity headers
                                            (X-authentik-username: <name>, and -groups, -email,
                                            -name, -uid, as the outpost sends them); else 401.
  GET  /outpost.goauthentik.io/start?rd=P   where nginx sends a 401: redirects to the login
                                            form (Authentik redirects to its flow).
  GET  /outpost.goauthentik.io/login?rd=P   the login form.
  POST /outpost.goauthentik.io/login        name + password: a new session (cookie
                                            usher_sso, HttpOnly, SameSite=Lax), 303 to P;
                                            wrong ones: the form again, 401.
  GET  /outpost.goauthentik.io/sign_out     ends the session, clears the cookie, shows a
                                            "signed out" page.

P must be a path on this site ("/..." but not "//..."); anything else becomes "/". Sessions
live in memory. One JSON line per request goes to --log (never a password or cookie value).
"""

import argparse
import html
import http.server
import json
import secrets
import socket
import socketserver
import sys
import threading
import time
import urllib.parse

PREFIX = "/outpost.goauthentik.io"
COOKIE = "usher_sso"
IDENTITY = "X-authentik-username"


def safe_rd(value):
    """A local path to go back to after signing in; never another site."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        return "/"
    return value


PAGE = """<!doctype html>
<html lang=en><head><meta charset=utf-8><title>{title}</title>
<style>
body {{ font-family: sans-serif; background: #f3f4f6; margin: 0; }}
main {{ max-width: 22rem; margin: 4rem auto; background: #fff; padding: 2rem;
        border-radius: .5rem; box-shadow: 0 1px 4px #0002; }}
h1 {{ font-size: 1.3rem; margin-top: 0; }}
label {{ display: block; margin: .8rem 0 .2rem; }}
input {{ width: 100%; box-sizing: border-box; padding: .4rem; font-size: 1rem; }}
button {{ margin-top: 1.2rem; padding: .5rem 1.2rem; font-size: 1rem; }}
.error {{ color: #b00020; }}
.note {{ color: #555; font-size: .85rem; }}
</style></head>
<body><main>{body}</main></body></html>
"""


class State:
    def __init__(self, users, log_path):
        self.users = users
        self.sessions = {}  # token -> (name, created)
        self.lock = threading.Lock()
        self.log_path = log_path
        self.log_lock = threading.Lock()

    def log(self, **rec):
        if not self.log_path:
            return
        rec["time"] = round(time.time(), 3)
        with self.log_lock, open(self.log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    def new_session(self, name):
        token = secrets.token_urlsafe(24)
        with self.lock:
            self.sessions[token] = (name, time.time())
        return token

    def who(self, token):
        with self.lock:
            s = self.sessions.get(token)
        return s[0] if s else None

    def end(self, token):
        with self.lock:
            s = self.sessions.pop(token, None)
        return s[0] if s else None


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "usher-sso-standin"
    state = None  # set by main()

    def log_message(self, fmt, *args):  # our own JSON log instead of stderr lines
        pass

    # -- helpers
    def session_token(self):
        for value in self.headers.get_all("Cookie") or []:
            for part in value.split(";"):
                name, sep, v = part.strip().partition("=")
                if sep and name == COOKIE:
                    return v
        return None

    def send(self, status, body=b"", ctype="text/html; charset=utf-8", headers=()):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def form_page(self, rd, error=None, name=""):
        err = '<p class=error id=error>%s</p>' % html.escape(error) if error else ""
        body = (
            "<h1>Sign in</h1><p class=note>SSO stand-in (in place of your company's "
            "Authentik): one sign-in for every workspace behind this gateway.</p>%s"
            "<form method=post action='%s/login'>"
            "<input type=hidden name=rd value='%s'>"
            "<label for=username>User name</label>"
            "<input id=username name=username autocomplete=username value='%s' autofocus>"
            "<label for=password>Password</label>"
            "<input id=password name=password type=password autocomplete=current-password>"
            "<button id=sign-in type=submit>Sign in</button></form>"
            % (err, PREFIX, html.escape(rd, quote=True), html.escape(name, quote=True)))
        return PAGE.format(title="Sign in", body=body)

    def query(self):
        return urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)

    # -- routes
    def do_GET(self):
        path = urllib.parse.urlsplit(self.path).path
        rec = {"method": self.command, "path": path}
        try:
            if path == PREFIX + "/auth/nginx":
                name = self.state.who(self.session_token() or "")
                rec["user"] = name
                if name:
                    rec["status"] = 200
                    # As Authentik's outpost answers nginx: the identity in response headers.
                    self.send(200, b"", "text/plain", [
                        (IDENTITY, name), ("X-authentik-groups", "users"),
                        ("X-authentik-email", "%s@example.test" % name),
                        ("X-authentik-name", name.capitalize()),
                        ("X-authentik-uid", name)])
                else:
                    rec["status"] = 401
                    self.send(401, b"", "text/plain")
            elif path == PREFIX + "/start":
                rd = safe_rd(self.query().get("rd", ["/"])[0])
                rec["status"] = 302
                self.send(302, headers=[("Location", "%s/login?rd=%s" % (
                    PREFIX, urllib.parse.quote(rd, safe="")))])
            elif path == PREFIX + "/login":
                rec["status"] = 200
                self.send(200, self.form_page(safe_rd(self.query().get("rd", ["/"])[0])))
            elif path == PREFIX + "/sign_out":
                name = self.state.end(self.session_token() or "")
                rec.update(status=200, user=name)
                body = ("<h1>Signed out</h1><p id=signed-out>You are signed out%s.</p>"
                        "<p><a id=sign-in-again href='/'>Sign in again</a></p>"
                        % (" (" + html.escape(name) + ")" if name else ""))
                self.send(200, PAGE.format(title="Signed out", body=body), headers=[
                    ("Set-Cookie", "%s=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax" % COOKIE)])
            else:
                rec["status"] = 404
                self.send(404, "not found\n", "text/plain")
        finally:
            self.state.log(**rec)

    do_HEAD = do_GET

    def do_POST(self):
        path = urllib.parse.urlsplit(self.path).path
        rec = {"method": "POST", "path": path}
        try:
            n = int(self.headers.get("Content-Length") or 0)
            if n > 65536:
                rec["status"] = 413
                self.send(413, "too large\n", "text/plain", [("Connection", "close")])
                self.close_connection = True
                return
            raw = self.rfile.read(n).decode("utf-8", "replace")
            if path != PREFIX + "/login":
                rec["status"] = 404
                self.send(404, "not found\n", "text/plain")
                return
            form = urllib.parse.parse_qs(raw)
            name = form.get("username", [""])[0].strip()
            password = form.get("password", [""])[0]
            rd = safe_rd(form.get("rd", ["/"])[0])
            want = self.state.users.get(name)
            rec["user"] = name[:64]
            if want is None or not secrets.compare_digest(want.encode(), password.encode()):
                rec["status"] = 401
                self.send(401, self.form_page(rd, "Wrong user name or password.", name))
                return
            token = self.state.new_session(name)
            rec["status"] = 303
            self.send(303, headers=[
                ("Location", rd),
                ("Set-Cookie", "%s=%s; Path=/; HttpOnly; SameSite=Lax" % (COOKIE, token))])
        finally:
            self.state.log(**rec)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

    def __init__(self, sock):
        # An already bound and listening socket (handed over by the stack launcher).
        http.server.HTTPServer.__init__(self, sock.getsockname()[:2], Handler,
                                        bind_and_activate=False)
        self.socket.close()
        self.socket = sock


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--fd", type=int, help="an inherited listening socket")
    where.add_argument("--listen", help="HOST:PORT to bind")
    ap.add_argument("--users", required=True)
    ap.add_argument("--log")
    args = ap.parse_args(argv)
    with open(args.users) as f:
        users = json.load(f)
    if args.fd is not None:
        sock = socket.socket(fileno=args.fd)
    else:
        host, _, port = args.listen.rpartition(":")
        sock = socket.create_server((host, int(port)))
    Handler.state = State(users, args.log)
    server = Server(sock)
    print("sso stand-in: listening on %s:%d" % sock.getsockname()[:2], file=sys.stderr,
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
