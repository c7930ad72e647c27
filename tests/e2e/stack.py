#!/usr/bin/python3
"""The whole path on loopback, as a person meets it: nginx as the SSO edge (auth_request to an
SSO stand-in, tests/e2e/sso.py), usher-dispatch with minting on through real sudo, and one
fake t3 per user running as that user's own OS account. Used by the browser test
(test_browser.py) and by `scripts/demo`.

    stack.py demo [--port N] [--check]     (as root) run it until Ctrl-C, or check it and exit

The users, the sudoers rule, the mint wrapper and the processes run as users come from the
mint tests' harness (tests/mint/mint_harness.py), pointed at names of our own (`use_names`):

  prefix usher-e2e-  (the browser test)   prefix usher-demo-  (the demo)
  OS users <prefix>alice, <prefix>bob (mapped, members of <prefix>users), <prefix>eve
  (unmapped, the harness's outsider), <prefix>disp (runs usher-dispatch); a sudoers drop-in
  /etc/sudoers.d/<prefix without the dash>; files under /tmp/<prefix>stack. Everything is
  removed on close, and leftovers of a killed run are removed before a new one starts.

At the SSO, alice, bob and mallory can sign in (password: the name); alice and bob are mapped
to their OS users, mallory is not (Usher answers her with its 403 "no workspace" page).
"""

import argparse
import http.client
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "mint"))

import mint_harness as mh  # noqa: E402
from testlib import free_port  # noqa: E402  (mint_harness put tests/ on the path)

NGINX = "/usr/sbin/nginx"
PY = "/usr/bin/python3"
PEOPLE = {"alice": "alice", "bob": "bob", "mallory": "mallory"}  # SSO name -> password
MAPPED_PEOPLE = ("alice", "bob")
UNMAPPED = "mallory"
SSO_USER = "nobody"
OUTPOST = "/outpost.goauthentik.io"


def use_names(prefix):
    """Points the mint harness at our own users, group, sudoers file, lock and directory, so
    that a stack never touches (or waits for) the mint tests' usher-t-* users."""
    if not re.fullmatch(r"[a-z][a-z0-9-]{1,20}-", prefix):
        raise ValueError("bad prefix %r" % prefix)
    base = prefix.rstrip("-")
    mh.PREFIX = prefix
    mh.GROUP = prefix + "users"
    mh.DISP = prefix + "disp"
    mh.MAPPED = {who: prefix + who for who in MAPPED_PEOPLE}
    mh.OUTSIDER = prefix + "eve"
    mh.ROOT = "/tmp/%sstack" % prefix
    mh.SUDOERS_FILE = "/etc/sudoers.d/" + base  # no '.' in the name: sudo would skip it
    lock_dir = "/run/lock" if os.path.isdir("/run/lock") else "/tmp"
    mh.LOCK_FILE = os.path.join(lock_dir, "%s.lock" % base)


class _Env(mh.TestEnv):
    """The mint harness's environment, whose clean-up (run under its lock, before set-up and at
    close) also ends what a killed stack left running outside the harness: its nginx (root)
    and SSO stand-in (nobody), found by our directory in their command lines."""

    def cleanup(self):
        end_processes_under(mh.ROOT + "/")
        super().cleanup()


def end_processes_under(path):
    """SIGTERM (then SIGKILL) the processes started from `path`/bin/ (the harness's copies, our
    SSO stand-in) or an nginx master whose command line names `path`, and their children
    (nginx's workers); by pid, only those."""
    def scan():
        found = {}
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == os.getpid():
                continue
            try:
                with open("/proc/%s/cmdline" % d, "rb") as f:
                    cmdline = f.read()
                with open("/proc/%s/status" % d) as f:
                    status = f.read()
            except OSError:
                continue
            ppid = int(re.search(r"^PPid:\s+(\d+)", status, re.M).group(1))
            zombie = re.search(r"^State:\s+Z", status, re.M)
            ours = (path + "bin/").encode() in cmdline or (
                cmdline.startswith(b"nginx: master process") and path.encode() in cmdline)
            if not zombie:
                found[int(d)] = (ppid, ours)
        named = {pid for pid, (_, hit) in found.items() if hit}
        return named | {pid for pid, (ppid, _) in found.items() if ppid in named}

    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = scan()
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        try:
            mh.wait_for(lambda: not scan(), 5, 0.05, "leftover processes under %s" % path)
            return
        except TimeoutError:
            continue


