"""Harness for Usher's mint tests: real OS users, real sudo, fake apps run under their users'
uids, usher-dispatch run as an unprivileged dispatcher user, and a browser with a real cookie
jar.

What a test session sets up (TestEnv; needs root) and removes again at the end, also after an
interrupted earlier run (every step is idempotent, and leftovers are removed first):

  users     usher-t-alice, usher-t-bob (regular accounts, homes in /home, mode 0700, members
            of the group usher-t-users), usher-t-eve (a regular account outside that group),
            usher-t-disp (a system account: the dispatcher's user)
  files     ROOT = /tmp/usher-mint-tests, root-owned and 0755 so that those users can read
            what they must: bin/ (fake_t3.py, fake_notes.py, fail_mint.py, the t3 launcher,
            a copy of usher-dispatch), libexec/t3-mint (scripts/t3-mint with its T3_BIN line
            pointed at bin/t3), one directory per usher-dispatch instance
  sudoers   /etc/sudoers.d/usher-mint-tests (0440, checked with visudo -cf first):
            usher-t-disp may run libexec/t3-mint, with no arguments, as members of
            usher-t-users, without a password; nothing else

Mint test sessions (one per CTest file) are serialised by a lock file, since they share user
names. Processes are started with subprocess's user=/group=/extra_groups= (what runuser does,
but the pid we hold is the process itself).
"""

import base64
import email.message
import fcntl
import grp
import hashlib
import http.cookiejar
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))
from testlib import parse_logfmt, wait_for  # noqa: E402,F401  (mh.wait_for, ...)
from testlib import free_port as closed_port  # noqa: E402,F401  (a port nobody listens on)
PY = "/usr/bin/python3"
DEFAULT_BINARY = os.path.join(REPO, "build", "dispatch", "usher-dispatch")
IDENTITY = "X-authentik-username"

ROOT = "/tmp/usher-mint-tests"
LOCK_FILE = "/run/lock/usher-mint-tests.lock" if os.path.isdir("/run/lock") \
    else "/tmp/usher-mint-tests.lock"
SUDOERS_FILE = "/etc/sudoers.d/usher-mint-tests"
PREFIX = "usher-t-"
GROUP = "usher-t-users"
DISP = "usher-t-disp"
MAPPED = {"alice": "usher-t-alice", "bob": "usher-t-bob"}
OUTSIDER = "usher-t-eve"
SYS_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

# Every secret value a test saw on the wire (cookie values, credentials): no log may hold one.
SECRETS = set()
SECRETS_LOCK = threading.Lock()


def note_secret(value):
    if value and len(value) >= 12:
        with SECRETS_LOCK:
            SECRETS.add(value)


def dispatch_binary():
    return os.environ.get("USHER_DISPATCH") or DEFAULT_BINARY


def run(argv, check=True, **kw):
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       env={"PATH": SYS_PATH, "LANG": "C.UTF-8"}, timeout=60, **kw)
    if check and r.returncode != 0:
        raise RuntimeError("%s failed (%d): %s%s" % (" ".join(argv), r.returncode, r.stdout,
                                                     r.stderr))
    return r


def _write(path, data, mode=0o644, owner=None):
    if isinstance(data, str):
        data = data.encode()
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    if owner is not None:
        pw = pwd.getpwnam(owner)
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
    os.rename(tmp, path)


def _mkdir(path, mode=0o755, owner=None):
    os.makedirs(path, exist_ok=True)
    os.chmod(path, mode)
    if owner is not None:
        pw = pwd.getpwnam(owner)
        os.chown(path, pw.pw_uid, pw.pw_gid)


# --- processes of a given user --------------------------------------------------------

def user_env(user):
    pw = pwd.getpwnam(user)
    return {"PATH": "/usr/bin:/bin", "HOME": pw.pw_dir, "USER": user, "LOGNAME": user,
            "LANG": "C.UTF-8"}


def _as_kwargs(user, env=None):
    pw = pwd.getpwnam(user)
    groups = [g for g in os.getgrouplist(user, pw.pw_gid) if g != pw.pw_gid]
    cwd = pw.pw_dir if os.path.isdir(pw.pw_dir) else "/"
    e = user_env(user)
    if env:
        e.update(env)
    return dict(user=pw.pw_uid, group=pw.pw_gid, extra_groups=groups, env=e, cwd=cwd)


