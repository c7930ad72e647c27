"""Fixtures for the install tests: a fresh real systemd (PID 1 of a container,
tests/systemd/container.sh) per test session, on which scripts/install is run
as an operator would. The container's root is an overlay of this host's,
the repository (with its build directories) is bound in read-only, and the
network namespace is the host's, so the tests talk to the installed
dispatcher on 127.0.0.1.

What the test plays that is not Usher: t3 (tests/mint/fake_t3.py as
/usr/bin/t3: both `t3 serve`, run by the shipped t3-serve@.service, and
`t3 auth pairing create`, run by the shipped t3-mint through the shipped
sudoers rule), the people's OS users, and the SSO edge (the test's HTTP
client on 127.0.0.1, a trusted peer, sending X-authentik-username)."""

import http.client
import importlib.util
import json
import os
import shutil
import subprocess
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
# The container and its helpers are tests/systemd's (loaded under another
# name: both files are called conftest).
_spec = importlib.util.spec_from_file_location(
    "systemd_conftest", os.path.join(REPO, "tests", "systemd", "conftest.py"))
_sd = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_sd)
CONTAINER, Sandbox, free_port_block, wait_for = (_sd.CONTAINER, _sd.Sandbox, _sd.free_port_block,
                                                 _sd.wait_for)

IDENTITY = "X-authentik-username"
MAPPED = {"alice": "usher-i-alice", "bob": "usher-i-bob"}
OUTSIDER = "usher-i-eve"


def build_dir():
    d = os.environ.get("USHER_BUILD_DIR") or os.path.join(REPO, "build")
    return os.path.abspath(d)


def _skip_reason():
    if os.geteuid() != 0:
        return "install tests need root (they boot systemd in a container)"
    for tool in ("systemd-nspawn", "nsenter"):
        if not shutil.which(tool):
            return "%s missing (scripts/install-deps installs it)" % tool
    for b in ("dispatch/usher-dispatch", "reconcile/usher-reconcile"):
        if not os.access(os.path.join(build_dir(), b), os.X_OK):
            return "%s not built in %s (set USHER_BUILD_DIR)" % (b, build_dir())
    return None


class Host(Sandbox):
    """The container after scripts/install, and the ports it was given."""

    def as_user(self, user, *cmd, check=False, timeout=30):
        return self.exec("runuser", "-u", user, "--", *cmd, check=check, timeout=timeout)

    def request(self, identity=None, path="/whoami", method="GET", timeout=5.0):
        """(status, parsed JSON or raw body) from the installed dispatcher."""
        c = http.client.HTTPConnection("127.0.0.1", self.listen_port, timeout=timeout)
        try:
            headers = {IDENTITY: identity} if identity else {}
            c.request(method, path, headers=headers)
            r = c.getresponse()
            body = r.read()
            try:
                return r.status, json.loads(body)
            except ValueError:
                return r.status, body
        finally:
            c.close()

    def main_pid(self):
        return int(self.systemctl("show", "-P", "MainPID", "usher-dispatch.service").stdout.strip())

    def journal(self, unit="usher-dispatch.service"):
        return self.exec("journalctl", "-q", "-o", "cat", "--no-pager", "-u", unit,
                         check=False).stdout

    def assert_clean_journal(self):
        """No sanitizer report from the dispatcher (the ASan pass installs ASan binaries)."""
        log = self.journal()
        bad = [m for m in ("AddressSanitizer", "LeakSanitizer", "runtime error:") if m in log]
        assert not bad, "sanitizer report in usher-dispatch's journal:\n" + log[-5000:]

    def write_map_atomic(self, lines, p="/etc/ttyd-user-map"):
        tmp = p + ".test-new"
        self.write(tmp, "".join(l + "\n" for l in lines))
        os.rename(self.path(tmp), self.path(p))


def config_text(listen_port, admin_port, port_base):
    """The shipped example with only what a shared test host needs changed."""
    with open(os.path.join(REPO, "dispatch", "usher.conf.example")) as f:
        text = f.read()
    repl = {"listen = 127.0.0.1:8080": "listen = 127.0.0.1:%d" % listen_port,
            "admin_listen = 127.0.0.1:9090": "admin_listen = 127.0.0.1:%d" % admin_port,
            "port_range = 3773-4772": "port_range = %d-%d" % (port_base + 2, port_base + 49),
            "shutdown_drain = 10s": "shutdown_drain = 5s"}
    for a, b in repl.items():
        assert a in text, "usher.conf.example no longer has %r" % a
        text = text.replace(a, b)
    return text


@pytest.fixture(scope="session")
def host():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    name = "usher-i%d" % (os.getpid() % 100000)
    t0 = time.monotonic()
    r = subprocess.run([CONTAINER, "start", name, REPO], capture_output=True, text=True,
                       timeout=180)
    if r.returncode != 0:
        pytest.skip("cannot start a systemd container here: " + (r.stderr.strip()[-800:] or "?"))
    info = dict(l.split("=", 1) for l in r.stdout.splitlines() if "=" in l)
    base = free_port_block(50)
    h = Host(name, int(info["LEADER"]), os.path.join(build_dir(), "reconcile", "usher-reconcile"),
             base)
    h.listen_port, h.admin_port = base, base + 1
    print("container %s up in %.1fs (ports %d-%d)" % (name, time.monotonic() - t0, base, base + 49))
    try:
        # A real host resolves its own name (sudo warns otherwise).
        with open(h.path("/etc/hosts"), "a") as f:
            f.write("127.0.1.1 %s\n" % name)
        # The people (before Usher exists: an operator's host already has them).
        for u in list(MAPPED.values()) + [OUTSIDER]:
            h.exec("useradd", "-m", "-s", "/usr/sbin/nologin", u)
        # t3: the fake, for `t3 serve` and `t3 auth pairing create`.
        os.makedirs(h.path("/usr/local/lib/usher-test"), exist_ok=True)
        shutil.copy(os.path.join(REPO, "tests", "mint", "fake_t3.py"),
                    h.path("/usr/local/lib/usher-test/fake_t3.py"))
        h.write("/usr/bin/t3", "#!/bin/sh\nexec /usr/bin/python3 "
                "/usr/local/lib/usher-test/fake_t3.py \"$@\"\n", 0o755)
        # The test host's ports (its network namespace is shared); else the example.
        h.write("/etc/usher/usher.conf", config_text(h.listen_port, h.admin_port, base))
        t1 = time.monotonic()
        h.install = h.exec("/bin/bash", os.path.join(REPO, "scripts", "install"),
                           "--build-dir", build_dir(), check=False, timeout=120)
        h.install_seconds = time.monotonic() - t1
        assert h.install.returncode == 0, h.install.stdout + h.install.stderr
        # The operator's step for each person: membership of usher-users.
        for u in MAPPED.values():
            h.exec("usermod", "-aG", "usher-users", u)
        yield h
    finally:
        if os.environ.get("USHER_KEEP_CONTAINER"):
            print("keeping container %s (leader %d)" % (name, h.leader))
        else:
            subprocess.run([CONTAINER, "stop", name], capture_output=True, text=True, timeout=120)