def http_get(port, target, timeout=2.0):
    """(status, body) of a plain GET to 127.0.0.1:port, or None when nothing answers."""
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        c.request("GET", target)
        r = c.getresponse()
        body = r.read()
        c.close()
        return r.status, body
    except OSError:
        return None


class Stack:
    def __init__(self, prefix="usher-e2e-", port=None, fixed_port=False, say=None):
        """port: the nginx port to try first (None: probe); fixed_port: fail rather than
        take another one when it is busy."""
        self.prefix = prefix
        self.want_port = port
        self.fixed_port = fixed_port
        self.say = say or (lambda msg: None)
        self.env = None
        self.backends = {}
        self.usher = None
        self.sso = None
        self.nginx = None
        self.port = None
        self.sso_port = None

    # -- lifecycle
    def __enter__(self):
        return self if self.env is not None else self.start()

    def __exit__(self, *exc):
        self.close()

    def start(self):
        use_names(self.prefix)
        for tool in (NGINX, PY):
            if not os.path.exists(tool):
                raise RuntimeError("%s missing: run scripts/install-deps" % tool)
        t0 = time.monotonic()
        try:
            self.say("setting up OS users %s, %s and the sudoers rule"
                     % tuple(mh.MAPPED[w] for w in MAPPED_PEOPLE))
            self.env = _Env()  # takes the lock, removes leftovers, creates users
            self.dir = mh.ROOT
            for os_user in mh.MAPPED.values():
                pwd.getpwnam(os_user)  # the harness used our names (use_names)
            for who in MAPPED_PEOPLE:
                self.backends[who] = self.env.t3_backend(who)
            self.usher = self.env.new_usher(
                {who: self.backends[who] for who in MAPPED_PEOPLE},
                config={"server": {"trusted_proxies": "127.0.0.1/32"}})
            self.usher.start()
            self._start_sso()
            self._start_nginx()
        except BaseException:
            self.close()
            raise
        self.say("stack up in %.1fs" % (time.monotonic() - t0))
        return self

    def close(self):
        for proc in (self.nginx, self.sso):
            if proc is not None:
                mh.stop_process(proc)
        self.nginx = self.sso = None
        if self.env is not None:
            env, self.env = self.env, None
            env.close()  # usher-dispatch, backends, users, sudoers, files

    def problems(self):
        """What went wrong in usher-dispatch (crash, sanitizer report, secret in its log)."""
        out = []
        if self.usher is not None:
            out += self.usher.problems()
        for name, proc in (("nginx", self.nginx), ("the SSO stand-in", self.sso)):
            if proc is not None and proc.poll() is not None:
                out.append("%s exited (status %s)" % (name, proc.returncode))
        return out

    def dead(self):
        """The stack's processes that have exited."""
        procs = {"nginx": self.nginx, "the SSO stand-in": self.sso,
                 "usher-dispatch": self.usher.proc if self.usher else None}
        procs.update(("fake t3 of " + w, b.proc) for w, b in self.backends.items())
        return [name for name, p in procs.items() if p is not None and p.poll() is not None]

    # -- the SSO stand-in, as an unprivileged user on a socket we bound
    def _start_sso(self):
        d = os.path.join(self.dir, "sso")
        mh._mkdir(d, 0o755, owner=SSO_USER)
        shutil.copyfile(os.path.join(HERE, "sso.py"), self.env.bin("sso.py"))
        os.chmod(self.env.bin("sso.py"), 0o755)
        users = os.path.join(d, "users.json")
        mh._write(users, json.dumps(PEOPLE), 0o644)
        self.sso_log = os.path.join(d, "sso.log")
        self.sso_stderr = os.path.join(d, "sso.stderr")
        sock = socket.create_server(("127.0.0.1", 0))
        self.sso_port = sock.getsockname()[1]
        pw = pwd.getpwnam(SSO_USER)
        with open(self.sso_stderr, "ab") as err:
            self.sso = subprocess.Popen(
                [PY, self.env.bin("sso.py"), "--fd", str(sock.fileno()), "--users", users,
                 "--log", self.sso_log],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, pass_fds=[sock.fileno()],
                start_new_session=True, user=pw.pw_uid, group=pw.pw_gid, extra_groups=[],
                cwd="/", env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
        sock.close()
        mh.wait_for(self._sso_up, 10, 0.02, "the SSO stand-in")

    def _sso_up(self):
        if self.sso.poll() is not None:
            raise RuntimeError("the SSO stand-in exited: %s" % _tail(self.sso_stderr))
        r = http_get(self.sso_port, OUTPOST + "/login")
        return r is not None and r[0] == 200

    # -- nginx: it cannot bind port 0 and say which port it got, so probe and retry
    def _start_nginx(self):
        d = os.path.join(self.dir, "nginx")
        for sub in ("", "tmp"):
            mh._mkdir(os.path.join(d, sub), 0o755)
        with open(os.path.join(HERE, "nginx.conf.in")) as f:
            template = f.read()
        self.nginx_dir = d
        self.nginx_error = os.path.join(d, "error.log")
        tried = []
        for attempt in range(10):
            if attempt == 0 and self.want_port:
                port = self.want_port
            elif self.fixed_port:
                break
            else:
                port = free_port()
            tried.append(port)
            token = secrets.token_hex(8)
            conf = template
            for k, v in {"DIR": d, "PORT": port, "USHER_PORT": self.usher.proxy_port,
                         "SSO_PORT": self.sso_port, "READY_TOKEN": token}.items():
                conf = conf.replace("@%s@" % k, str(v))
            left = re.findall(r"@[A-Z_]+@", conf)
            if left:
                raise RuntimeError("nginx.conf.in: unknown placeholders %s" % left)
            conf_file = os.path.join(d, "nginx.conf")
            mh._write(conf_file, conf)
            mark = os.path.getsize(self.nginx_error) if os.path.exists(self.nginx_error) else 0
            with open(os.path.join(d, "nginx.stderr"), "ab") as err:
                proc = subprocess.Popen(
                    [NGINX, "-p", d + "/", "-c", conf_file, "-e", self.nginx_error],
                    stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True,
                    env={"PATH": mh.SYS_PATH, "LANG": "C.UTF-8"})
            try:
                state = mh.wait_for(lambda: self._nginx_state(proc, port, token), 10, 0.02,
                                    "nginx on port %d" % port)
            except TimeoutError:
                mh.stop_process(proc)
                raise
            if state == "ready":
                self.nginx, self.port = proc, port
                return
            errors = _read_from(self.nginx_error, mark)
            if "Address already in use" not in errors:
                raise RuntimeError("nginx did not start (exit %s):\n%s%s" % (
                    proc.returncode, errors, _tail(os.path.join(d, "nginx.stderr"))))
            if not self.fixed_port:
                self.say("port %d is taken, trying another" % port)
        if self.fixed_port:
            raise RuntimeError("nginx cannot listen on 127.0.0.1:%d: the port is taken" % port)
        raise RuntimeError("nginx: no free port (tried %s)" % tried)

    @staticmethod
    def _nginx_state(proc, port, token):
        if proc.poll() is not None:
            return "exited"
        r = http_get(port, "/__usher_e2e_ready", 0.5)
        if r is not None and r[0] == 200 and r[1].strip() == token.encode():
            return "ready"
        return None

    # -- facts a test asserts on
    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def os_user(self, who):
        return mh.MAPPED[who]

    def uid(self, who):
        return pwd.getpwnam(mh.MAPPED[who]).pw_uid

    def mints_log(self, who):
        return os.path.join(self.backends[who].base, "mints.log")

    def server_log(self, who):
        return os.path.join(self.backends[who].base, "server.log")

    def mint_count(self, who):
        return self.backends[who].mint_count()

    def logs(self):
        """Every log of the stack, for a person reading a failure."""
        out = {"usher-dispatch": self.usher.log_file if self.usher else None,
               "nginx error": getattr(self, "nginx_error", None),
               "nginx access": os.path.join(self.nginx_dir, "access.log")
               if hasattr(self, "nginx_dir") else None,
               "sso": getattr(self, "sso_log", None)}
        for who, b in self.backends.items():
            out["t3 of %s" % who] = os.path.join(b.base, "server.log")
        return {k: v for k, v in out.items() if v and os.path.exists(v)}

    def log_tails(self, lines=25):
        return "\n".join("---- %s (%s), last lines ----\n%s" % (name, path, _tail(path, lines))
                         for name, path in self.logs().items())


def _read_from(path, offset):
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _tail(path, lines=20):
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# --- a browser without a browser: the HTTP-level check of the stack (demo --check, tests) ---

class Visitor:
    """One cookie jar talking to the stack's nginx over HTTP/1.1, following nothing by itself."""

    def __init__(self, stack):
        self.stack = stack
        self.cookies = {}

    def request(self, method, target, body=None, headers=()):
        c = http.client.HTTPConnection("127.0.0.1", self.stack.port, timeout=20)
        hdrs = {"Accept": "text/html", "Host": "127.0.0.1:%d" % self.stack.port}
        if self.cookies:
            hdrs["Cookie"] = "; ".join("%s=%s" % kv for kv in self.cookies.items())
        hdrs.update(dict(headers))
        c.request(method, target, body=body, headers=hdrs)
        r = c.getresponse()
        text = r.read().decode("utf-8", "replace")
        for value in r.headers.get_all("Set-Cookie") or []:
            name, _, rest = value.partition("=")
            val = rest.split(";")[0]
            if re.search(r"(?i);\s*max-age=0\b", value) or val == "":
                self.cookies.pop(name.strip(), None)
            else:
                self.cookies[name.strip()] = val
        c.close()
        return r.status, r.headers, text

    def sign_in(self, who):
        form = urllib.parse.urlencode({"username": who, "password": PEOPLE[who], "rd": "/"})
        return self.request("POST", OUTPOST + "/login", form,
                            {"Content-Type": "application/x-www-form-urlencoded"})


def smoke_check(stack, say=print, fresh=True):
    """The path over plain HTTP: sign-in redirect, each person's own workspace, one mint per
    person, a forged identity header ignored, the unmapped person's 403. Returns failures."""
    failures = []

    def check(ok, what, detail=""):
        if ok:
            say("ok: " + what)
        else:
            failures.append("%s%s" % (what, (": " + detail) if detail else ""))
            say("FAILED: %s%s" % (what, (" (" + detail + ")") if detail else ""))

    anon = Visitor(stack)
    status, headers, _ = anon.request("GET", "/")
    check(status == 302 and (headers.get("Location") or "").startswith(OUTPOST + "/start"),
          "not signed in: / redirects to the SSO", "%s %s" % (status, headers.get("Location")))
    status, _, text = anon.request("GET", "/", headers={"X-authentik-username": "alice"})
    check(status == 302, "not signed in, forged X-authentik-username: still sent to sign in",
          str(status))
    for who in MAPPED_PEOPLE:
        v = Visitor(stack)
        before = {w: stack.mint_count(w) for w in MAPPED_PEOPLE}
        status, headers, _ = v.sign_in(who)
        check(status == 303 and "usher_sso" in v.cookies, "%s signs in at the SSO" % who,
              str(status))
        other = [w for w in MAPPED_PEOPLE if w != who][0]
        for n in range(2):
            # the second visit forges the other person's name: nginx must replace it
            forged = {"X-authentik-username": other} if n else {}
            status, _, text = v.request("GET", "/", headers=forged)
            want = "t3 of <b id=user>%s</b> running as uid <b id=uid>%d</b>" % (
                stack.os_user(who), stack.uid(who))
            check(status == 200 and want in text, "%s lands in %s's own app%s" % (
                who, who, " (forged header for %s ignored)" % other if n else ""),
                "%s %s" % (status, text[:200]))
        after = {w: stack.mint_count(w) for w in MAPPED_PEOPLE}
        # On a fresh stack exactly one; after a browser minted for the same person less than
        # [mint] reuse_window ago, Usher hands out that session instead (none).
        minted = after[who] - before[who]
        check((minted == 1 if fresh else minted <= 1) and after[other] == before[other],
              "%s: %s for %s, none for %s" % (who, "one mint" if fresh else "at most one mint",
                                             who, other),
              "mints before %s after %s" % (before, after))
    v = Visitor(stack)
    v.sign_in(UNMAPPED)
    status, headers, text = v.request("GET", "/")
    check(status == 403 and "no workspace" in text and
          (headers.get("Content-Type") or "").startswith("text/html"),
          "%s (signed in, not mapped) gets Usher's 403 'no workspace' page" % UNMAPPED,
          "%s %s" % (status, text[:200]))
    return failures


# --- the demo --------------------------------------------------------------------------

def demo(args):
    if os.geteuid() != 0:
        print("demo: this stack creates two OS users and a sudoers rule, so it needs root "
              "(sudo scripts/demo); `scripts/demo --plain` runs without", file=sys.stderr)
        return 2
    say = lambda msg: print("demo: " + msg, flush=True)  # noqa: E731
    # Ctrl-C and SIGTERM only raise a flag: tearing down (users, sudoers rule) is never cut short.
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.append(1))
    try:
        s = Stack("usher-demo-", port=args.port, fixed_port=args.fixed_port, say=say).start()
    except (RuntimeError, TimeoutError) as e:
        print("demo: could not start: %s" % e, file=sys.stderr)
        return 1
    with s:
        if args.check:
            failures = smoke_check(s, fresh=True) + s.problems()
            if failures:
                print("\ndemo check FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
                print(s.log_tails(), file=sys.stderr)
                return 1
            print("demo check: all good")
            return 0
        print_welcome(s)
        while not stop and not s.dead():
            time.sleep(0.2)
        if not stop:
            print("demo: stopping: %s exited" % ", ".join(s.dead()), file=sys.stderr)
            print(s.log_tails(), file=sys.stderr)
    print("\ndemo: stopped; the demo users, sudoers rule and files are removed")
    return 0 if stop else 1


def print_welcome(s):
    a, b = (s.os_user(w) for w in MAPPED_PEOPLE)
    print("""
Usher demo: open  %(url)s/  in a browser.

  Sign in at the SSO stand-in as       and you land in
    alice / alice                      alice's app, running as OS user %(a)s (uid %(ua)d)
    bob / bob                          bob's app, running as OS user %(b)s (uid %(ub)d)
    mallory / mallory                  Usher's "no workspace for you" page (not in the map)
  Sign out:  %(url)s%(outpost)s/sign_out   (then sign in as someone else, same browser)

  The app page opens a WebSocket back to its server and shows the echo. Nobody sees a
  pairing screen: Usher minted the app's session through sudo as that user and injected it.

  On another machine? ssh -L %(port)d:127.0.0.1:%(port)d <this host>, then open
  http://127.0.0.1:%(port)d/ there.

  What runs (all on 127.0.0.1):
    nginx (SSO edge)   :%(port)d       auth_request -> SSO stand-in :%(sso)d
    usher-dispatch     :%(usher)d      as %(disp)s, admin http://127.0.0.1:%(admin)d/metrics
    fake t3 of alice   :%(pa)d      as %(a)s
    fake t3 of bob     :%(pb)d      as %(b)s
  Logs: %(usher_log)s, %(dir)s/nginx/, %(dir)s/sso/
  User map: %(map)s (remove bob's line: bob loses access at once)

Ctrl-C stops everything and removes the demo users.""" % dict(
        url=s.url, outpost=OUTPOST, port=s.port, sso=s.sso_port, a=a, b=b,
        ua=s.uid("alice"), ub=s.uid("bob"), usher=s.usher.proxy_port,
        admin=s.usher.admin_port, disp=mh.DISP, pa=s.backends["alice"].port,
        pb=s.backends["bob"].port, usher_log=s.usher.log_file, dir=s.dir,
        map=s.usher.map_file), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Usher's end-to-end stack on loopback")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="run the stack for a person with a browser")
    d.add_argument("--port", type=int, default=8080, help="nginx's port (default 8080)")
    d.add_argument("--fixed-port", action="store_true",
                   help="fail when --port is taken instead of picking a free one")
    d.add_argument("--check", action="store_true", help="check it over HTTP and exit")
    args = ap.parse_args(argv)
    return demo(args)


if __name__ == "__main__":
    sys.exit(main())