def popen_as(user, argv, log_path, env=None):
    """Starts argv as `user` (its own session, so that its process group can be killed)."""
    log = open(log_path, "ab")
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, **_as_kwargs(user, env))
    finally:
        log.close()


def run_as(user, argv, env=None, timeout=30, input=None):
    """Runs argv as `user`; returns the CompletedProcess (text)."""
    return subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout,
                          **_as_kwargs(user, env))


def pids_of_uid(uid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/status" % d) as f:
                status = f.read()
        except OSError:
            continue
        m = re.search(r"^Uid:\s+(\d+)", status, re.M)
        st = re.search(r"^State:\s+(\S)", status, re.M)
        if m and int(m.group(1)) == uid and not (st and st.group(1) == "Z"):
            out.append(int(d))
    return out


def pid_alive(pid):
    """True while `pid` exists and is not a zombie (a zombie is dead, merely unreaped)."""
    try:
        with open("/proc/%d/status" % pid) as f:
            st = re.search(r"^State:\s+(\S)", f.read(), re.M)
        return not (st and st.group(1) == "Z")
    except OSError:
        return False


def stop_process(proc, timeout=5.0):
    """SIGTERM the process group of a Popen started with start_new_session, then SIGKILL."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(5)
    return proc.returncode


# --- the test environment ------------------------------------------------------------

class TestEnv:
    """Users, files and the sudoers rule for one test session (see the module docstring)."""

    def __init__(self):
        if os.geteuid() != 0:
            raise RuntimeError("the mint tests create OS users and a sudoers rule: run as root")
        for tool in ("/usr/bin/sudo", "/usr/sbin/visudo", "/usr/sbin/useradd"):
            if not os.path.exists(tool):
                raise RuntimeError("%s missing: run scripts/install-deps" % tool)
        src = dispatch_binary()
        if not os.path.exists(src):
            raise RuntimeError("usher-dispatch binary not found at %s (set USHER_DISPATCH)" % src)
        self.lock = open(LOCK_FILE, "w")
        fcntl.flock(self.lock, fcntl.LOCK_EX)
        self.backends = []
        self.ushers = []
        self.n_ushers = 0
        try:
            self.cleanup()
            self._setup(src)
        except BaseException:
            self.close()
            raise

    # paths
    def bin(self, name):
        return os.path.join(ROOT, "bin", name)

    @property
    def wrapper(self):
        return os.path.join(ROOT, "libexec", "t3-mint")

    @property
    def binary(self):
        return self.bin("usher-dispatch")

    def home(self, user):
        return pwd.getpwnam(user).pw_dir

    def uid(self, user):
        return pwd.getpwnam(user).pw_uid

    def _setup(self, src):
        _mkdir(ROOT)
        for d in ("bin", "libexec", "logs"):
            _mkdir(os.path.join(ROOT, d))
        run(["groupadd", GROUP])
        for user in MAPPED.values():
            run(["useradd", "-m", "-d", "/home/" + user, "-s", "/usr/sbin/nologin",
                 "-G", GROUP, user])
        run(["useradd", "-m", "-d", "/home/" + OUTSIDER, "-s", "/usr/sbin/nologin", OUTSIDER])
        run(["useradd", "--system", "-U", "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin",
             DISP])
        for user in list(MAPPED.values()) + [OUTSIDER]:
            os.chmod(self.home(user), 0o700)
        for name in ("fake_t3.py", "fake_notes.py", "fail_mint.py"):
            shutil.copyfile(os.path.join(HERE, name), self.bin(name))
            os.chmod(self.bin(name), 0o755)
        shutil.copyfile(src, self.binary)
        os.chmod(self.binary, 0o755)
        # T3_BIN of the wrapper: a root-owned launcher that runs the fake with Debian's python.
        _write(self.bin("t3"), "#!/bin/sh\nexec %s %s \"$@\"\n" % (PY, self.bin("fake_t3.py")),
               0o755)
        with open(os.path.join(REPO, "scripts", "t3-mint")) as f:
            text = f.read()
        text, n = re.subn(r"(?m)^T3_BIN=.*$", "T3_BIN=" + self.bin("t3"), text)
        if n != 1:
            raise RuntimeError("scripts/t3-mint must have exactly one T3_BIN= line, has %d" % n)
        _write(self.wrapper, text, 0o755)
        self.sudoers_text = (
            "# Usher's mint tests (tests/mint/mint_harness.py) install and remove this file.\n"
            "# As narrow as the rule Usher ships: the dispatcher's user may run the mint\n"
            "# wrapper, with no arguments (\"\"), as members of the mapped-users group only.\n"
            "%s ALL = (%%%s) NOPASSWD: %s \"\"\n" % (DISP, GROUP, self.wrapper))
        tmp = os.path.join(ROOT, "sudoers.check")
        _write(tmp, self.sudoers_text, 0o440)
        run(["visudo", "-cf", tmp])
        shutil.copyfile(tmp, SUDOERS_FILE + ".tmp")
        os.chmod(SUDOERS_FILE + ".tmp", 0o440)
        os.rename(SUDOERS_FILE + ".tmp", SUDOERS_FILE)  # sudo ignores names with a '.'
        run(["visudo", "-c"])

    def cleanup(self):
        """Removes everything a session (this or an interrupted earlier one) may have left."""
        for path in (SUDOERS_FILE, SUDOERS_FILE + ".tmp"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        names = set(MAPPED.values()) | {OUTSIDER, DISP}
        names |= {p.pw_name for p in pwd.getpwall() if p.pw_name.startswith(PREFIX)}
        for name in sorted(names):
            try:
                uid = pwd.getpwnam(name).pw_uid
            except KeyError:
                continue
            # Only this suite's users: whatever still runs under them was started by a run of it.
            for _ in range(50):
                pids = pids_of_uid(uid)
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.02)
            run(["userdel", "-r", "-f", name], check=False)
            if name in {p.pw_name for p in pwd.getpwall()}:
                raise RuntimeError("could not remove user %s" % name)
        for g in [GROUP] + [g.gr_name for g in grp.getgrall() if g.gr_name.startswith(PREFIX)]:
            run(["groupdel", g], check=False)
        for user in names:
            shutil.rmtree("/home/" + user, ignore_errors=True)
        shutil.rmtree(ROOT, ignore_errors=True)

    def close(self):
        for u in self.ushers:
            u.stop()
        for b in self.backends:
            b.stop()
        try:
            self.cleanup()
        finally:
            self.lock.close()

    # things a test starts
    def t3_backend(self, who):
        b = T3Backend(self, who)
        self.backends.append(b)
        return b

    def notes_backend(self, os_user):
        b = NotesBackend(self, os_user)
        self.backends.append(b)
        return b

    def new_usher(self, routes, **kw):
        self.n_ushers += 1
        u = Usher(self, os.path.join(ROOT, "usher%d" % self.n_ushers), routes, **kw)
        self.ushers.append(u)
        return u

    def sudo_as_disp(self, *args):
        """`sudo -n ARGS...` run by the dispatcher's user."""
        return run_as(DISP, ["/usr/bin/sudo", "-n"] + list(args))

    def log_files(self):
        """Every log a secret must never reach: dispatcher, fake apps, their stderr."""
        out = []
        for top in [os.path.join(ROOT, "logs")] + [u.dir for u in self.ushers]:
            for dirpath, _, files in os.walk(top):
                out += [os.path.join(dirpath, f) for f in files if f.endswith(".log")
                        or f.endswith(".stderr")]
        for b in self.backends:
            out += b.log_files()
        return [p for p in out if os.path.exists(p)]

    def all_secrets(self):
        s = set(SECRETS)
        for b in self.backends:
            s |= set(b.issued())
        return {x for x in s if len(x) >= 12}


def find_secrets(paths, secrets):
    """[(path, line number, secret prefix)] for every secret found in these files."""
    hits = []
    for p in paths:
        try:
            with open(p, "rb") as f:
                data = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        for s in secrets:
            i = data.find(s)
            if i >= 0:
                hits.append((p, data.count("\n", 0, i) + 1, s[:10] + "..."))
            # a value split by log escaping would still show its url-safe middle
            elif len(s) >= 24 and s[4:20] in data:
                hits.append((p, data.count("\n", 0, data.find(s[4:20])) + 1, s[:10] + "..."))
    return hits


# --- the fake apps -----------------------------------------------------------------------

class T3Backend:
    """fake_t3.py serve, run as a mapped user with its base dir in the user's home."""

    def __init__(self, env, who):
        self.env = env
        self.who = who
        self.os_user = MAPPED[who]
        self.home = env.home(self.os_user)
        self.base = os.path.join(self.home, ".t3")
        self.stderr = os.path.join(ROOT, "logs", "t3-%s.stderr" % who)
        if os.path.exists(os.path.join(self.base, "port")):
            os.unlink(os.path.join(self.base, "port"))  # an earlier instance's
        self.proc = popen_as(self.os_user, [PY, env.bin("fake_t3.py"), "serve", "--host",
                                            "127.0.0.1", "--port", "0", "--base-dir", self.base],
                             self.stderr)
        self.port = int(wait_for(self._port, 10, what="fake t3 of %s" % who))

    def _port(self):
        if self.proc.poll() is not None:
            with open(self.stderr) as f:
                raise RuntimeError("fake t3 of %s exited: %s" % (self.who, f.read()))
        try:
            with open(os.path.join(self.base, "port")) as f:
                return f.read().strip()
        except FileNotFoundError:
            return None

    def stop(self):
        stop_process(self.proc)

    def _lines(self, name):
        try:
            with open(os.path.join(self.base, name)) as f:
                return [line for line in f.read().split("\n") if line]
        except FileNotFoundError:
            return []

    def mints(self):
        """One record per `auth pairing create` (a mint), oldest first."""
        return [json.loads(line) for line in self._lines("mints.log")]

    def mint_count(self):
        return len(self._lines("mints.log"))

    def issued(self):
        return self._lines("issued.secret")

    def requests(self, since=0):
        return [r for r in (json.loads(line) for line in self._lines("server.log")[since:])
                if r.get("event") == "request"]

    def mark(self):
        return len(self._lines("server.log"))

    def log_files(self):
        return [self.stderr, os.path.join(self.base, "server.log"),
                os.path.join(self.base, "mints.log")]

    def _cli(self, *args):
        r = run_as(self.os_user, [PY, self.env.bin("fake_t3.py")] + list(args))
        assert r.returncode == 0, r
        return r

    def revoke(self):
        """Every session issued so far is refused from now on (expiry / revocation)."""
        self._cli("revoke", "--base-dir", self.base)

    def fault(self, mode):
        self._cli("fault", "--base-dir", self.base, mode)

    def cli_delay(self, ms):
        path = os.path.join(self.base, "cli-delay-ms")
        if ms:
            _write(path, "%d\n" % ms, 0o644, owner=self.os_user)
        elif os.path.exists(path):
            os.unlink(path)

    def reset(self):
        self.fault("none")
        self.cli_delay(0)

    def direct(self, method, target, cookie=None, body=None, ctype=None):
        """A request straight to the fake (not through Usher)."""
        hdrs = []
        if cookie:
            hdrs.append(("Cookie", cookie))
        if ctype:
            hdrs.append(("Content-Type", ctype))
        with HttpConn(self.port) as c:
            c.request(method, target, hdrs, body=body)
            return c.response(method)


class NotesBackend:
    """fake_notes.py serve for one OS user; it and its CLI run as the dispatcher's user."""

    def __init__(self, env, os_user):
        self.env = env
        self.os_user = os_user
        self.store = os.path.join(ROOT, "notes")
        _mkdir(self.store, 0o755, owner=DISP)
        self.dir = os.path.join(self.store, os_user)
        self.stderr = os.path.join(ROOT, "logs", "notes-%s.stderr" % os_user)
        port_file = os.path.join(self.store, "%s.port" % os_user)
        self.port_file = port_file
        if os.path.exists(port_file):
            os.unlink(port_file)  # an earlier instance's
        self.proc = popen_as(DISP, [PY, env.bin("fake_notes.py"), "serve", "--store", self.store,
                                    "--user", os_user, "--port-file", port_file], self.stderr)
        self.port = int(wait_for(self._port, 10, what="fake notes of %s" % os_user))

    def _port(self):
        if self.proc.poll() is not None:
            with open(self.stderr) as f:
                raise RuntimeError("fake notes exited: %s" % f.read())
        try:
            with open(self.port_file) as f:
                return f.read().strip()
        except FileNotFoundError:
            return None

    @property
    def command(self):
        return "%s %s otp --store %s --user {os_user} --home {home} --port {port}" % (
            PY, self.env.bin("fake_notes.py"), self.store)

    def _lines(self, name):
        try:
            with open(os.path.join(self.dir, name)) as f:
                return [line for line in f.read().split("\n") if line]
        except FileNotFoundError:
            return []

    def otps(self):
        return [json.loads(line) for line in self._lines("otp.log")]

    def issued(self):
        return self._lines("issued.secret")

    def requests(self):
        return [json.loads(line) for line in self._lines("server.log")]

    def log_files(self):
        return [self.stderr, os.path.join(self.dir, "server.log"),
                os.path.join(self.dir, "otp.log")]

    def stop(self):
        stop_process(self.proc)


# --- usher-dispatch -------------------------------------------------------------------

class Usher:
    """usher-dispatch run as the dispatcher's user, with its own directory under ROOT.

    routes: {sso_name: T3Backend | NotesBackend | port}; the map says sso_name=<its OS user>
    (for a bare port, the OS user is MAPPED[sso_name]). mint: keys merged over the test
    defaults of [mint] (value None removes a key); config: {section: {key: value}} likewise.
    """

    SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error:",
                         "UndefinedBehaviorSanitizer")

    def __init__(self, env, directory, routes, mint=None, config=None, map_lines=None,
                 key=None, previous_key=None):
        self.env = env
        self.dir = directory
        _mkdir(directory)
        self.run_dir = os.path.join(directory, "run")
        _mkdir(self.run_dir, 0o755, owner=DISP)
        keys = os.path.join(directory, "keys")
        _mkdir(keys, 0o755)
        self.key_file = os.path.join(keys, "bind.key")
        self.previous_key_file = os.path.join(keys, "bind-previous.key")
        self.key = key or os.urandom(32)
        _write(self.key_file, self.key, 0o600, owner=DISP)
        if previous_key is not None:
            _write(self.previous_key_file, previous_key, 0o600, owner=DISP)
        self.map_file = os.path.join(directory, "user-map")
        self.state_file = os.path.join(directory, "state.json")
        self.config_file = os.path.join(directory, "usher.conf")
        self.log_file = os.path.join(directory, "usher-dispatch.log")
        users = {}
        lines = []
        for sso, target in (routes or {}).items():
            if isinstance(target, (T3Backend, NotesBackend)):
                os_user, port = target.os_user, target.port
            else:
                os_user, port = MAPPED[sso], int(target)
            lines.append("%s=%s" % (sso, os_user))
            users[os_user] = {"kind": "unit", "address": "127.0.0.1", "port": port,
                              "unit": "t3-serve@%s.service" % os_user}
        _write(self.map_file, "".join(x + "\n" for x in (map_lines or lines)))
        _write(self.state_file, json.dumps({"version": 1, "users": users}, indent=1) + "\n")
        sections = {
            "server": {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0"},
            "users": {"map_file": self.map_file, "state_file": self.state_file,
                      "verify_os_users": "yes"},
            "log": {"level": "info", "access_log": "yes"},
            "mint": {"command": "/usr/bin/sudo -n -u {os_user} %s" % env.wrapper,
                     "secure_cookies": "no", "bind_key_file": self.key_file},
        }
        if previous_key is not None:
            sections["mint"]["bind_key_previous_file"] = self.previous_key_file
        for section, kv in dict(config or {}, mint=dict((config or {}).get("mint", {}),
                                                        **(mint or {}))).items():
            for k, v in kv.items():
                sections.setdefault(section, {})
                if v is None:
                    sections[section].pop(k, None)
                else:
                    sections[section][k] = v
        text = ""
        for section, kv in sections.items():
            text += "[%s]\n" % section + "".join("%s = %s\n" % item for item in kv.items()) + "\n"
        _write(self.config_file, text)
        self.proc = None
        self.proxy_port = None
        self.admin_port = None
        self.stopped_by_us = False

    def check_config(self):
        return run_as(DISP, [self.env.binary, "--check-config", "--config", self.config_file])

    def start(self, timeout=10.0):
        # A marker in the dispatcher's environment: a mint command must not inherit it.
        self.proc = popen_as(DISP, [self.env.binary, "--config", self.config_file],
                             self.log_file, env={"USHER_TEST_MARKER": "dispatcher-env"})
        wait_for(self._ready, timeout, what="usher-dispatch event=ready")
        return self

    def _ready(self):
        if self.proc.poll() is not None:
            raise RuntimeError("usher-dispatch exited with %s before event=ready:\n%s"
                               % (self.proc.returncode, self.output()))
        ready = False
        for rec in self.records():
            if rec.get("event") == "listening":
                port = int(rec["addr"].rsplit(":", 1)[1])
                if rec.get("role") == "proxy" and self.proxy_port is None:
                    self.proxy_port = port
                elif rec.get("role") == "admin":
                    self.admin_port = port
            elif rec.get("event") == "ready":
                ready = True
        return ready and self.proxy_port is not None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.proc is None:
            return None
        if self.alive():
            self.stopped_by_us = True
        return stop_process(self.proc, 15)

    def problems(self):
        """Why this instance's run was bad: crash, sanitizer report, a secret in its log."""
        out = []
        if self.proc is not None and self.proc.poll() is not None and not self.stopped_by_us:
            out.append("usher-dispatch died during the test (exit status %s)"
                       % self.proc.returncode)
        text = self.output()
        for marker in self.SANITIZER_MARKERS:
            if marker in text:
                out.append("usher-dispatch log contains a sanitizer report (%s)" % marker)
                break
        hits = find_secrets([self.log_file], self.env.all_secrets())
        if hits:
            out.append("secret values in the dispatcher's log: %s" % hits)
        return out

    # log
    def output(self):
        try:
            with open(self.log_file, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def records(self, event=None, since=0, **fields):
        out = []
        lines = self.output().split("\n")
        if lines and lines[-1] != "":
            lines = lines[:-1]
        for line in lines[since:]:
            rec = parse_logfmt(line)
            if rec is None:
                continue
            if event is not None and rec.get("event") != event:
                continue
            if all(rec.get(k) == str(v) for k, v in fields.items()):
                out.append(rec)
        return out

    def mark(self):
        return len(self.output().split("\n")) - 1

    def wait_record(self, event, since=0, timeout=5.0, **fields):
        return wait_for(lambda: self.records(event, since, **fields), timeout,
                        what="log event=%s %s" % (event, fields))[0]

    def mints(self, since=0, **fields):
        return self.records("mint", since, **fields)

    def audits(self, since=0, **fields):
        return self.records("audit", since, **fields)

    # admin
    def metrics(self):
        """{'name{labels}': float} from /metrics on the admin listener."""
        with HttpConn(self.admin_port) as c:
            c.request("GET", "/metrics", [])
            r = c.response()
        assert r.status == 200, r
        out = {}
        for line in r.text.splitlines():
            if not line or line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            out[name.replace(" ", "")] = float(value)
        return out

    def metric(self, name, default=0.0):
        return self.metrics().get(name, default)

    def browser(self, sso="alice", **kw):
        return Browser(self, sso, **kw)


# --- cookies -------------------------------------------------------------------------------

class SetCookie:
    """One Set-Cookie header, parsed: name, value, attrs {lower-case name: value or True}."""

    def __init__(self, header):
        self.header = header
        parts = header.split(";")
        self.name, _, self.value = parts[0].strip().partition("=")
        self.attrs = {}
        for p in parts[1:]:
            k, sep, v = p.strip().partition("=")
            self.attrs[k.strip().lower()] = v.strip() if sep else True

    def attr(self, name):
        return self.attrs.get(name.lower())

    @property
    def cleared(self):
        """True when this header deletes the cookie (Max-Age<=0 or Expires in the past)."""
        ma = self.attr("max-age")
        if ma not in (None, True):
            try:
                return int(ma) <= 0
            except ValueError:
                return False
        exp = self.attr("expires")
        if exp not in (None, True):
            try:
                return http.cookiejar.http2time(exp) <= time.time()
            except TypeError:
                return False
        return False

    def __repr__(self):
        return "<SetCookie %s=%s... %r>" % (self.name, self.value[:8], self.attrs)


def set_cookies(response, name=None):
    out = [SetCookie(v) for v in response.header_all("set-cookie")]
    return [c for c in out if name is None or c.name == name]


def cookie_pairs(header_values):
    """[(name, value)] from Cookie header values."""
    out = []
    for v in header_values:
        for part in v.split(";"):
            k, sep, val = part.strip().partition("=")
            if sep:
                out.append((k, val))
    return out


class _JarResponse:
    def __init__(self, headers):
        self.msg = email.message.Message()
        for v in headers:
            self.msg["Set-Cookie"] = v

    def info(self):
        return self.msg


class Browser:
    """A browser behind the SSO edge: a real cookie jar (http.cookiejar), the identity header
    the edge adds, the edge's X-Forwarded-Proto/Host, and same-origin Origin headers on
    state-changing requests and WebSocket upgrades (as a browser sends them)."""

    PUBLIC_HOST = "usher.test"
    PUBLIC_ORIGIN = "https://usher.test"

    def __init__(self, usher, sso="alice", accept="text/html", jar=None):
        self.usher = usher
        self.sso = sso
        self.accept = accept
        self.jar = jar if jar is not None else http.cookiejar.CookieJar()

    def url(self, target):
        return "http://127.0.0.1:%d%s" % (self.usher.proxy_port, target)

    def cookie_header(self, target="/"):
        req = urllib.request.Request(self.url(target))
        self.jar.add_cookie_header(req)
        return req.get_header("Cookie")

    def cookie(self, name):
        for c in self.jar:
            if c.name == name:
                return c.value
        return None

    def cookies(self):
        return {c.name: c.value for c in self.jar}

    def set_cookie(self, name, value):
        self.jar.set_cookie(http.cookiejar.Cookie(
            0, name, value, None, False, "127.0.0.1", False, False, "/", True, False, None,
            False, None, None, {}))

    def drop_cookie(self, name):
        for c in list(self.jar):
            if c.name == name:
                self.jar.clear(c.domain, c.path, c.name)

    def absorb(self, target, response):
        values = response.header_all("set-cookie")
        for v in values:
            note_secret(SetCookie(v).value)
        self.jar.extract_cookies(_JarResponse(values), urllib.request.Request(self.url(target)))

    def headers(self, target, method, origin, extra, sso):
        sso = self.sso if sso is ... else sso
        hdrs = [("Host", self.PUBLIC_HOST)]
        if sso is not None:
            hdrs.append((IDENTITY, sso))
        hdrs += [("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", self.PUBLIC_HOST)]
        if self.accept:
            hdrs.append(("Accept", self.accept))
        if origin is ...:
            origin = self.PUBLIC_ORIGIN if method not in ("GET", "HEAD") else None
        if origin:
            hdrs.append(("Origin", origin))
        cookie = self.cookie_header(target)
        if cookie:
            hdrs.append(("Cookie", cookie))
        return hdrs + list(extra)

    def request(self, method, target, body=None, headers=(), origin=..., sso=...,
                chunked=False, timeout=20.0):
        hdrs = self.headers(target, method, origin, headers, sso)
        with HttpConn(self.usher.proxy_port, timeout=timeout) as c:
            c.request(method, target, hdrs, body=body, chunked=chunked, host=False)
            r = c.response(method)
        self.absorb(target, r)
        return r

    def get(self, target="/", **kw):
        return self.request("GET", target, **kw)

    def post(self, target, body, **kw):
        return self.request("POST", target, body=body, **kw)

    def websocket(self, target="/ws", origin=..., headers=(), sso=..., expect=101):
        if origin is ...:
            origin = self.PUBLIC_ORIGIN
        key = base64.b64encode(os.urandom(16)).decode()
        hdrs = self.headers(target, "GET", origin, [
            ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", key),
            ("Sec-WebSocket-Version", "13")] + list(headers), sso)
        conn = HttpConn(self.usher.proxy_port)
        conn.request("GET", target, hdrs, host=False)
        r = conn.response()
        self.absorb(target, r)
        if expect is not None and r.status != expect:
            conn.close()
            raise AssertionError("WebSocket upgrade answered %r, expected %d" % (r, expect))
        if r.status == 101:
            accept = base64.b64encode(hashlib.sha1(
                key.encode() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()).decode()
            assert r.header("sec-websocket-accept") == accept, r
        else:
            conn.close()
        return WsClient(conn, r)


# --- HTTP/1.1 client over a raw socket ---------------------------------------------------

class Response:
    def __init__(self, version, status, reason, headers):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = b""

    def header(self, name, default=None):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return default

    def header_all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    @property
    def content_type(self):
        return (self.header("content-type") or "").split(";")[0].strip().lower()

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        body = self.body if len(self.body) < 400 else self.body[:400] + b"..."
        return "<Response %s %s headers=%r body=%r>" % (self.status, self.reason, self.headers,
                                                       body)


class ConnectionClosed(Exception):
    pass


class HttpConn:
    def __init__(self, port, host="127.0.0.1", timeout=20.0):
        self.port = port
        self.host = host
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = bytearray()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        self.sock.sendall(data)

    def request(self, method, target, headers=(), body=None, chunked=False, host=True):
        hdrs = list(headers)
        if host and not any(k.lower() == "host" for k, _ in hdrs):
            hdrs.insert(0, ("Host", "%s:%d" % (self.host, self.port)))
        if chunked:
            hdrs.append(("Transfer-Encoding", "chunked"))
        elif body is not None and not any(k.lower() == "content-length" for k, _ in hdrs):
            n = len(body) if isinstance(body, (bytes, bytearray)) else sum(len(p) for p in body)
            hdrs.append(("Content-Length", str(n)))
        head = "%s %s HTTP/1.1\r\n" % (method, target)
        head += "".join("%s: %s\r\n" % kv for kv in hdrs) + "\r\n"
        self.send(head.encode("latin-1"))
        if body is not None:
            pieces = [body] if isinstance(body, (bytes, bytearray)) else body
            for p in pieces:
                if chunked:
                    if p:
                        self.send(b"%x\r\n" % len(p) + bytes(p) + b"\r\n")
                else:
                    self.send(p)
            if chunked:
                self.send(b"0\r\n\r\n")

    def _fill(self):
        try:
            data = self.sock.recv(262144)
        except ConnectionResetError:
            data = b""
        if not data:
            raise ConnectionClosed("connection closed by peer")
        self.buf += data

    def _line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return line
            self._fill()

    def _take(self, n):
        if not self.buf:
            self._fill()
        n = min(n, len(self.buf))
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def response(self, method="GET"):
        while True:
            while True:
                i = self.buf.find(b"\r\n\r\n")
                if i >= 0:
                    head = bytes(self.buf[:i])
                    del self.buf[:i + 4]
                    break
                self._fill()
            lines = head.decode("latin-1").split("\r\n")
            version, _, rest = lines[0].partition(" ")
            status, _, reason = rest.partition(" ")
            headers = []
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers.append((name, value.strip(" \t")))
            r = Response(version, int(status), reason, headers)
            if 100 <= r.status < 200 and r.status != 101:
                continue
            break
        pieces = []
        te = [t.strip().lower() for v in r.header_all("transfer-encoding") for t in v.split(",")]
        if method == "HEAD" or r.status in (101, 204, 304):
            pass
        elif te and te[-1] == "chunked":
            while True:
                size = int(self._line().split(b";")[0].strip(), 16)
                if size == 0:
                    while self._line() != b"":
                        pass
                    break
                while size:
                    p = self._take(size)
                    size -= len(p)
                    pieces.append(p)
                self._line()
        elif r.header("content-length") is not None:
            remaining = int(r.header("content-length"))
            while remaining:
                p = self._take(remaining)
                remaining -= len(p)
                pieces.append(p)
        else:
            while True:
                try:
                    pieces.append(self._take(1 << 20))
                except ConnectionClosed:
                    break
        r.body = b"".join(pieces)
        return r


class WsClient:
    def __init__(self, conn, response):
        self.conn = conn
        self.response = response

    def send(self, opcode, payload):
        payload = bytes(payload)
        head = bytearray([0x80 | opcode])
        n = len(payload)
        if n < 126:
            head.append(0x80 | n)
        elif n < 65536:
            head.append(0x80 | 126)
            head += n.to_bytes(2, "big")
        else:
            head.append(0x80 | 127)
            head += n.to_bytes(8, "big")
        key = os.urandom(4)
        self.conn.send(bytes(head) + key + bytes(c ^ key[i % 4] for i, c in enumerate(payload)))

    def recv(self, timeout=5.0):
        self.conn.sock.settimeout(timeout)
        c = self.conn

        def exact(n):
            while len(c.buf) < n:
                c._fill()
            data = bytes(c.buf[:n])
            del c.buf[:n]
            return data

        b0, b1 = exact(2)
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(exact(2), "big")
        elif n == 127:
            n = int.from_bytes(exact(8), "big")
        key = exact(4) if b1 & 0x80 else None
        payload = exact(n)
        if key:
            payload = bytes(ch ^ key[i % 4] for i, ch in enumerate(payload))
        return b0 & 0x0F, payload

    def echo(self, text):
        self.send(1, text.encode())
        op, payload = self.recv()
        return op, payload.decode()

    def close(self):
        try:
            self.send(8, (1000).to_bytes(2, "big"))
        except OSError:
            pass
        self.conn.close()
